"""What the gateway needs to know about a model version, as the predictor's V2 metadata says it.

Thresholds (the global pair and the segments' own), the serving policy, the feature service and
the feature order travel with the model artifact; the gateway only ever reads them from there,
never from its own configuration.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vigil_contracts.feature_contract import short_name
from vigil_contracts.request_features import OUTPUT_FEATURES
from vigil_contracts.segments import Labelling, unservable

_ON_DEMAND = frozenset(OUTPUT_FEATURES)


class ServingPolicy(BaseModel):
    """When a vector is too incomplete to score (the answer is then ``uncertain``)."""

    model_config = ConfigDict(extra="ignore")

    max_missing_stored_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    stale_is_uncertain: bool = True


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="ignore")

    suspicious: float = Field(ge=0.0, le=1.0)
    highly_suspicious: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.highly_suspicious < self.suspicious:
            raise ValueError("highly_suspicious must be >= suspicious")
        return self

    def as_mapping(self) -> dict[str, float]:
        return {"suspicious": self.suspicious, "highly_suspicious": self.highly_suspicious}


def _labelling(fields: dict[str, Any]) -> Labelling:
    return Labelling(
        fields["thresholds"].as_mapping(),
        {
            column: {value: pair.as_mapping() for value, pair in pairs.items()}
            for column, pairs in fields["segment_thresholds"].items()
        },
    )


class ModelMetadata(BaseModel):
    """One model version: ``GET /v2/models/{name}[/versions/{v}]`` reduced to what matters here."""

    name: str
    version: str
    feature_service: str
    feature_names: list[str]
    feature_contract: str
    thresholds: Thresholds
    segment_thresholds: dict[str, dict[str, Thresholds]] = Field(default_factory=dict)
    """Per segment column (the channel), the pairs of the segments training gave their own
    (``vigil_contracts.segments``); any other transaction is labelled by ``thresholds``. Empty
    for a model from before them, or a predictor that does not serve them."""
    serving_policy: ServingPolicy = ServingPolicy()
    training_range: dict[str, tuple[float, float]] = Field(default_factory=dict)
    """Per feature, the (min, max) of its training values: what the safeguards check against."""
    labelling: Labelling = Field(default_factory=_labelling, exclude=True, repr=False)
    """Derived from ``thresholds`` and ``segment_thresholds``, never given: the pair that labels
    each transaction, and the lowest ``suspicious`` threshold that can apply (the fast paths'
    bound). Plain data, read on every answer without a call into this module."""

    @field_validator("segment_thresholds")
    @classmethod
    def _servable(cls, value: dict[str, dict[str, Thresholds]]) -> dict[str, dict[str, Thresholds]]:
        # A pair the gateway could not apply would be a threshold the model card promises and
        # no answer keeps: refused, as the predictor refuses such an artifact.
        problem = unservable(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @classmethod
    def from_v2(cls, body: dict[str, Any]) -> ModelMetadata:
        params = body.get("parameters") if isinstance(body, dict) else None
        if not isinstance(params, dict):
            raise TypeError("model metadata is not an object with `parameters`")
        return cls.model_validate(
            {
                "name": body["name"],
                "version": str(params["version"]),
                "feature_service": params["feature_service"],
                "feature_names": params["feature_names"],
                "feature_contract": params["feature_contract"],
                "thresholds": params["thresholds"],
                "segment_thresholds": params.get("segment_thresholds") or {},
                "serving_policy": params.get("serving_policy") or {},
                "training_range": params.get("training_range") or {},
            }
        )


def is_stored(feature: str) -> bool:
    """Stored features describe an entity (card, merchant, device): read from the online store,
    or finished at request time from its stored events (the windows); the request-time
    transform's outputs describe the transaction itself. An unknown entity leaves the former
    missing.

    Feature names are unique across views (see feature_repo/features.py), so the short name
    against the request-time transform's output list decides.
    """
    return short_name(feature) not in _ON_DEMAND
