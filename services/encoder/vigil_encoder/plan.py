"""Serving plans: a feature service of the serving spec, compiled once into what a request needs.

At spec load every feature service becomes a :class:`ServicePlan`: per stored view the HMGET
to send (field names hashed and packed once here, not per request), the key codec of its join
keys and the positions of its features in the output vector; per on-demand view its inputs and
outputs; and the permutation, if any, from "view by view" to the service's order. The request
path then only indexes and concatenates lists. Anything the encoder could not serve faithfully
(a dtype that is not a number, an on-demand view without an implementation here) is refused at
load, never at request time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vigil_contracts import request_features, windows
from vigil_contracts.serving_spec import FeatureServiceSpec, ServingSpec
from vigil_encoder.errors import SpecError
from vigil_encoder.feast_keys import EntityKeyCodec, field_name, timestamp_field
from vigil_encoder.feast_values import DECODED_DTYPES
from vigil_encoder.store import HmgetPacker

#: Dtypes a served vector may hold: all become Python floats.
NUMERIC_DTYPES = frozenset({"Int32", "Int64", "Float32", "Float64", "Bool"})
#: Request-field dtypes the encoder can check and convert (see ``validation.py``).
REQUEST_DTYPES = frozenset({"Float64", "Float32", "Int64", "Int32", "String", "Bool"})

Transform = Callable[[Mapping[str, Any]], Mapping[str, float | None]]


#: A row's on-demand outputs as vector entries (a finite float, NaN for missing).
VectorTransform = Callable[[Mapping[str, Any]], Sequence[float]]
#: Many rows' vector entries from their inputs as columns (name -> one value per row): one
#: column per output, or None for rows to be computed one by one.
ColumnsTransform = Callable[[Mapping[str, Sequence[Any]]], Sequence[Sequence[float]] | None]


@dataclass(frozen=True)
class OnDemandImpl:
    """The encoder's implementation of a Feast on-demand view (the same code Feast runs).

    ``vector``, where there is one, is a faster form of ``transform`` (tested equal to it): the
    same outputs as vector entries in ``outputs`` order, reading no inputs but ``reads`` (those
    ``transform_columns`` hands the transform in training). ``columns``, where there is one, is
    ``vector`` over a batch's columns (tested equal to it), reading exactly ``reads``."""

    transform: Transform
    outputs: tuple[str, ...]
    vector: VectorTransform | None = None
    reads: frozenset[str] | None = None
    columns: ColumnsTransform | None = None
    stale_with_inputs: bool = False
    """Its outputs are stale where a view it reads is (an entity's windows are its history)."""


def _windows_impl(view: str) -> OnDemandImpl:
    """A view's request-time windows (``vigil_contracts.windows``), row by row: no column
    form, since the numpy one costs more than the rows on an encoder's batches (measured on
    1,000 rows: a card's 12 events 49 ms vs 8 ms, a merchant's 25 events 17 ms vs 5 ms, 200
    events 80 ms vs 13 ms; numpy's fixed costs and sorting text dominate)."""
    return OnDemandImpl(
        lambda row: windows.transform_row(view, row),
        windows.view_outputs(view),
        vector=windows.transform_vector(view),
        reads=windows.transform_reads(view),
        stale_with_inputs=True,
    )


#: On-demand views by name -> the shared implementation their Feast definition calls.
ON_DEMAND_IMPLS: dict[str, OnDemandImpl] = {
    "request_features": OnDemandImpl(
        request_features.transform_row,
        request_features.OUTPUT_FEATURES,
        vector=request_features.transform_row_vector,
        columns=request_features.transform_vector_columns,
        reads=frozenset(
            chain(
                request_features.REQUEST_FIELDS,
                chain.from_iterable(request_features.STORED_INPUTS.values()),
            )
        ),
    ),
    "card_windows": _windows_impl("card_stats"),
    "merchant_windows": _windows_impl("merchant_stats"),
    "device_windows": _windows_impl("device_stats"),
}


@dataclass(frozen=True)
class ViewPlan:
    """One stored feature view: what to HMGET from each entity's hash and how to read it."""

    name: str
    join_keys: tuple[str, ...]
    codec: EntityKeyCodec
    features: tuple[str, ...]
    """Short names read, in the order of the HMGET fields (the timestamp field comes last)."""
    hmget: HmgetPacker
    ttl_seconds: float | None
    """Values older than this are treated as missing (Feast does not enforce TTLs online)."""
    vector_positions: tuple[int, ...]
    """Positions in ``features`` of this view's features in the output vector, in vector order."""


@dataclass(frozen=True)
class OnDemandPlan:
    name: str
    impl: OnDemandImpl
    inputs: tuple[tuple[int, int, str], ...]
    """(view index, position in that view's features, short name) of each stored input."""
    vector_outputs: tuple[str, ...]
    """Outputs in the output vector, in vector order."""

    @property
    def input_views(self) -> tuple[int, ...]:
        """Indices of the views this on-demand view reads, in the order of ``inputs``."""
        return tuple(dict.fromkeys(v for v, _, _ in self.inputs))

    def view_inputs(self, view: int) -> tuple[tuple[int, str], ...]:
        """(position in the view's features, short name) of what it reads from ``view``."""
        return tuple((position, name) for v, position, name in self.inputs if v == view)


