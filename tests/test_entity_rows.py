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
