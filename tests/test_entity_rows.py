"""The streamer's direct row construction (vigil_contracts.entity_rows) against the batch
pipeline: every row of the pipeline's tables on random worlds (ties at one instant, exact window
gaps, entities without a device or a country, a merchant over the event cap, whose tiles count
every event, devices' first sightings) equals ``newest_row`` of that entity's events up to the
row's transaction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from test_pipeline import T0, random_world, raw_frame, txn
from vigil.pipeline import ENTITY_KEYS, FEATURE_TABLES, compute_feature_tables
from vigil_contracts import entity_rows, windows
from vigil_contracts.windows import EVENT_CAP


def _world(seed: int) -> pd.DataFrame:
    base = random_world(seed)
    rows = base[["event_timestamp", "card_id", "merchant_id", "device_id", "country", "amount"]]
    rows = rows.to_dict("records")
    rng = np.random.default_rng(seed)
    start = T0 + pd.Timedelta(days=20)
    for i in range(EVENT_CAP + 150):  # a card and a merchant over the cap, with ties
        ts = start + pd.Timedelta(seconds=60 * (i // 3))
        rows.append(
            txn(
                ts,
                "ccap" if i % 50 else f"c{i % 7}",
                "mcap",
                None if i % 4 == 0 else f"dcap{i % 9}",
                None if i % 11 == 0 else "FR",  # type: ignore[arg-type]
                float(rng.integers(1, 500)) / 4,
            )
        )
    return raw_frame(rows)


def _same(want: object, got: object) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(want, got, rel_tol=1e-12, abs_tol=0.0)
    return want == got


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_pipeline_row_is_newest_row_of_its_entitys_events(seed: int) -> None:
    raw = _world(seed)
    tables = compute_feature_tables(raw)
    t_us = raw["event_timestamp"].array.asi8
    checked = capped = uncapped = 0
    for view, key in ENTITY_KEYS.items():
        table = tables[view]
        by_entity: dict[str, list[entity_rows.Event]] = {}
        for i, row in enumerate(raw.itertuples(index=False)):
            value = getattr(row, key)
            if isinstance(value, str):
                by_entity.setdefault(value, []).append(
                    entity_rows.event(
                        int(t_us[i]),
                        float(row.amount),
                        row.card_id,
                        row.merchant_id,
                        row.device_id if isinstance(row.device_id, str) else None,
                        row.country if isinstance(row.country, str) else None,
                    )
                )
        stamps = table["event_timestamp"].array.asi8
        columns = {name: table[name].tolist() for name in FEATURE_TABLES[view]}
        for j, value in enumerate(table[key].tolist()):
            events = [e for e in by_entity[value] if e.us < stamps[j]]
            stamp, got = entity_rows.newest_row(view, events)
            assert stamp == stamps[j], (view, value)
            assert list(got) == list(FEATURE_TABLES[view])
            for name in FEATURE_TABLES[view]:
                want = columns[name][j]
                if isinstance(want, list):
                    assert len(want) == len(got[name]), (view, value, name)
                    assert all(map(_same, want, got[name])), (view, value, name)
                else:
                    assert _same(float(want), got[name]), (view, value, name)
            if view == "merchant_stats":  # tiles are not capped: every event of the 7 days
                uncapped += sum(got["merchant_day_count"]) > EVENT_CAP
            else:
                capped += len(got[next(iter(got))]) == EVENT_CAP
            checked += 1
    assert checked > 1000 and capped >= 20 and uncapped >= 40


def test_a_merchants_tiles_do_not_depend_on_the_order_events_arrive_in() -> None:
    # The streamer adds a late event into its tile: any order of the same events gives the same
    # tiles (counts exactly; the EUR sums up to their last bits).
    rng = np.random.default_rng(5)
    t0 = int(T0.value // 1000)
    events = sorted(
        (
            entity_rows.event(
                t0 + int(rng.integers(0, 10 * 86_400_000_000)),
                float(rng.integers(1, 4000)) / 100,
                f"c{i % 13}",
                "m1",
                None,
                "FR" if i % 3 else None,
            )
            for i in range(400)
        ),
        key=lambda e: e.us,
    )
    stamp, want = entity_rows.newest_row("merchant_stats", events)
    shuffled = list(events)
    rng.shuffle(shuffled)
    newest = events[-1].us
    got = {}
    for level in windows.TILES["merchant_stats"]:
        got |= entity_rows.tiles(level, shuffled, newest)
    assert stamp == newest + 1 and list(got) == list(want)
    for name, values in want.items():
        assert len(values) == len(got[name]) and all(map(_same, values, got[name])), name
    assert len(want["merchant_hour_index"]) <= 25 and len(want["merchant_day_index"]) == 8


def _merchant_events(seed: int, n: int, days: float) -> list[entity_rows.Event]:
    rng = np.random.default_rng(seed)
    t0 = int(T0.value // 1000)
    times = [t0 + int(rng.integers(0, int(days * 86_400_000_000))) for _ in range(n)]
    times += times[:5]  # ties
    return sorted(
        (
            entity_rows.event(
                t,
                float(rng.integers(1, 4000)) / 100,
                f"c{i % 13}",
                "m1",
                None,
                "FR" if i % 3 else None,
            )
            for i, t in enumerate(times)
        ),
        key=lambda e: e.us,
    )


def _near(want: object, got: object) -> bool:
    """Equal, a float to 1e-9 (a sum a later event's amount was taken out of: its last bits)."""
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(want, got, rel_tol=1e-12, abs_tol=1e-9)
    return want == got


def _restricted(lists: dict, level: windows.TileLevel, low: int) -> dict:
    """One level's lists restricted to the tiles with index >= ``low``."""
    keep = [i for i, index in enumerate(lists[level.index_list]) if index >= low]
    return {name: [lists[name][i] for i in keep] for name in level.lists}


@pytest.mark.parametrize("seed", [1, 2])
def test_tiles_recut_at_an_earlier_instant_are_the_row_before_it(seed: int) -> None:
    """A merchant's newest row recut at an instant ``t`` it already counts events at or after
    (``tiles_before``, those events taken out of ``t``'s tiles) holds, in every tile the newest
    row keeps, what the merchant's row just before ``t`` holds: the transaction scored again
    does not see itself nor later ones; and over ``t``'s own hour and day its windows are that
    row's."""
    view = "merchant_stats"
    events = _merchant_events(seed, 600, 3)
    newest = events[-1].us
    stamp, stored = entity_rows.newest_row(view, events)
    rng = np.random.default_rng(seed)
    instants = [e.us for e in events[-60:]] + [
        newest - int(rng.integers(0, 30 * 3_600_000_000)) for _ in range(60)
    ]
    instants += [newest - int(rng.integers(0, newest % 3_600_000_000 + 1)) for _ in range(20)]
    outputs = windows.view_outputs(view)
    counted_later = same_hour = 0
    for t in instants:
        assert stamp > t
        cut = entity_rows.tiles_before(view, stored, t, [e for e in events if e.us >= t])
        before = entity_rows.newest_row(view, [e for e in events if e.us < t])[1]
        for level in windows.TILES[view]:
            low = newest // level.unit_us - level.units
            want, got = _restricted(before, level, low), _restricted(cut, level, low)
            for name in level.lists:
                assert len(want[name]) == len(got[name]), (t, name)
                assert all(map(_near, want[name], got[name])), (t, name)
        counted_later += windows.window_row(view, stored, t) != windows.window_row(view, cut, t)
        if t // 3_600_000_000 == newest // 3_600_000_000:
            same_hour += 1
            want_row = windows.window_row(view, before, t, outputs_only=True)
            got_row = windows.window_row(view, cut, t, outputs_only=True)
            assert all(_near(want_row[o], got_row[o]) for o in outputs), t
    # The stored row counted this transaction or later ones for most instants.
    assert counted_later > 60 and same_hour >= 20


def test_tiles_recut_before_the_first_sighting_are_unknown() -> None:
    """At or before its first sighting a merchant had no row: its windows are missing (None),
    as offline, where a merchant's first transaction joins no row; after it, they are counts."""
    view = "merchant_stats"
    events = _merchant_events(3, 50, 1)
    first = events[0].us
    stored = entity_rows.newest_row(view, events)[1]
    for t, unknown in ((first, True), (first - 1, True), (first + 1, False)):
        cut = entity_rows.tiles_before(view, stored, t, [e for e in events if e.us >= t], first)
        row = windows.window_row(view, cut, t, outputs_only=True)
        assert all(v is None for v in row.values()) is unknown, (t, row)
        assert all(v is None for v in cut.values()) is unknown
