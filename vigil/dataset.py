"""Transactions -> Feast entity frames -> point-in-time feature matrices in model order.

Training and batch scoring both go through :func:`historical_matrix`, which asks Feast's
``get_historical_features`` for a feature service and returns the columns in the order of the
serving spec (the order the encoder serves), so no list of features is written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vigil_contracts.request_features import NO_DEVICE_ID, request_fields
from vigil_contracts.serving_spec import FeatureServiceSpec

if TYPE_CHECKING:
    from feast import FeatureStore

REQUIRED_COLUMNS = (
    "transaction_id",
    "event_timestamp",
    "card_id",
    "merchant_id",
    "amount",
    "currency",
    "channel",
    "country",
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
    devices = (
        transactions["device_id"]
        if "device_id" in transactions
        else pd.Series([None] * len(transactions), index=transactions.index)
    )
    has_device = devices.notna() & (devices.astype("string").fillna("") != "")
    fields = [
        request_fields(a, t.to_pydatetime(), ch, co, bool(d))
        for a, t, ch, co, d in zip(
            transactions["amount"],
            ts,
            transactions["channel"],
            transactions["country"],
            has_device,
            strict=True,
        )
    ]
    frame = pd.DataFrame(fields, index=transactions.index)
    frame.insert(0, "transaction_id", transactions["transaction_id"].astype(str))
    frame.insert(1, "card_id", transactions["card_id"].astype(str))
    frame.insert(2, "merchant_id", transactions["merchant_id"].astype(str))
    frame.insert(3, "device_id", devices.where(has_device, NO_DEVICE_ID).astype(str))
    frame.insert(4, "currency", transactions["currency"].astype(str))  # the fx_rates view's key
    frame["event_timestamp"] = ts
    return frame.reset_index(drop=True)


def historical_matrix(
    store: FeatureStore,
    spec: FeatureServiceSpec,
    entities: pd.DataFrame,
    chunk_rows: int = 10_000,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Point-in-time features for each entity row, indexed by transaction_id, in model order.

    Feast joins every entity row with every earlier row of its keys inside the TTL, so a busy
    merchant multiplies the join; asking in chunks of ``chunk_rows`` keeps memory bounded at
    any data size (10M transactions included) for a few seconds of overhead per chunk.
    """
    service = store.get_feature_service(spec.name)
    columns = [f.feature for f in spec.features]
    parts = []
    for start in range(0, len(entities), chunk_rows):
        chunk = entities.iloc[start : start + chunk_rows]
        df = store.get_historical_features(
            entity_df=chunk, features=service, full_feature_names=False
        ).to_df()
        parts.append(df.set_index("transaction_id")[columns].astype("float64"))
        if progress:
            progress(min(start + chunk_rows, len(entities)), len(entities))
    matrix = pd.concat(parts) if parts else pd.DataFrame(columns=columns, dtype="float64")
    matrix.columns = spec.feature_names
    ids = entities["transaction_id"].astype(str)
    if len(matrix) != len(ids) or not matrix.index.is_unique:
        raise DatasetError("Feast returned a different set of rows than it was asked for")
    return matrix.reindex(ids)


def to_float32(matrix: pd.DataFrame) -> np.ndarray:
    """The predictor's input tensor: FP32, NaN for missing."""
    return np.ascontiguousarray(matrix.to_numpy(dtype=np.float32, na_value=np.nan))