class ServicePlan:
    """A feature service, ready to encode."""

    def __init__(self, spec: FeatureServiceSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.feature_names: list[str] = spec.feature_names
        self.feature_contract: str = spec.feature_contract
        self.join_keys: tuple[str, ...] = tuple(spec.join_keys)
        self.request_fields: dict[str, str] = spec.request_fields
        for field, dtype in self.request_fields.items():
            if dtype not in REQUEST_DTYPES:
                raise SpecError(
                    f"{spec.name}: request field {field!r} has dtype {dtype!r}; "
                    f"the encoder accepts {sorted(REQUEST_DTYPES)}"
                )

        # Short names of everything each view must deliver: the service's own stored features
        # first, then what its on-demand views read.
        wanted: dict[str, list[str]] = {}
        for ref in spec.features:
            if ref.kind == "stored":
                if ref.dtype not in NUMERIC_DTYPES:
                    raise SpecError(
                        f"{spec.name}: feature {ref.name} has dtype {ref.dtype!r}, which is not "
                        f"a number; served vectors hold {sorted(NUMERIC_DTYPES)}"
                    )
                _add(wanted.setdefault(ref.view, []), ref.feature)
        for odfv in spec.on_demand.values():
            for view_name, features in odfv.inputs.items():
                for feature in features:
                    _add(wanted.setdefault(view_name, []), feature)

        vector_features: dict[str, list[str]] = {}
        vector_outputs: dict[str, list[str]] = {}
        for ref in spec.features:
            target = vector_features if ref.kind == "stored" else vector_outputs
            target.setdefault(ref.view, []).append(ref.feature)

        views: list[ViewPlan] = []
        view_index: dict[str, int] = {}
        for view_name, features in wanted.items():
            view = spec.views.get(view_name)
            if view is None:
                raise SpecError(f"{spec.name}: view {view_name!r} is not described in the spec")
            for feature in features:
                stored_dtype = view.features.get(feature)
                if stored_dtype not in DECODED_DTYPES:
                    raise SpecError(
                        f"{spec.name}: {view_name}.{feature} has dtype {stored_dtype!r}; the encoder "
                        f"decodes {sorted(DECODED_DTYPES)}"
                    )
            view_index[view_name] = len(views)
            views.append(
                ViewPlan(
                    name=view_name,
                    join_keys=tuple(view.join_keys),
                    codec=EntityKeyCodec(view.join_keys, spec.project),
                    features=tuple(features),
                    hmget=HmgetPacker(
                        [field_name(view_name, f) for f in features] + [timestamp_field(view_name)]
                    ),
                    ttl_seconds=float(view.ttl_seconds) if view.ttl_seconds else None,
                    vector_positions=tuple(
                        features.index(f) for f in vector_features.get(view_name, [])
                    ),
                )
            )
        self.views: tuple[ViewPlan, ...] = tuple(views)

        on_demand: list[OnDemandPlan] = []
        for od_name, odfv in spec.on_demand.items():
            impl = ON_DEMAND_IMPLS.get(od_name)
            if impl is None:
                raise SpecError(
                    f"{spec.name}: on-demand view {od_name!r} has no implementation in the encoder"
                )
            unknown = [o for o in odfv.outputs if o not in impl.outputs]
            if unknown:
                raise SpecError(f"{spec.name}: {od_name} has no outputs {unknown}")
            inputs: list[tuple[int, int, str]] = []
            seen: set[str] = set()
            for view_name, features in odfv.inputs.items():
                v = view_index[view_name]
                for feature in features:
                    # The transform reads inputs by short name, so they must not collide.
                    if feature in seen:
                        raise SpecError(f"{spec.name}: {od_name} reads {feature!r} twice")
                    seen.add(feature)
                    inputs.append((v, views[v].features.index(feature), feature))
            outputs = tuple(vector_outputs.pop(od_name, []))
            on_demand.append(OnDemandPlan(od_name, impl, tuple(inputs), outputs))
        self.on_demand: tuple[OnDemandPlan, ...] = tuple(on_demand)
        if vector_outputs:
            raise SpecError(f"{spec.name}: undescribed on-demand views {sorted(vector_outputs)}")

        # Rows are assembled view by view (each view's features, then each on-demand view's
        # outputs) and put back in the service's order only if the service interleaves them.
        flat = [(view.name, view.features[p]) for view in views for p in view.vector_positions]
        flat += [(od.name, name) for od in on_demand for name in od.vector_outputs]
        position = {ref: i for i, ref in enumerate(flat)}
        order = tuple(position[(ref.view, ref.feature)] for ref in spec.features)
        self.order: tuple[int, ...] | None = None if order == tuple(range(len(order))) else order

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "feature_names": self.feature_names,
            "feature_contract": self.feature_contract,
        }

    def describe(self) -> dict[str, Any]:
        """What a client needs to know to call ``/v1/encode`` for this service."""
        return {
            **self.summary(),
            "project": self.spec.project,
            "join_keys": list(self.join_keys),
            "request_fields": self.request_fields,
            "features": [ref.model_dump() for ref in self.spec.features],
            "views": {
                v.name: {"join_keys": list(v.join_keys), "ttl_seconds": v.ttl_seconds}
                for v in self.views
            },
            "on_demand": sorted(self.spec.on_demand),
        }


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def load_plans(path: Path) -> dict[str, ServicePlan]:
    """Read the serving spec at ``path`` and compile every feature service in it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the serving spec {path}: {exc.strerror or exc}") from exc
    try:
        spec = ServingSpec.model_validate_json(text)
    except ValidationError as exc:
        raise SpecError(
            f"{path} is not a serving spec: {exc.error_count()} errors, "
            f"first: {json.dumps(exc.errors()[0], default=str)}"
        ) from exc
    if not spec.feature_services:
        raise SpecError(f"{path} describes no feature service")
    return {name: ServicePlan(service) for name, service in spec.feature_services.items()}
