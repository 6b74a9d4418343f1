"""Request-time windows (vigil_contracts.windows) over the pipeline's stored events and tiles.

The per-row form (the encoder's) and the vectorised form (offline frames) are held equal bit for
bit on many rows; a card idle for three weeks has no transaction in its last hour, day or week at
request time although its stored events hold them; a merchant's tiled windows reach back to the
start of the UTC hour (day) 24 hours (7 days) before the request.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from test_pipeline import T0, random_world, raw_frame, txn
from vigil.pipeline import compute_feature_tables
from vigil_contracts import windows

VIEWS = windows.VIEWS
HOUR_US, DAY_US = 3_600_000_000, 86_400_000_000


def _events(table: pd.DataFrame, view: str) -> list[dict[str, list]]:
    lists = {name: table[name].tolist() for name in windows.stored_lists(view)}
    return [{name: lists[name][i] for name in lists} for i in range(len(table))]


def _flat(table: pd.DataFrame, view: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    offsets = {}
    for key in windows.list_groups(view):
        lengths = np.array([len(x) for x in table[key].tolist()], dtype=np.int64)
        offsets[key] = np.concatenate(([0], np.cumsum(lengths)))
    flat = {
        name: np.asarray([v for x in table[name].tolist() for v in x], dtype=object)
        for name in windows.stored_lists(view)
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
    assert all(v is None for v in windows.window_row("merchant_stats", {}, 0).values())
    empty = {name: [] for name in windows.stored_lists("merchant_stats")}
    out = windows.window_row("merchant_stats", empty, 10**15)
    assert out["merchant_txn_count_24h"] == 0 and out["merchant_txn_count_7d"] == 0
    assert out["merchant_amount_avg_7d"] is None and out["merchant_night_share_7d"] is None
    assert out["merchant_small_amount_share_24h"] is None
    empty = {name: [] for name in windows.EVENT_FIELDS["device_stats"]}
    assert windows.window_row("device_stats", empty, 10**15)["device_distinct_cards_7d"] == 0


@pytest.mark.parametrize("view", sorted(windows.FIRST_SEEN))
def test_an_entity_first_seen_with_this_transaction_is_unknown_at_it(view: str) -> None:
    """Scored again once the streamer stored it, a transaction's card (device) row holds the
    transaction itself and its first sighting then: at that instant the entity is unknown
    (missing windows, as the first scoring saw: no row), in the row, vector and column forms.
    Known stays known: first seen before (idle, its old events out of the row) gives 0s, and so
    does a row stored before the first sighting was (no scalar)."""
    us = 1_765_000_000_000_000
    sample = {"us": us, "amount": 12.5, "night": 0}
    lists = {name: [sample.get(of, "x")] for name, (of, _) in windows.stored_lists(view).items()}
    outputs = windows.view_outputs(view)
    count = next(name for name in outputs if "_count_" in name)

    def forms(first_seen: float | None) -> tuple[dict, list, dict]:
        row = {**lists, windows.REQUEST_FIELD: us / 1e6}
        if first_seen is not None:
            row[windows.FIRST_SEEN[view]] = first_seen
        columns = windows.transform_columns(view, {k: [v] * 3 for k, v in row.items()})
        return (
            windows.transform_row(view, row),
            windows.transform_vector(view)(row),
            {name: values[1] for name, values in columns.items()},
        )

    row, vector, column = forms(us / 1e6)  # first seen with this transaction
    assert all(v is None for v in row.values()) and column == row
    assert all(math.isnan(v) for v in vector) and len(vector) == len(outputs)
    for first_seen in ((us - 40 * DAY_US) / 1e6, None):  # seen 40 days before; not stored
        row, vector, column = forms(first_seen)
        assert row[count] == 0 and column == row
        assert vector[outputs.index(count)] == 0.0
    # An event before t is a sighting before it, whatever the scalar says.
    earlier = {
        name: [sample.get(of, "x")] * 2 for name, (of, _) in windows.stored_lists(view).items()
    }
    times = next(name for name, (of, _) in windows.stored_lists(view).items() if of == "us")
    earlier[times] = [us - HOUR_US // 2, us]
    known = {**earlier, windows.REQUEST_FIELD: us / 1e6, windows.FIRST_SEEN[view]: us / 1e6}
    assert windows.transform_row(view, known)[count] == 1


def test_merchant_windows_are_whole_tiles_from_the_hour_or_day_24h_or_7d_before() -> None:
    midnight = T0.floor("D")
    # 00:30 UTC (01:30 in Germany: night) on days 0..9, and 10:15 on day 9 (small).
    rows = [
        txn(midnight + pd.Timedelta(days=d, minutes=30), f"c{d}", "m1", amount=10.0 * (d + 1))
        for d in range(10)
    ]
    rows.append(txn(midnight + pd.Timedelta(days=9, hours=10, minutes=15), "cx", amount=2.0))
    merchant = compute_feature_tables(raw_frame(rows))["merchant_stats"]
    last = _events(merchant, "merchant_stats")[-1]
    day0 = int(midnight.value // 1000) // DAY_US
    assert last["merchant_day_index"] == list(range(day0 + 2, day0 + 10))  # 8 days kept
    assert last["merchant_day_count"] == [1] * 7 + [2]
    assert last["merchant_day_night"] == [1] * 8
    assert last["merchant_hour_index"] == [(day0 + 9) * 24, (day0 + 9) * 24 + 10]  # 25 hours
    assert last["merchant_hour_small"] == [0, 1]
    day10 = (day0 + 10) * DAY_US
    # At 00:50 on day 10 the 24h window starts at 00:00 on day 9: 00:30 (24h20m ago) counts.
    at = windows.window_row("merchant_stats", last, day10 + 50 * 60_000_000)
    assert at["merchant_txn_count_24h"] == 2 and at["merchant_small_amount_share_24h"] == 0.5
    # The 7d window is days 3..10: the 00:30s of days 3..9 and the 10:15.
    assert at["merchant_txn_count_7d"] == 8 and at["merchant_amount_avg_7d"] == 492 / 8
    assert at["merchant_night_share_7d"] == 7 / 8
    # At 01:05 it starts at 01:00 on day 9; at 23:59, at 23:00: nothing.
    at = windows.window_row("merchant_stats", last, day10 + 65 * 60_000_000)
    assert at["merchant_txn_count_24h"] == 1 and at["merchant_small_amount_share_24h"] == 1.0
    at = windows.window_row("merchant_stats", last, day10 + 1439 * 60_000_000)
    assert at["merchant_txn_count_24h"] == 0 and at["merchant_small_amount_share_24h"] is None


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
        columns = {name: table[name].tolist() for name in windows.stored_lists(view)}
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


def test_a_merchants_rows_either_side_of_an_hour_share_no_result_in_one_batch(monkeypatch) -> None:
    """The tiled vector form keeps a result per merchant and hour (:data:`windows.TILED_KEPT`):
    rows of one merchant's lists in one batch either side of an hour or day boundary, or of
    equal lists that are other objects, give the values of separate calls, also once the kept
    results have been dropped."""
    tables = compute_feature_tables(random_world(4))
    merchant = tables["merchant_stats"]
    lists = _events(merchant, "merchant_stats")[-1]
    assert lists["merchant_hour_index"]
    hour = lists["merchant_hour_index"][-1]
    instants = [
        (hour + 1) * HOUR_US - 1,  # the last µs of its newest hour
        (hour + 1) * HOUR_US,  # the next hour: the oldest hour tile may leave the 24h window
        (hour + 1) * HOUR_US + 1,
        (hour + 24) * HOUR_US,
        (hour + 25) * HOUR_US,
        (lists["merchant_day_index"][-1] + 8) * DAY_US,  # the next day's tile, a week on
        (lists["merchant_day_index"][-1] + 8) * DAY_US - 1,
    ]
    rows = [{**lists, windows.REQUEST_FIELD: t / 1e6} for t in [*instants, *reversed(instants)]]
    # Equal lists in other objects, and an unknown merchant, in the same batch.
    rows.append(
        {**{k: list(v) for k, v in lists.items()}, windows.REQUEST_FIELD: instants[0] / 1e6}
    )
    rows.append({windows.REQUEST_FIELD: instants[0] / 1e6})

    def separate(row: dict) -> list[float]:
        return windows.transform_vector("merchant_stats")(row)  # a fresh form: nothing kept

    for kept in (windows.TILED_KEPT, 2):
        monkeypatch.setattr(windows, "TILED_KEPT", kept)
        batch = windows.transform_vector("merchant_stats")
        got = [batch(row) for row in rows]
        want = [separate(row) for row in rows]
        for g, w in zip(got, want, strict=True):
            assert len(g) == len(w) and all(map(_same, g, w)), (g, w)
        assert len({repr(g) for g in got}) > 3  # the boundaries are met: the windows differ
    # A row's result is a list of its own: changing it changes no later row's.
    batch = windows.transform_vector("merchant_stats")
    first = batch(rows[0])
    first[0] = -1.0
    assert batch(rows[0])[0] != -1.0


def test_the_mode_is_the_most_frequent_value_and_the_smallest_of_ties() -> None:
    for values, want in [
        ([], None),
        (["", ""], None),
        (["FR", "DE", "", "DE", "FR"], "DE"),
        (["FR", "DE", "FR"], "FR"),
        ([f"c{i % 12}" for i in range(30)], "c0"),  # many candidates (counted otherwise)
        ([f"c{i}" for i in range(20)] + ["c7"], "c7"),
    ]:
        assert windows._aggregate("mode", values, len(values)) == want, values


def test_a_views_windowed_inputs_are_those_of_their_own_list_and_window() -> None:
    """The request features' windowed inputs of a card (``aggregate_many``, after the view's own
    windows at that instant) equal each feature computed alone: the same lists at other
    instants, equal lists that are other objects, one window end with other starts."""
    tables = compute_feature_tables(random_world(5))
    card = tables["card_stats"]
    events = max(_events(card, "card_stats"), key=lambda e: len(e["card_event_us"]))
    assert len(events["card_event_us"]) > 3
    times = events["card_event_us"]
    instants = [times[0], times[1], times[-1], times[-1] + 1, times[-1] + 30 * DAY_US, times[2]]
    names = ("card_amount_avg_30d", "card_amount_std_30d", "card_home_country")
    copy = {k: list(v) for k, v in events.items()}
    copy["card_event_amounts"] = [x * 2 for x in copy["card_event_amounts"]]  # other values
    # Windows of one end and other starts: on days 35 and 41 the 30 days hold 3 and 2 events.
    days = [0, 10, 20, 35]
    spaced = {
        "card_event_us": [d * DAY_US for d in days],
        "card_event_amounts": [1.0, 10.0, 20.0, 41.0],
        "card_event_merchants": ["m"] * 4,
        "card_event_devices": [""] * 4,
        "card_event_countries": ["FR", "DE", "DE", "FR"],
    }
    at = [35 * DAY_US + 1, 36 * DAY_US, 41 * DAY_US, 30 * DAY_US + 1]

    def fresh(lists: dict, t: int) -> list:
        return [windows.aggregate(name, lists, t) for name in names]

    vector = windows.transform_vector("card_stats")
    for t in [*instants, *reversed(instants)]:
        row = {**events, windows.REQUEST_FIELD: t / 1e6}
        vector(row)  # the view first, as the encoder runs them
        got = windows.aggregate_many(names, events, t)
        other = windows.aggregate_many(names, copy, t)
        assert all(map(_same, got, fresh(events, t))), t
        assert all(map(_same, other, fresh(copy, t))), t
    for t in [*at, *reversed(at)]:
        vector({**spaced, windows.REQUEST_FIELD: t / 1e6})
        got = windows.aggregate_many(names, spaced, t)
        assert all(map(_same, got, fresh(spaced, t))), t
