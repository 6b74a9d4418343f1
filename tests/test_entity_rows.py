"""The streamer's rows (``vigil_contracts.entity_rows.newest_row``, plain Python over one
entity's events) are the batch pipeline's (``compute_feature_tables``, vectorised over every
entity): every row of every table of generated worlds (bursts, ties at one instant, long gaps,
exact-window copies, devices and countries missing or first seen late, several currencies and
time zones), floats within 1e-9 relative, everything else exact; and each entity's newest row is
the same when given only what the streamer's history script reads (the longest window's events
and the first sighting)."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vigil.fx import fx_table
from vigil.pipeline import ENTITY_KEYS, FEATURE_TABLES, compute_feature_tables
from vigil.world import WorldConfig, generate_world
from vigil_contracts import entity_rows
from vigil_contracts.entity_history import HistoryRecord
from vigil_streamer import aggregates

T0 = datetime(2024, 3, 1, 6, tzinfo=UTC)
_US_PER_DAY = 86_400_000_000


def _world(seed: int, n_bursts: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cards = [f"c{i}" for i in range(25)]
    merchants = [f"m{i}" for i in range(8)]
    devices = [f"d{i}" for i in range(12)]
    countries = ["AU", "DE", "FR", "GB", "US", "XX", None]  # XX: no time zone (UTC)
    currencies = ["EUR", "USD", "GBP", "CHF"]
    amounts = [1.0, 2.5, 4.99, 5.0, 10.0, 10.0, 49.99, 120.0, 1234.56]
    rows: list[dict[str, Any]] = []
    for _ in range(n_bursts):
        # Bursts over ~100 days: long gaps between a card's visits, windows empty in between.
        start = T0 + timedelta(seconds=int(rng.integers(0, 100 * 86_400)))
        card = cards[int(rng.integers(len(cards)))]
        for _ in range(int(rng.integers(1, 12))):
            ts = start + timedelta(seconds=int(rng.integers(0, 6 * 3_600)))
            if rows and rng.random() < 0.15:
                ts = rows[int(rng.integers(len(rows)))]["event_timestamp"]  # a tie
            rows.append(
                {
                    "event_timestamp": ts,
                    "card_id": card if rng.random() < 0.8 else cards[int(rng.integers(25))],
                    "merchant_id": merchants[int(rng.integers(len(merchants)))],
                    "device_id": None
                    if rng.random() < 0.3
                    else devices[int(rng.integers(len(devices)))],
                    "country": countries[int(rng.integers(len(countries)))],
                    "amount": amounts[int(rng.integers(len(amounts)))]
                    if rng.random() < 0.6
                    else float(np.round(rng.uniform(0.5, 400.0), 2)),
                    "currency": currencies[int(rng.integers(len(currencies)))],
                }
            )
    # Copies exactly one window (+- 1 µs) later: every window's boundary is crossed.
    windows = list(entity_rows.WINDOWS_US.values())
    for _ in range(60):
        src = dict(rows[int(rng.integers(len(rows)))])
        w = windows[int(rng.integers(len(windows)))] + int(rng.integers(-1, 2))
        src["event_timestamp"] = src["event_timestamp"] + timedelta(microseconds=w)
        rows.append(src)
    raw = pd.DataFrame(rows)
    raw["event_timestamp"] = pd.to_datetime(raw["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    raw = raw.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # any input order
    raw.insert(0, "transaction_id", [f"tx{i:05d}" for i in range(len(raw))])
    return raw


def _fx(raw: pd.DataFrame, seed: int) -> pd.DataFrame:
    ts = raw["event_timestamp"]
    return fx_table(seed, ts.min().to_pydatetime(), ts.max().to_pydatetime())


def _records(raw: pd.DataFrame, fx: pd.DataFrame) -> list[HistoryRecord]:
    """The transactions as the streamer's histories hold them: EUR at the rate of their UTC day
    (a rate looked up per currency and day, as the streamer's FX hash gives it)."""
    rate = {
        (c, int(t.value // 1000 // _US_PER_DAY)): float(r)
        for c, t, r in zip(fx["currency"], fx["event_timestamp"], fx["eur_per_unit"], strict=True)
    }
    out = []
    for row in raw.itertuples(index=False):
        t = int(row.event_timestamp.value // 1000)
        out.append(
            HistoryRecord(
                str(row.transaction_id),
                t,
                str(row.card_id),
                str(row.merchant_id),
                row.device_id if isinstance(row.device_id, str) else None,
                row.country if isinstance(row.country, str) else None,
                float(row.amount) * rate[(str(row.currency), t // _US_PER_DAY)],
            )
        )
    return out


def _py(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _differences(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    assert list(got) == list(want)
    bad = []
    for name, w in want.items():
        g = got[name]
        if isinstance(w, float):
            if not (isinstance(g, float) and math.isclose(w, g, rel_tol=1e-9)):
                bad.append(f"{name}: {g!r} != {w!r}")
        elif type(g) is not type(w) or g != w:
            bad.append(f"{name}: {g!r} != {w!r}")
    return bad


def _pipeline_rows(
    raw: pd.DataFrame, fx: pd.DataFrame
) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
    """(view, entity, stamp µs, features) of every row of the pipeline's tables."""
    for view, table in compute_feature_tables(raw, fx_rates=fx).items():
        key = ENTITY_KEYS[view]
        stamps = table["event_timestamp"].array.asi8
        columns = {n: table[n].tolist() for n in FEATURE_TABLES[view]}
        for i, entity in enumerate(table[key].tolist()):
            yield view, entity, int(stamps[i]), {n: _py(columns[n][i]) for n in columns}


def _by_entity(records: list[HistoryRecord]) -> dict[tuple[str, str], list[entity_rows.Event]]:
    out: dict[tuple[str, str], list[entity_rows.Event]] = {}
    for r in sorted(records, key=lambda r: r.t_us):
        event = entity_rows.Event(
            r.t_us, r.amount_eur, r.card_id, r.merchant_id, r.device_id, r.country
        )
        for view, key in ENTITY_KEYS.items():
            value = getattr(r, key)
            if value is not None:
                out.setdefault((view, value), []).append(event)
    return out


def test_the_declarations_are_the_pipelines():
    assert entity_rows.FEATURE_TABLES == FEATURE_TABLES
    assert set(entity_rows.FEATURES) == set(ENTITY_KEYS)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_row_of_the_pipeline_is_newest_row_of_the_events_up_to_it(seed):
    raw = _world(seed)
    fx = _fx(raw, seed)
    events = _by_entity(_records(raw, fx))
    n = 0
    for view, entity, stamp, want in _pipeline_rows(raw, fx):
        mine = events[(view, entity)]
        upto = mine[: bisect_right([e.t_us for e in mine], stamp - entity_rows.ROW_DELAY_US)]
        got_stamp, got = entity_rows.newest_row(view, upto)
        assert got_stamp == stamp, (view, entity)
        assert _differences(want, got) == [], (view, entity, stamp)
        n += 1
    assert n > 1_000
    # The world holds what the test is about.
    assert raw.duplicated(["card_id", "event_timestamp"]).any()
    assert raw["device_id"].isna().any() and raw["country"].isna().any()
    assert raw["currency"].nunique() > 1


def _newest_from_history(view: str, events: list[entity_rows.Event]) -> tuple[int, dict[str, Any]]:
    """As the streamer reads it: the longest window's events and the first sighting only."""
    newest = events[-1].t_us
    window = [e for e in events if e.t_us > newest - entity_rows.LONGEST_WINDOW_US[view]]
    return entity_rows.newest_row(view, window, events[0].t_us)


def test_newest_rows_from_the_streamers_reads_on_a_generated_world(tmp_path):
    path = tmp_path / "transactions.parquet"
    generate_world(
        WorldConfig(seed=5, n_transactions=6_000, n_days=40, end=datetime(2024, 6, 1, tzinfo=UTC)),
        path,
    )
    raw = pd.read_parquet(path)
    fx = pd.read_parquet(tmp_path / "fx_rates.parquet")
    records = _records(raw, fx)
    events = _by_entity(records)
    newest: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    for view, entity, stamp, features in _pipeline_rows(raw, fx):
        newest[(view, entity)] = (stamp, features)  # rows are in time order per entity
    assert raw["currency"].nunique() > 1
    for (view, entity), (stamp, want) in newest.items():
        got_stamp, got = _newest_from_history(view, events[(view, entity)])
        assert got_stamp == stamp and _differences(want, got) == [], (view, entity)
    # And the streamer's entry point over a union of histories (what test_push_source uses).
    targets = [(ENTITY_KEYS[v], e) for v, e in list(newest)[::50]]
    rows = aggregates.newest_rows(records, targets)
    for key, value in targets:
        view = next(v for v, k in ENTITY_KEYS.items() if k == key)
        stamp, want = newest[(view, value)]
        assert rows[(key, value)][0] == stamp
        assert _differences(want, rows[(key, value)][1]) == []


def test_identical_amounts_have_exactly_zero_std():
    """Three equal amounts whose mean is not exactly the amount in floating point."""
    amount = 0.1 * 0.923457
    events = [entity_rows.Event(i * 1_000_000, amount, "c", "m", None, "DE") for i in range(3)]
    _, row = entity_rows.newest_row("card_stats", events)
    assert row["card_amount_std_30d"] == 0.0
