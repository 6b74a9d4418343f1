"""The serving spec: what a Feast feature service means, exported once from Feast's registry.

``vigil apply`` runs ``feast apply`` and then writes this spec next to the registry. Training
records it in the model artifact and the encoder reads it, so the feature order, the entity join
keys, the TTLs and the on-demand inputs are data taken from Feast, never a second hand-written list.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from vigil_contracts.feature_contract import feature_contract_hash


class ViewSpec(BaseModel):
    """A stored feature view as the online store holds it."""

    name: str
    join_keys: list[str]
    ttl_seconds: int | None = Field(description="Freshness limit; None or 0 means no limit.")
    features: dict[str, str] = Field(description="Every stored feature of the view -> Feast dtype.")


class OnDemandSpec(BaseModel):
    """An on-demand feature view: which stored inputs and request fields it reads."""

    name: str
    inputs: dict[str, list[str]] = Field(description="view name -> stored features it reads")
    request_fields: dict[str, str]
    outputs: list[str]


class FeatureRef(BaseModel):
    """One served feature, in model order."""

    name: str = Field(description="Full name: '<view>__<feature>'.")
    view: str
    feature: str
    dtype: str
    kind: Literal["stored", "on_demand"]


class FeatureServiceSpec(BaseModel):
    name: str
    project: str
    features: list[FeatureRef]
    views: dict[str, ViewSpec]
    on_demand: dict[str, OnDemandSpec]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def feature_contract(self) -> str:
        return feature_contract_hash(self.feature_names)

    @property
    def join_keys(self) -> list[str]:
        keys: list[str] = []
        for view in self.views.values():
            for key in view.join_keys:
                if key not in keys:
                    keys.append(key)
        return keys

    @property
    def request_fields(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        for odfv in self.on_demand.values():
            fields.update(odfv.request_fields)
        return fields


class ServingSpec(BaseModel):
    project: str
    feature_services: dict[str, FeatureServiceSpec]
