"""Vigil's feature definitions: entities, offline sources, feature views and feature services.

Training (``get_historical_features``) and serving (``get_online_features`` and Vigil's encoder)
both name a FeatureService defined here, so the model sees the same features in both.

The offline tables are written by ``vigil features`` into ``data/offline/`` beside this file; a
row stamped ``t`` holds the entity's recent transactions strictly before ``t``. Windowed features
("in the last hour") are on-demand views finishing each window at the transaction's own instant;
every stored and windowed feature is declared once, in ``vigil_contracts.windows``, and the
schemas here are generated from it; every request-time feature in
``vigil_contracts.request_features``, which generates the on-demand view ``request_features``
(see docs/adding-a-feature.md).
"""

from datetime import timedelta
from pathlib import Path

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    PushSource,
    RequestSource,
)
from feast.data_source import DataSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int64, String
from feast.value_type import ValueType

from vigil_contracts import request_features as rf
from vigil_contracts import windows

OFFLINE_DIR = Path(__file__).resolve().parent / "data" / "offline"
FRESHNESS = timedelta(days=30)

card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.STRING,
    description="A payment card (PAN token).",
)
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.STRING,
    description="An acquiring merchant.",
)
device = Entity(
    name="device",
    join_keys=["device_id"],
    value_type=ValueType.STRING,
    description="A customer device (app install or browser fingerprint).",
)
currency = Entity(
    name="currency",
    join_keys=["currency"],
    value_type=ValueType.STRING,
    description="An ISO 4217 currency (the amount's).",
)


def _source(name: str) -> DataSource:
    """The view's offline table; for the views the streamer keeps fresh, a push source backed by
    it. The push source declares the stream path the Feast way (``FeatureStore.push``); training
    (``get_historical_features``) and ``feast materialize`` still read the offline table, its
    ``batch_source``. The streamer writes the same rows in Feast's layout directly
    (``vigil_streamer.feast_layout``; tests/test_push_source.py holds the two equal)."""
    table = FileSource(
        name=f"{name}_source",
        path=str(OFFLINE_DIR / f"{name}.parquet"),
        timestamp_field="event_timestamp",
    )
    if name not in ("card_stats", "merchant_stats", "device_stats"):
        return table  # fx_rates: a daily table, not streamed
    return PushSource(name=f"{name}_push", batch_source=table)


_FEAST_TYPES = {
    "Float64": Float64,
    "Int64": Int64,
    "String": String,
    **{
        f"Array({t})": Array(f)
        for t, f in (("Float64", Float64), ("Int64", Int64), ("String", String))
    },
}


def _stored_view(name: str, entity: Entity, description: str) -> FeatureView:
    """A view of an entity's recent events (a merchant's: its hour and day tiles) and scalars,
    its schema generated from ``vigil_contracts.windows`` (the one declaration the pipeline and
    the streamer write)."""
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=FRESHNESS,
        schema=[
            Field(name=n, dtype=_FEAST_TYPES[t]) for n, t in windows.stored_features(name).items()
        ],
        source=_source(name),
        online=True,
        description=description,
    )


card_stats = _stored_view(
    "card_stats",
    card,
    "A card's transactions of the last 30 days (amounts in EUR) and its last one.",
)
merchant_stats = _stored_view(
    "merchant_stats",
    merchant,
    "A merchant's hour tiles (25 UTC hours) and day tiles (8 UTC days): counts, EUR sums.",
)
device_stats = _stored_view(
    "device_stats", device, "A device's transactions of the last 7 days and its first sighting."
)

fx_rates = FeatureView(
    name="fx_rates",
    entities=[currency],
    # Rates are daily: a table not refreshed for a week makes amounts stale, not silently old.
    ttl=timedelta(days=7),
    schema=[Field(name=n, dtype=_FEAST_TYPES[t]) for n, t in rf.FX_RATES["fx_rates"].items()],
    source=_source("fx_rates"),
    online=True,
    description="The dated FX table: EUR (the base currency) per unit of a currency, one rate a day.",
)

transaction_request = RequestSource(
    name="transaction_request",
    schema=[Field(name=n, dtype=_FEAST_TYPES[t]) for n, t in rf.REQUEST_FIELDS.items()],
    description="Fields of the transaction being scored, known only at request time.",
)


_VIEWS = {view.name: view for view in (card_stats, merchant_stats, device_stats, fx_rates)}


# Its sources and schema are generated from the features' declarations in
# vigil_contracts.request_features: the views they read, and each feature's name and type.
@on_demand_feature_view(
    sources=[*(_VIEWS[view] for view in rf.STORED_INPUTS), transaction_request],
    schema=[Field(name=f.name, dtype=_FEAST_TYPES[f.dtype]) for f in rf.FEATURES],
    mode="python",
    description="Request-time features: the amount in EUR against the card's history, local hour, device age.",
)
def request_features(inputs: dict) -> dict:
    # Imported inside the UDF: Feast serialises the function with dill, and the import keeps
    # the body pointing at the one shared implementation.
    from vigil_contracts import request_features as rf_impl

    # Short output names: Feast 0.67's online python path only finds outputs under the names it
    # was asked for, so Vigil retrieves with full_feature_names=False and keeps every feature
    # name unique across views instead. Missing floats are NaN here (the same "missing" to every
    # reader): `feast apply` infers each output's type from a sample row, and a None (a z-score
    # of the sample's single amount) is no type.
    return rf_impl.feast_columns(inputs)


def _window_schema(view: str) -> list[Field]:
    return [
        Field(name=f.name, dtype=_FEAST_TYPES[f.dtype])
        for f in windows.view_features(view)
        if f.name in windows.view_outputs(view)
    ]


# One on-demand view per entity view finishes its windows at the transaction's own instant. Each
# UDF names its view literally: Feast rebuilds a UDF from its source text, without its closure.


@on_demand_feature_view(
    sources=[card_stats, transaction_request],
    schema=_window_schema("card_stats"),
    mode="python",
    description="A card's windows (1 h to 30 days) ending at this transaction.",
)
def card_windows(inputs: dict) -> dict:
    from vigil_contracts import windows as windows_impl

    return windows_impl.feast_columns("card_stats", inputs)


@on_demand_feature_view(
    sources=[merchant_stats, transaction_request],
    schema=_window_schema("merchant_stats"),
    mode="python",
    description="A merchant's windows (24 h, 7 days; whole UTC hours and days) up to this transaction.",
)
def merchant_windows(inputs: dict) -> dict:
    from vigil_contracts import windows as windows_impl

    return windows_impl.feast_columns("merchant_stats", inputs)


@on_demand_feature_view(
    sources=[device_stats, transaction_request],
    schema=_window_schema("device_stats"),
    mode="python",
    description="A device's windows (1 to 7 days) ending at this transaction.",
)
def device_windows(inputs: dict) -> dict:
    from vigil_contracts import windows as windows_impl

    return windows_impl.feast_columns("device_stats", inputs)


fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[card_windows, merchant_windows, device_windows, request_features],
    description="Features of the fraud model, version 1 of the contract.",
)
