"""Vigil's feature definitions: entities, offline sources, feature views and feature services.

Training (``get_historical_features``) and serving (``get_online_features`` and Vigil's encoder)
both name a FeatureService defined here, so the model sees the same features in both.

The offline tables are written by ``vigil features`` into ``data/offline/`` beside this file; a
row stamped ``t`` summarises the entity's transactions strictly before ``t``.
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
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

from vigil_contracts import request_features as rf

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


card_stats = FeatureView(
    name="card_stats",
    entities=[card],
    ttl=FRESHNESS,
    schema=[
        Field(name="card_txn_count_1h", dtype=Int64),
        Field(name="card_txn_count_24h", dtype=Int64),
        Field(name="card_txn_count_7d", dtype=Int64),
        Field(name="card_amount_sum_24h", dtype=Float64),
        Field(name="card_amount_avg_30d", dtype=Float64),
        Field(name="card_amount_std_30d", dtype=Float64),
        Field(name="card_amount_max_30d", dtype=Float64),
        Field(name="card_distinct_merchants_24h", dtype=Int64),
        Field(name="card_distinct_devices_30d", dtype=Int64),
        Field(name="card_distinct_countries_30d", dtype=Int64),
        Field(name="card_last_txn_epoch", dtype=Float64),
        Field(name="card_home_country", dtype=String),
    ],
    source=_source("card_stats"),
    online=True,
    description="Rolling behaviour of a card over 1 h to 30 days (amounts in EUR).",
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    ttl=FRESHNESS,
    schema=[
        Field(name="merchant_txn_count_24h", dtype=Int64),
        Field(name="merchant_txn_count_7d", dtype=Int64),
        Field(name="merchant_amount_avg_7d", dtype=Float64),
        Field(name="merchant_distinct_cards_24h", dtype=Int64),
        Field(name="merchant_night_share_7d", dtype=Float64),
        Field(name="merchant_small_amount_share_24h", dtype=Float64),
    ],
    source=_source("merchant_stats"),
    online=True,
    description="Rolling traffic of a merchant over 1 to 7 days.",
)

device_stats = FeatureView(
    name="device_stats",
    entities=[device],
    ttl=FRESHNESS,
    schema=[
        Field(name="device_txn_count_24h", dtype=Int64),
        Field(name="device_distinct_cards_7d", dtype=Int64),
        Field(name="device_distinct_countries_7d", dtype=Int64),
        Field(name="device_first_seen_epoch", dtype=Float64),
    ],
    source=_source("device_stats"),
    online=True,
    description="Rolling use of a device over 1 to 7 days.",
)

fx_rates = FeatureView(
    name="fx_rates",
    entities=[currency],
    # Rates are daily: a table not refreshed for a week makes amounts stale, not silently old.
    ttl=timedelta(days=7),
    schema=[Field(name="eur_per_unit", dtype=Float64)],
    source=_source("fx_rates"),
    online=True,
    description="The dated FX table: EUR (the base currency) per unit of a currency, one rate a day.",
)

_FEAST_TYPES = {"Float64": Float64, "Int64": Int64, "String": String}

transaction_request = RequestSource(
    name="transaction_request",
    schema=[Field(name=n, dtype=_FEAST_TYPES[t]) for n, t in rf.REQUEST_FIELDS.items()],
    description="Fields of the transaction being scored, known only at request time.",
)


@on_demand_feature_view(
    sources=[card_stats, device_stats, fx_rates, transaction_request],
    schema=[Field(name=n, dtype=Float64) for n in rf.OUTPUT_FEATURES],
    mode="python",
    description="Request-time features: the amount in EUR against the card's history, local hour, device age.",
)
def request_features(inputs: dict) -> dict:
    # Imported inside the UDF: Feast serialises the function with dill, and the import keeps
    # the body pointing at the one shared implementation.
    from vigil_contracts import request_features as rf_impl

    # Short output names: Feast 0.67's online python path only finds outputs under the names it
    # was asked for, so Vigil retrieves with full_feature_names=False and keeps every feature
    # name unique across views instead.
    return rf_impl.transform_columns(inputs)


fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[
        card_stats[
            [
                "card_txn_count_1h",
                "card_txn_count_24h",
                "card_txn_count_7d",
                "card_amount_sum_24h",
                "card_amount_avg_30d",
                "card_amount_std_30d",
                "card_amount_max_30d",
                "card_distinct_merchants_24h",
                "card_distinct_devices_30d",
                "card_distinct_countries_30d",
            ]
        ],
        merchant_stats,
        device_stats[
            ["device_txn_count_24h", "device_distinct_cards_7d", "device_distinct_countries_7d"]
        ],
        request_features,
    ],
    description="Features of the fraud model, version 1 of the contract.",
)
