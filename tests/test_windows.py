"""Request-time windows (vigil_contracts.windows) over the pipeline's stored events.

The per-row form (the encoder's) and the vectorised form (offline frames) are held equal bit for
bit on many rows; at the instant just after a row's own transaction both equal the pipeline's
stored aggregates (windows ending at that transaction); and a card idle for three weeks has no
transaction in its last hour, day or week at request time although its stored events hold them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from test_pipeline import T0, random_world, raw_frame, txn
from vigil.pipeline import compute_feature_tables
from vigil_contracts import windows

VIEWS = tuple(windows.EVENT_FIELDS)


def _events(table: pd.DataFrame, view: str) -> list[dict[str, list]]:
    lists = {name: table[name].tolist() for name in windows.EVENT_FIELDS[view]}
    return [{name: lists[name][i] for name in lists} for i in range(len(table))]


def _flat(table: pd.DataFrame, view: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    names = list(windows.EVENT_FIELDS[view])
    lengths = np.array([len(x) for x in table[names[0]].tolist()], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    flat = {
        name: np.asarray([v for x in table[name].tolist() for v in x], dtype=object)
        for name in names
    }
    return offsets, flat


def _same(a: object, b: object) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("seed", [0, 1])
def test_row_and_vectorised_forms_agree_bit_for_bit(seed: int) -> None:
    tables = compute_feature_tables(random_world(seed))
    rng = np.random.default_rng(seed)
    for view in VIEWS:
        table = tables[view]
        stamps = table["event_timestamp"].array.asi8
        # Request instants from just after the row to weeks later, and some ties.
        t_us = stamps + rng.choice(
            [0, 1, 60_000_000, 3_600_000_000, 86_400_000_000, 21 * 86_400_000_000], len(table)
        )
        offsets, flat = _flat(table, view)
        columns = windows.window_columns(view, offsets, flat, t_us)
        for i, events in enumerate(_events(table, view)):
            row = windows.window_row(view, events, int(t_us[i]))
            for name, value in row.items():
                vec = columns[name][i]
                vec = vec.item() if isinstance(vec, np.generic) else vec
                if isinstance(value, int):
                    vec = int(vec)
                assert _same(value, vec), (view, name, i, value, vec)


def test_an_idle_card_has_nothing_in_its_recent_windows() -> None:
    rows = [txn(T0 + i * pd.Timedelta(minutes=5), "c1", amount=20.0 + i) for i in range(16)]
    card = compute_feature_tables(raw_frame(rows))["card_stats"]
    last = _events(card, "card_stats")[-1]
    assert len(last["card_event_us"]) == 16  # the stored state still holds the old events
    just_after = int(card["event_timestamp"].array.asi8[-1])
    assert windows.window_row("card_stats", last, just_after)["card_txn_count_1h"] == 12
    three_weeks = int((T0 + 21 * pd.Timedelta(days=1)).value // 1000)
    now = windows.window_row("card_stats", last, three_weeks)
    assert now["card_txn_count_1h"] == now["card_txn_count_24h"] == 0
    assert now["card_txn_count_7d"] == 0 and now["card_amount_sum_24h"] == 0.0
    assert now["card_distinct_merchants_24h"] == 0
    # The 30-day windows still see them.
    assert now["card_amount_avg_30d"] == pytest.approx(27.5)
    assert now["card_home_country"] == "DE"
    # An event at the request's own instant is not counted; one a microsecond before is.
    at = int(last["card_event_us"][-1])
    assert windows.window_row("card_stats", last, at)["card_txn_count_1h"] == 11
    assert windows.window_row("card_stats", last, at + 1)["card_txn_count_1h"] == 12


def test_unknown_entity_is_missing_and_empty_windows_are_zero_or_none() -> None:
    assert all(v is None for v in windows.window_row("card_stats", {}, 0).values())
    empty = {name: [] for name in windows.EVENT_FIELDS["merchant_stats"]}
    out = windows.window_row("merchant_stats", empty, 10**15)
    assert out["merchant_txn_count_24h"] == 0 and out["merchant_distinct_cards_24h"] == 0
    assert out["merchant_amount_avg_7d"] is None and out["merchant_night_share_7d"] is None


def test_event_lists_are_capped_at_the_newest() -> None:
    n = windows.EVENT_CAP + 5
    rows = [txn(T0 + i * pd.Timedelta(seconds=1), "c1", amount=float(i)) for i in range(n)]
    card = compute_feature_tables(raw_frame(rows))["card_stats"]
    last = _events(card, "card_stats")[-1]
    assert len(last["card_event_us"]) == windows.EVENT_CAP
    assert last["card_event_amounts"][0] == 5.0 and last["card_event_amounts"][-1] == n - 1


def test_the_feast_form_is_the_row_form_with_missing_floats_as_nan() -> None:
    tables = compute_feature_tables(random_world(3))
    for view in VIEWS:
        table = tables[view]
        columns = {name: table[name].tolist() for name in windows.EVENT_FIELDS[view]}
        t = table["event_timestamp"].array.asi8 + 7_200_000_000
        columns["txn_epoch"] = list(t / 1e6)
        # One unknown entity first.
        columns = {
            name: [1e9 if name == "txn_epoch" else None, *values]
            for name, values in columns.items()
        }
        feast = windows.feast_columns(view, columns)
        assert all(
            v is None for name, v in ((n, c[0]) for n, c in feast.items()) if "count" in name
        )
        for i in range(1, len(columns["txn_epoch"])):
            row = windows.transform_row(view, {n: c[i] for n, c in columns.items()})
            for name, value in row.items():
                assert _same(value, feast[name][i]), (view, name, i)
