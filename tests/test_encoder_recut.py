"""A merchant's tiles cut again at a transaction its stored row already counts.

The encoder (the real app, in-process) on a private redis-server loaded as a deployment with the
streamer is (the materialized store, the seeded histories): a transaction scored at an instant
its merchant's stored row is newer than (scored again once the streamer applied it, or one that
arrived after later ones of its merchant) gets the merchant windows of the merchant's row just
before it, not counting itself nor later transactions; with no history kept, the stored tiles.
"""

from __future__ import annotations

import itertools
import math
import random
import time

import httpx
import pandas as pd
import pytest

from conftest import copy_online_store
from test_encoder import encode, encoder_settings, request_fields
from vigil.fx import FX_FILE, read_fx_table
from vigil.materialization import redis_client
from vigil.pipeline import in_base_currency
from vigil.redis_server import RedisServer
from vigil.stream_seed import seed_histories
from vigil_contracts import entity_rows, windows
from vigil_contracts.entity_history import history_key
from vigil_contracts.feature_contract import short_name
from vigil_encoder.app import create_app

VIEW = "merchant_stats"
_HOUR_US = 3_600_000_000


@pytest.fixture(scope="module")
def seeded(feature_env):
    own = RedisServer().start()
    store = redis_client(own.connection_string)
    try:
        assert copy_online_store(feature_env.redis.url, own.url) > 100
        raw = pd.read_parquet(feature_env.raw_path)
        fx = read_fx_table(feature_env.raw_path.parent / FX_FILE)
        seed_histories(store, raw, fx, feature_env.end)
        yield own, store, raw, fx
    finally:
        store.close()
        own.stop()


