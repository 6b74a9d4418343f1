"""Transactions -> Feast entity frames -> point-in-time feature matrices in model order.

Training and batch scoring both go through :func:`historical_matrix`, which asks Feast's
``get_historical_features`` for a feature service and returns the columns in the order of the
serving spec (the order the encoder serves), so no list of features is written twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vigil_contracts.request_features import NO_DEVICE_ID, request_fields
from vigil_contracts.serving_spec import FeatureServiceSpec

if TYPE_CHECKING:
    from feast import FeatureStore

REQUIRED_COLUMNS = (
    "transaction_id", "event_timestamp", "card_id", "merchant_id", "amount", "channel", "country",
)


class DatasetError(Exception):
    """Transactions are missing columns or hold values that cannot be scored."""


def validate_transactions(df: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"transactions lack the columns {missing}")
    if not pd.api.types.is_datetime64_any_dtype(df["event_timestamp"]):
        raise DatasetError("event_timestamp must be a timestamp column")
    if df["transaction_id"].isna().any() or df["transaction_id"].duplicated().any():
        raise DatasetError("transaction_id must be present and unique")
    amounts = pd.to_numeric(df["amount"], errors="coerce")
    if amounts.isna().any() or (amounts <= 0).any():
        raise DatasetError("amount must be a number > 0 on every row")


def entity_frame(transactions: pd.DataFrame) -> pd.DataFrame:
    """Keys, request-time fields and event time of each transaction (the business->data mapping)."""
    validate_transactions(transactions)
    ts = pd.to_datetime(transactions["event_timestamp"], utc=True)
    devices = transactions["device_id"] if "device_id" in transactions else pd.Series(
        [None] * len(transactions), index=transactions.index
    )
    has_device = devices.notna() & (devices.astype("string").fillna("") != "")
    fields = [
        request_fields(a, t.to_pydatetime(), ch, co, bool(d))
        for a, t, ch, co, d in zip(
            transactions["amount"], ts, transactions["channel"], transactions["country"],
            has_device,
        )
    ]
    frame = pd.DataFrame(fields, index=transactions.index)
    frame.insert(0, "transaction_id", transactions["transaction_id"].astype(str))
    frame.insert(1, "card_id", transactions["card_id"].astype(str))
    frame.insert(2, "merchant_id", transactions["merchant_id"].astype(str))
    frame.insert(3, "device_id", devices.where(has_device, NO_DEVICE_ID).astype(str))
    frame["event_timestamp"] = ts
    return frame.reset_index(drop=True)


def historical_matrix(
    store: "FeatureStore", spec: FeatureServiceSpec, entities: pd.DataFrame
) -> pd.DataFrame:
    """Point-in-time features for each entity row, indexed by transaction_id, in model order."""
    service = store.get_feature_service(spec.name)
    job = store.get_historical_features(
        entity_df=_distinct_times(entities), features=service, full_feature_names=False
    )
    df = job.to_df()
    columns = [f.feature for f in spec.features]
    matrix = df.set_index("transaction_id")[columns].astype("float64")
    matrix.columns = spec.feature_names
    return matrix.reindex(entities["transaction_id"].astype(str))


def _distinct_times(entities: pd.DataFrame) -> pd.DataFrame:
    """Give rows that share an event time distinct times, a few nanoseconds apart.

    Feast's file offline store keeps one entity row per (view join key, event time) and silently
    drops the others, so two transactions of one merchant at the same instant would lose one.
    Feature rows are stamped on whole microseconds (``t + 1 µs``), so nanosecond offsets below a
    microsecond never change which feature row a transaction sees.
    """
    ts = pd.to_datetime(entities["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    rank = ts.groupby(ts).cumcount()
    if len(rank) and rank.max() >= 1000:
        raise DatasetError("more than 1000 transactions share one event time; split the input")
    out = entities.copy()
    out["event_timestamp"] = ts + pd.to_timedelta(rank.to_numpy(), unit="ns")
    return out


def to_float32(matrix: pd.DataFrame) -> np.ndarray:
    """The predictor's input tensor: FP32, NaN for missing."""
    return np.ascontiguousarray(matrix.to_numpy(dtype=np.float32, na_value=np.nan))
