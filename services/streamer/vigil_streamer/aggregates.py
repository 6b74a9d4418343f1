"""Each touched entity's online row, computed by the batch pipeline's own function.

One definition: the rows are what ``vigil.pipeline.compute_feature_tables`` makes of the
entities' recent transactions (their histories, amounts already in EUR), so the windows, the
stamps (``t + 1 µs``), ties, distinct counts, shares and the home-country mode are the batch
pipeline's by construction. Several entities are computed in one call over the union of their
histories: every history holds all of its entity's transactions that any window of its newest
row can see (and its first sighting), so the rows taken, each entity's newest, are exact; the
other rows of the union are not used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vigil.pipeline import ENTITY_KEYS, FEATURE_TABLES, FEATURE_TYPES, compute_feature_tables
from vigil_contracts import windows
from vigil_contracts.entity_history import KINDS, HistoryRecord

#: The longest window each kind's row reads (µs): its history is kept that long (plus the
#: allowed lateness), beside its first sighting.
WINDOW_US: dict[str, int] = {key: windows.longest_window_us(view) for key, view in KINDS.items()}
DTYPES: dict[str, str] = FEATURE_TYPES

Row = tuple[int, dict[str, Any]]  # (stamp in µs, feature -> value)


def frame(records: Iterable[HistoryRecord]) -> pd.DataFrame:
    """The raw-transaction frame the pipeline reads (amounts in EUR)."""
    rows = list(records)
    return pd.DataFrame(
        {
            "event_timestamp": pd.to_datetime(
                np.array([r.t_us for r in rows], dtype=np.int64), unit="us", utc=True
            ),
            "card_id": pd.Series([r.card_id for r in rows], dtype=object),
            "merchant_id": pd.Series([r.merchant_id for r in rows], dtype=object),
            "device_id": pd.Series([r.device_id for r in rows], dtype=object),
            "country": pd.Series([r.country for r in rows], dtype=object),
            "amount": np.array([r.amount_eur for r in rows], dtype=np.float64),
            "currency": "EUR",
        }
    )


def newest_rows(
    records: Sequence[HistoryRecord], targets: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Row]:
    """``(join key, value) -> (stamp µs, features)``: each target's newest row."""
    if not records:
        return {}
    tables = compute_feature_tables(frame(records))
    wanted: dict[str, set[str]] = {}
    for join_key, value in targets:
        wanted.setdefault(join_key, set()).add(value)
    out: dict[tuple[str, str], Row] = {}
    for join_key, values in wanted.items():
        view = KINDS[join_key]
        table = tables[view]
        assert ENTITY_KEYS[view] == join_key
        mine = table[table[join_key].isin(values)]
        if mine.empty:
            continue
        # Rows are grouped by entity, each entity's by time: the last of a group is its newest.
        last = mine.drop_duplicates(subset=[join_key], keep="last")
        stamps = last["event_timestamp"].array.asi8  # µs since the epoch
        columns = {name: last[name].tolist() for name in FEATURE_TABLES[view]}
        for i, value in enumerate(last[join_key].tolist()):
            out[(join_key, value)] = (
                int(stamps[i]),
                {n: columns[n][i] for n in FEATURE_TABLES[view]},
            )
    return out