@pytest.fixture(scope="module")
async def client(feature_env, seeded):
    own = seeded[0]
    app = create_app(encoder_settings(feature_env, redis_url=own.url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://encoder") as c:
            yield c


def _busy_merchant(raw: pd.DataFrame) -> tuple[str, list[int]]:
    """A merchant with several transactions in the hour of its newest, and their times (µs)."""
    ts = pd.to_datetime(raw["event_timestamp"], utc=True).dt.as_unit("us").array.asi8
    frame = pd.DataFrame({"m": raw["merchant_id"], "us": ts})
    newest = frame.groupby("m")["us"].transform("max")
    last_hour = frame[frame["us"] // _HOUR_US == newest // _HOUR_US]
    counts = last_hour.groupby("m").size()
    merchant = str(counts.idxmax())
    assert counts.max() >= 2, counts.max()
    return merchant, sorted(int(t) for t in last_hour[last_hour["m"] == merchant]["us"])


def _events(raw: pd.DataFrame, fx: pd.DataFrame, merchant: str) -> list[entity_rows.Event]:
    """Every transaction of the merchant as the pipeline's tiles sum it (EUR), in time order."""
    mine = raw[raw["merchant_id"] == merchant].sort_values("event_timestamp", kind="stable")
    t_us = pd.to_datetime(mine["event_timestamp"], utc=True).dt.as_unit("us").array.asi8
    amounts = in_base_currency(mine, t_us, fx)
    return [
        entity_rows.event(int(t), float(a), card, merchant, device, country)
        for t, a, card, device, country in zip(
            t_us,
            amounts,
            mine["card_id"],
            mine["device_id"].where(mine["device_id"].notna(), None),
            mine["country"].where(mine["country"].notna(), None),
            strict=True,
        )
    ]


def _row(raw: pd.DataFrame, merchant: str, t_us: int) -> dict:
    pick = raw[raw["merchant_id"] == merchant].iloc[0]
    request = request_fields(random.Random(3), time.time())
    request["txn_epoch"] = t_us / 1e6
    return {
        "entities": {
            "card_id": pick["card_id"],
            "merchant_id": merchant,
            "device_id": "d_unknown",
            "currency": pick["currency"],
        },
        "request": request,
    }


async def _merchant_windows(client, rows: list[dict]) -> list[dict[str, float | None]]:
    response = await encode(client, rows)
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = set(windows.view_outputs(VIEW))
    return [
        {
            short_name(n): v
            for n, v in zip(body["feature_names"], row["values"], strict=True)
            if short_name(n) in outputs
        }
        for row in body["rows"]
    ]


def _expected(lists: dict, t_us: int) -> dict[str, float | None]:
    out = windows.window_row(VIEW, lists, t_us, outputs_only=True)
    return {k: None if v is None else float(v) for k, v in out.items()}


def _close(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(
        (got[k] is None and want[k] is None)
        or (
            got[k] is not None
            and want[k] is not None
            and math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-12)
        )
        for k in want
    )


async def _recut_count(client, source: str) -> float:
    text = (await client.get("/metrics")).text
    line = f'vigil_encoder_tiles_recut_total{{source="{source}",view="{VIEW}"}}'
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


async def test_a_merchant_row_newer_than_the_transaction_is_cut_again_at_it(client, seeded):
    _, _, raw, fx = seeded
    merchant, times = _busy_merchant(raw)
    events = _events(raw, fx, merchant)
    stored = entity_rows.newest_row(VIEW, events)[1]  # what the materialized row holds
    # The merchant's own transactions of its newest hour, each scored again, and instants
    # between them; one live row (after the newest) beside them in the batch.
    instants = [*times, *[(a + b) // 2 for a, b in itertools.pairwise(times)]]
    live = times[-1] + 60_000_000
    rows = [_row(raw, merchant, t) for t in [*instants, live]]
    recut_before = await _recut_count(client, "history")

    got = await _merchant_windows(client, rows)
    differ = 0
    for t, vector in zip(instants, got, strict=False):
        before = entity_rows.newest_row(VIEW, [e for e in events if e.us < t])[1]
        assert _close(vector, _expected(before, t)), (t, vector, _expected(before, t))
        differ += not _close(_expected(stored, t), _expected(before, t))
    assert differ == len(instants)  # the stored row counts each of them, or later ones
    assert _close(got[-1], _expected(stored, live))  # newer than the row: as stored
    assert await _recut_count(client, "history") - recut_before == len(instants)

    # One at a time (the single-row path) alike.
    [single] = await _merchant_windows(client, [rows[0]])
    assert single == got[0]

    # Its first transaction scored again: the merchant was unknown then (no row before it).
    [first] = await _merchant_windows(client, [_row(raw, merchant, events[0].us)])
    assert first == dict.fromkeys(windows.view_outputs(VIEW))


async def test_without_a_history_the_stored_tiles_are_served(client, seeded):
    _, store, raw, fx = seeded
    merchant, times = _busy_merchant(raw)
    events = _events(raw, fx, merchant)
    stored = entity_rows.newest_row(VIEW, events)[1]
    key = history_key("merchant_id", merchant)
    kept = store.dump(key)
    store.delete(key)
    try:
        before = await _recut_count(client, "no_history")
        [got] = await _merchant_windows(client, [_row(raw, merchant, times[0])])
        assert _close(got, _expected(stored, times[0]))
        assert await _recut_count(client, "no_history") - before == 1
    finally:
        store.restore(key, 0, kept, replace=True)


async def test_a_history_that_cannot_say_serves_the_stored_tiles(client, seeded, monkeypatch):
    """More events at or after the instant than the bound, or an unreadable one: the stored
    tiles are served (as with no history kept), counted by why, never an error."""
    from vigil_encoder import dataplane

    _, store, raw, fx = seeded
    merchant, times = _busy_merchant(raw)
    stored = entity_rows.newest_row(VIEW, _events(raw, fx, merchant))[1]
    row = _row(raw, merchant, times[0])  # the row holds times[0] and times[1] at or after it

    monkeypatch.setattr(dataplane, "RECUT_MAX_EVENTS", 1)
    monkeypatch.setattr(dataplane, "RECUT_MIN_EVENTS", 1)
    before = await _recut_count(client, "over_cap")
    [got] = await _merchant_windows(client, [row])
    assert _close(got, _expected(stored, times[0]))
    assert await _recut_count(client, "over_cap") - before == 1
    monkeypatch.undo()

    key = history_key("merchant_id", merchant)
    store.zadd(key, {b"not a history record": times[-1]})
    try:
        before = await _recut_count(client, "error")
        [got] = await _merchant_windows(client, [row])
        assert _close(got, _expected(stored, times[0]))
        assert await _recut_count(client, "error") - before == 1
    finally:
        store.zrem(key, b"not a history record")
    [got] = await _merchant_windows(client, [row])  # readable again: cut
    assert not _close(got, _expected(stored, times[0]))
