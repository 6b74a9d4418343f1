"""The decision stream's two ends on real redis-servers: the gateway's event spool (batches,
Redis away and back, a resent batch, the bound, the drain) and the streamer's consumer (rows
equal to the batch pipeline's, out of order within the lateness, duplicates, too-late and
malformed events, newer-wins against a newer stored row), and the Feast layout it writes held
byte for byte to what Feast's own materialization wrote."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import redis
import redis.asyncio as aioredis

from vigil.pipeline import ENTITY_KEYS, FEATURE_TABLES, FEATURE_TYPES
from vigil.redis_server import RedisServer
from vigil.replay import compare_rows, expected_rows, online_rows
from vigil.stream_seed import seed_histories
from vigil_contracts.api import ScoreResponse, Transaction
from vigil_contracts.decision_events import (
    CONTRACTS_KEY,
    SCHEMA_VERSION,
    STREAM_KEY,
    DecisionEvent,
    EventFeatures,
    contract_names,
)
from vigil_contracts.feature_contract import feature_contract_hash
from vigil_contracts.online_markers import marker_key
from vigil_gateway.context import DecisionTrace
from vigil_gateway.encoder_client import EncodedVector, EncodedVectors
from vigil_gateway.events import EventSpool, build_event
from vigil_gateway.metrics import GatewayMetrics
from vigil_streamer import feast_layout
from vigil_streamer.consumer import Consumer
from vigil_streamer.metrics import StreamerMetrics
from vigil_streamer.settings import StreamerSettings


@pytest.fixture()
def server():
    own = RedisServer().start()
    yield own
    own.stop()


def _transaction(
    i: int,
    when: datetime,
    card: str = "c1",
    merchant: str = "m1",
    device: str | None = "d1",
    amount: float = 10.0,
) -> Transaction:
    body = {
        "transaction_id": f"t{i}",
        "card_id": card,
        "merchant_id": merchant,
        "amount": amount,
        "currency": "EUR",
        "timestamp": when.isoformat(),
        "channel": "ecom",
        "country": "FR",
    }
    if device is not None:
        body["device_id"] = device
    return Transaction.model_validate(body)


def _answer(t: Transaction, request_id: str = "r1") -> ScoreResponse:
    return ScoreResponse.model_validate(
        {
            "transaction_id": t.transaction_id,
            "label": "not_fraud",
            "score": 0.01,
            "reasons": [{"code": "NO_RISK_SIGNAL", "text": "none"}],
            "model": {"name": "fraud_detector", "version": "1"},
            "degraded": False,
            "request_id": request_id,
        }
    )


_NAMES = ["card_stats__card_txn_count_1h", "request_features__txn_amount"]


def _register_names(client: redis.Redis) -> None:
    """Register the test vectors' feature names beside the stream, as the gateway does."""
    client.hset(CONTRACTS_KEY, feature_contract_hash(_NAMES), json.dumps(_NAMES))


def _trace(transactions: list[Transaction]) -> DecisionTrace:
    names = _NAMES
    rows = [
        EncodedVector([1.0, t.amount], [False, False], [False, False], [3.0, 0.0])
        for t in transactions
    ]
    trace = DecisionTrace(
        started=time.perf_counter(),
        encoded=EncodedVectors("svc", names, feature_contract_hash(names), rows),
        encode_ms=1.0,
        predict_ms=1.0,
    )
    trace.finished = time.perf_counter()
    return trace


def test_an_event_says_which_values_are_missing_or_stale_by_position() -> None:
    """Version 2 lists the positions of the missing and stale values (most vectors have none:
    two empty lists instead of two flags per value); version 1's flags read the same."""
    t = _transaction(1, datetime.now(UTC))
    trace = _trace([t])
    assert trace.encoded is not None
    trace.encoded.rows[0] = EncodedVector([None, 3.0], [True, False], [True, True], [None, 1.0])
    _, body = build_event((_answer(t), t, 0, "r1", trace, time.time(), "k1"))
    features = DecisionEvent.model_validate_json(body).features
    assert features is not None and features.values == [None, 3.0]
    assert (features.missing_at, features.stale_at) == ([0], [0, 1])
    assert features.flags() == ([True, False], [True, True])
    v1 = EventFeatures.model_validate(
        {
            "feature_service": "svc",
            "feature_contract": "c",
            "names": _NAMES,
            "values": [None, 3.0],
            "missing": [True, False],
            "stale": [True, True],
        }
    )
    assert v1.flags() == features.flags()


def _spool(url: str, metrics: GatewayMetrics, **kw) -> EventSpool:
    client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return EventSpool(
        client,
        metrics,
        stream=STREAM_KEY,
        spool_max=kw.get("spool_max", 100),
        batch_max=kw.get("batch_max", 10),
        maxlen=10_000,
        dedupe_ttl_s=60,
    )


def _count(metrics: GatewayMetrics, outcome: str) -> float:
    return metrics.events.labels(outcome)._value.get()


def _registered(url: str, contract: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return contract_names(contract, client.hget(CONTRACTS_KEY, contract))
    finally:
        client.close()


def _entries(url: str) -> list[DecisionEvent]:
    client = redis.Redis.from_url(url)
    try:
        return [
            DecisionEvent.model_validate_json(f[b"event"]) for _, f in client.xrange(STREAM_KEY)
        ]
    finally:
        client.close()


async def _until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_events_reach_the_stream_once_across_an_outage(server):
    metrics = GatewayMetrics()
    spool = _spool(server.url, metrics)
    task = asyncio.create_task(spool.run())
    now = datetime.now(UTC) - timedelta(minutes=5)
    txns = [_transaction(i, now + timedelta(seconds=i)) for i in range(3)]
    spool.put([_answer(t) for t in txns], txns, _trace(txns), "r1", "k1")
    await _until(lambda: len(_entries(server.url)) == 3)
    event = _entries(server.url)[0]
    assert event.schema_version == 2 and event.event_id == "t0\x1fr1" and event.request_id == "r1"
    assert event.entities == {"card_id": "c1", "merchant_id": "m1", "device_id": "d1"}
    assert event.features is not None and event.features.values == [1.0, 10.0]
    # The names are not in the event but registered beside the stream, under the contract.
    assert event.features.names is None
    names = _NAMES
    assert _registered(server.url, event.features.feature_contract) == names
    assert event.features.missing_at == [] and event.features.stale_at == []
    assert event.features.flags() == ([False, False], [False, False])
    assert event.label == "not_fraud"

    server.stop()  # Redis away: events wait in the spool
    more = [_transaction(10 + i, now + timedelta(seconds=10 + i)) for i in range(5)]
    spool.put([_answer(t, "r2") for t in more], more, _trace(more), "r2", "k1")
    await _until(lambda: metrics.events_send_errors._value.get() >= 1)
    assert len(spool) == 5
    server.start()  # same port, empty
    await _until(lambda: len(spool) == 0)
    assert sorted(e.transaction.transaction_id for e in _entries(server.url)) == [
        f"t1{i}" for i in range(5)
    ]
    # Redis lost the contract's names with the rest: the spool found out and sent them again.
    assert _registered(server.url, event.features.feature_contract) == names

    # A batch whose reply was lost is sent again: nothing is added twice.
    spool.put([_answer(t, "r2") for t in more], more, _trace(more), "r2", "k1")
    await _until(lambda: len(spool) == 0)
    assert len(_entries(server.url)) == 5 and _count(metrics, "duplicate") == 5
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_event_sender_outlives_a_failure_that_is_not_redis(server, monkeypatch):
    """A bug in a send (not a Redis error) is logged and counted, the events stay spooled and
    go out on the next try: the sender never dies and leaves the spool to fill."""
    metrics = GatewayMetrics()
    spool = _spool(server.url, metrics)
    real, failures = spool._append, [RuntimeError("a bug")]

    async def append(**kw):
        if failures:
            raise failures.pop()
        return await real(**kw)

    monkeypatch.setattr(spool, "_append", append)
    task = asyncio.create_task(spool.run())
    now = datetime.now(UTC) - timedelta(minutes=5)
    txns = [_transaction(i, now + timedelta(seconds=i)) for i in range(3)]
    spool.put([_answer(t) for t in txns], txns, _trace(txns), "r1", "k1")
    await _until(lambda: len(_entries(server.url)) == 3)
    assert metrics.events_send_errors._value.get() == 1 and len(spool) == 0
    assert not task.done()
    spool.close()
    await task


async def test_a_full_spool_drops_and_counts_and_a_drain_sends_what_it_holds(server):
    metrics = GatewayMetrics()
    spool = _spool(server.url, metrics, spool_max=4)
    now = datetime.now(UTC) - timedelta(minutes=5)
    txns = [_transaction(i, now + timedelta(seconds=i)) for i in range(6)]
    spool.put([_answer(t) for t in txns], txns, _trace(txns), "r1", "k1")
    assert len(spool) == 4 and _count(metrics, "dropped") == 2
    await spool.drain(5.0)  # a graceful stop sends what is spooled
    assert len(spool) == 0 and len(_entries(server.url)) == 4
    server.stop()
    spool.put([_answer(t, "r9") for t in txns[:2]], txns[:2], _trace(txns[:2]), "r9", "k1")
    await spool.drain(0.3)
    assert _count(metrics, "lost_at_shutdown") == 2


# --- the streamer ---------------------------------------------------------------------------
def _settings(url: str, **kw) -> StreamerSettings:
    kw.setdefault("claim_idle_s", 0.2)
    return StreamerSettings(redis_url=url, consumer="test-1", block_ms=50, **kw)


def _raw(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        rows,
        columns=[
            "transaction_id",
            "event_timestamp",
            "card_id",
            "merchant_id",
            "device_id",
            "country",
            "amount",
            "currency",
        ],
    ).assign(event_timestamp=lambda f: pd.to_datetime(f["event_timestamp"], utc=True))


def _fields(t: Transaction, request_id: str) -> dict[bytes, bytes]:
    """The stream entry's fields of ``t``'s decision event, as the gateway writes them."""
    eid, body = build_event(
        (_answer(t, request_id), t, 0, request_id, _trace([t]), time.time(), "k1")
    )
    return {b"id": eid.encode(), b"v": str(SCHEMA_VERSION).encode(), b"event": body}


def _publish(url: str, transactions: list[Transaction], request_id: str, version: int = 2) -> None:
    """Append the decision events of ``transactions``, as the gateway writes them (version 2:
    the feature names registered beside the stream), or as version 1 wrote them (names in each
    event)."""
    client = redis.Redis.from_url(url)
    try:
        for t in transactions:
            fields = _fields(t, request_id)
            if version == 1:
                event = json.loads(fields[b"event"])
                event["schema_version"] = 1
                event["features"]["names"] = _NAMES
                fields = {**fields, b"v": b"1", b"event": json.dumps(event).encode()}
            else:
                _register_names(client)
            client.xadd(STREAM_KEY, fields)
    finally:
        client.close()


def _as_raw(transactions: list[Transaction]) -> list[tuple]:
    return [
        (
            t.transaction_id,
            t.timestamp,
            t.card_id,
            t.merchant_id,
            t.device_id,
            t.country,
            t.amount,
            t.currency,
        )
        for t in transactions
    ]


async def _consumed(url: str, settings: StreamerSettings, metrics: StreamerMetrics):
    client = aioredis.Redis.from_url(url)
    consumer = Consumer(client, settings, metrics)
    task = asyncio.create_task(consumer.run())
    sync = redis.Redis.from_url(url)

    def done() -> bool:
        if not sync.exists(STREAM_KEY):
            return False
        groups = sync.xinfo_groups(STREAM_KEY)
        return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0

    try:
        await _until(done)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        sync.close()


def _check_rows(url: str, raw: pd.DataFrame, targets: list[tuple[str, str]]) -> None:
    client = redis.Redis.from_url(url)
    try:
        got = online_rows(client, "vigil", targets)
    finally:
        client.close()
    want = expected_rows(raw, None, datetime.now(UTC) + timedelta(days=1), targets)
    for target in targets:
        assert compare_rows(want[target], got[target]) == [], target


async def test_the_streamer_keeps_rows_equal_to_the_batch_pipeline(server):
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    history = [
        _transaction(
            100 + i,
            base - timedelta(days=40 - i),
            card="c1",
            merchant=f"m{i % 3}",
            device="d1" if i % 2 else "d2",
            amount=5.0 + i,
        )
        for i in range(40)
    ]
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw(_as_raw(history)), None, base)
    live = [
        _transaction(
            i,
            base + timedelta(minutes=4 * i),
            card="c1" if i % 3 else "c2",
            merchant=f"m{i % 3}",
            device=None if i == 4 else "d1",
            amount=3.0 + i,
        )
        for i in range(12)
    ]
    # Out of order within the lateness: the second half first, written by a version-1 gateway.
    _publish(server.url, live[6:], "r1", version=1)
    _publish(server.url, live[:6], "r1")
    _publish(server.url, live[:3], "r1")  # redelivered event ids
    _publish(server.url, live[3:5], "r2")  # the same transactions decided again (a rescore)
    client.xadd(STREAM_KEY, {"id": "junk", "v": 1, "event": b"{not json"})
    client.xadd(STREAM_KEY, {"id": "future", "v": 99, "event": b"{}"})
    metrics = StreamerMetrics()
    await _consumed(server.url, _settings(server.url, allowed_lateness_s=3600), metrics)
    targets = [
        ("card_id", "c1"),
        ("card_id", "c2"),
        ("merchant_id", "m0"),
        ("merchant_id", "m1"),
        ("merchant_id", "m2"),
        ("device_id", "d1"),
    ]
    _check_rows(server.url, _raw(_as_raw(history + live)), targets)
    # Duplicates: the three event ids delivered again and the two transactions decided again.
    assert metrics.events.labels("duplicate")._value.get() == 5
    dead = client.xrange("vigil:decisions:dead")
    reasons = sorted(f[b"reason"].decode() for _, f in dead)
    assert len(reasons) == 2 and "unknown schema version '99'" in reasons
    assert any(r.startswith("invalid event") for r in reasons)

    # Too late (older than the card's newest by more than the lateness): counted, left out.
    late = _transaction(999, base - timedelta(hours=3), card="c1", merchant="m9", device=None)
    _publish(server.url, [late], "r3")
    metrics = StreamerMetrics()
    await _consumed(server.url, _settings(server.url, allowed_lateness_s=3600), metrics)
    assert metrics.events.labels("late")._value.get() >= 1
    _check_rows(server.url, _raw(_as_raw(history + live)), [("card_id", "c1")])
    client.close()


@pytest.mark.parametrize("held", [20_000, 0], ids=["windows-held", "windows-read-back"])
async def test_ties_the_cap_late_arrivals_and_a_first_sighting_match_the_batch_pipeline(
    server, held
):
    """Rows built from the history script's window: two transactions of one card at one instant
    (ordered by transaction id, as the batch frame here), a merchant whose 7 days hold more than
    the event cap (its tiles count them all), arrivals out of order within the lateness, a
    device first seen live. In batches of 3, so that a later batch builds rows from the windows
    the streamer held (or, with none held, from windows read back): both the same rows."""
    from vigil_contracts.windows import EVENT_CAP

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    history = [
        _transaction(
            1000 + i,
            base - timedelta(days=6) + timedelta(seconds=30 * i),
            card=f"c{i % 5}",
            merchant="mcap",
            device=None if i % 3 == 0 else f"d{i % 4}",
            amount=1.0 + (i % 17) / 4,
        )
        for i in range(EVENT_CAP + 20)
    ]
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw(_as_raw(history)), None, base)
    tie = base + timedelta(minutes=10)
    live = [
        _transaction(2001, tie, card="c1", merchant="mcap", device="d1", amount=7.0),
        _transaction(2002, tie, card="c1", merchant="mcap", device="dnew", amount=2.0),
        _transaction(2003, tie + timedelta(minutes=5), card="c2", merchant="mcap", amount=3.5),
        _transaction(2004, tie - timedelta(minutes=20), card="c1", merchant="m2", device="dnew"),
        _transaction(2005, tie + timedelta(minutes=1), card="c3", merchant="mcap", device=None),
    ]
    # The newest first, then the older ones (within the lateness), the tie split across batches.
    _publish(server.url, [live[2], live[1], live[4]], "r1")
    _publish(server.url, [live[3], live[0]], "r1")
    metrics = StreamerMetrics()
    await _consumed(
        server.url,
        _settings(server.url, allowed_lateness_s=3600, batch_max=3, window_cache_events=held),
        metrics,
    )
    assert metrics.events.labels("late")._value.get() == 0
    assert (metrics.windows.labels("held")._value.get() > 0) == (held > 0)
    raw = _raw(_as_raw(history + live)).sort_values(["event_timestamp", "transaction_id"])
    targets = [
        ("card_id", "c1"),
        ("card_id", "c2"),
        ("card_id", "c3"),
        ("merchant_id", "mcap"),
        ("merchant_id", "m2"),
        ("device_id", "d1"),
        ("device_id", "dnew"),
    ]
    _check_rows(server.url, raw.reset_index(drop=True), targets)
    rows = online_rows(client, "vigil", [("merchant_id", "mcap"), ("device_id", "dnew")])
    assert sum(rows[("merchant_id", "mcap")]["merchant_day_count"]) == EVENT_CAP + 24  # no cap
    first = rows[("device_id", "dnew")]["device_first_seen_epoch"]
    assert first == (tie - timedelta(minutes=20)).timestamp()
    client.close()


def _entry(t: Transaction, request_id: str) -> tuple[bytes, dict[bytes, bytes]]:
    """A read entry of ``t``'s decision event, for ``Consumer.process``."""
    return b"0-1", _fields(t, request_id)


async def test_a_held_window_is_used_only_at_the_version_it_was_read_at(server):
    """The streamer holds each card's and device's last window, so that a batch touching it
    again need not read it back. Another replica's change in between, even after Redis was
    rolled back to a snapshot (the history back at a version the window was not held for, then
    moved on by another transaction), must not pass for the held one: each change moves the
    version by a random step, so a version never names two states. Here replica A holds c1's
    window, the history is rolled back, replica B adds another transaction, and A's next batch
    reads the window back: the rows equal the batch pipeline's over what the history holds."""
    from vigil_contracts.entity_history import history_key, version_key

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    history = [
        _transaction(100 + i, base - timedelta(hours=30 - i), card="c1", device="d1", amount=5.0)
        for i in range(6)
    ]
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw(_as_raw(history)), None, base)
    _register_names(client)
    keys = [
        k(join_key, value)
        for join_key, value in (("card_id", "c1"), ("device_id", "d1"))
        for k in (history_key, version_key)
    ]
    snapshot = {k: client.dump(k) for k in keys}
    a, b, c = (
        _transaction(
            200 + i,
            base + timedelta(minutes=10 * (i + 1)),
            card="c1",
            device="d1",
            amount=[700.0, 12.0, 40.0][i],
        )
        for i in range(3)
    )
    settings = _settings(server.url, allowed_lateness_s=3600)
    conn_a, conn_b = aioredis.Redis.from_url(server.url), aioredis.Redis.from_url(server.url)
    metrics_a = StreamerMetrics()
    replica_a = Consumer(conn_a, settings, metrics_a)
    replica_b = Consumer(
        conn_b, settings.model_copy(update={"consumer": "test-2"}), StreamerMetrics()
    )
    try:
        await replica_a.process([_entry(a, "ra")])  # A holds c1 and d1 with `a`
        for k, dumped in snapshot.items():  # rolled back: `a` gone, the seeded versions back
            client.restore(k, 0, dumped, replace=True)
        await replica_b.process([_entry(b, "rb")])  # another replica moves them on with `b`
        await replica_a.process([_entry(c, "rc")])
        assert metrics_a.windows.labels("held")._value.get() == 0
        assert metrics_a.windows.labels("read")._value.get() == 4  # c1 and d1, twice
        _check_rows(
            server.url, _raw(_as_raw([*history, b, c])), [("card_id", "c1"), ("device_id", "d1")]
        )
        # With the history moved only by A, the next batch builds from the held windows.
        d = _transaction(300, base + timedelta(minutes=50), card="c1", device="d1", amount=3.0)
        await replica_a.process([_entry(d, "rd")])
        assert metrics_a.windows.labels("held")._value.get() == 2
        _check_rows(
            server.url, _raw(_as_raw([*history, b, c, d])), [("card_id", "c1"), ("device_id", "d1")]
        )
    finally:
        await conn_a.aclose()
        await conn_b.aclose()
        client.close()


async def test_a_backlog_is_read_in_short_reads_and_applied_in_batches(server):
    """Behind, the streamer reads on in reads of at most ``read_count`` entries until it holds
    ``batch_max`` (Redis answers each read whole, other clients waiting), then applies them
    together; rows equal the batch pipeline's."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw([]), None, base)
    live = [
        _transaction(i, base + timedelta(minutes=i), card=f"c{i % 4}", merchant=f"m{i % 2}")
        for i in range(25)
    ]
    _publish(server.url, live, "r1")
    client.config_resetstat()
    metrics = StreamerMetrics()
    await _consumed(server.url, _settings(server.url, batch_max=10, read_count=3), metrics)
    sizes = metrics.batch_size.collect()[0].samples
    count = next(x.value for x in sizes if x.name.endswith("_count"))
    total = next(x.value for x in sizes if x.name.endswith("_sum"))
    assert (count, total) == (3, 25)  # 10 (3 + 3 + 3 + 1), 10, then 5 (3 + 2: a short read)
    reads = client.info("commandstats")["cmdstat_xreadgroup"]["calls"]
    assert reads >= 10  # no read of more than 3
    targets = [("card_id", f"c{i}") for i in range(4)] + [
        ("merchant_id", "m0"),
        ("merchant_id", "m1"),
    ]
    _check_rows(server.url, _raw(_as_raw(live)), targets)
    client.close()


async def test_a_merchants_tiles_are_running_sums_kept_to_what_a_row_reads(server):
    """A merchant streamed live over ten days (its 8 days of day tiles roll over, hour tiles too)
    with nothing seeded: the streamer adds each transaction to its tiles and never reads its
    events back, its row equals the batch pipeline's at every step, and the kept sums never
    outgrow what a row reads (25 hour tiles and 8 day tiles at most, 4 sums each), whatever its
    traffic."""
    from vigil_contracts.entity_history import tiles_key

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=11)
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw([]), None, base)
    sent: list[Transaction] = []
    for day in range(10):
        batch = [
            _transaction(
                10_000 * day + i,
                base + timedelta(days=day, minutes=37 * i),
                card=f"c{i % 7}",
                merchant="mbusy",
                device=None,
                amount=[2.5, 40.0, 0.1, 999.99][i % 4] + day,
            )
            for i in range(30)
        ]
        _publish(server.url, batch[::-1], f"r{day}")  # newest first: within the lateness
        sent += batch
        await _consumed(
            server.url,
            _settings(server.url, allowed_lateness_s=86_400, batch_max=7),
            StreamerMetrics(),
        )
        _check_rows(server.url, _raw(_as_raw(sent)), [("merchant_id", "mbusy")])
        fields = client.hkeys(tiles_key("merchant_id", "mbusy"))
        hours = {f for f in fields if f.startswith(b"0:")}
        days = {f for f in fields if f.startswith(b"1:")}
        assert len(hours) <= 25 * 4 and len(days) <= 8 * 4, (day, len(hours), len(days))
    assert len(days) == 8 * 4  # ten days streamed, the oldest dropped
    client.close()


async def test_a_busy_merchants_share_of_a_batch_takes_several_short_calls(server, monkeypatch):
    """One batch holding 40 transactions of one merchant: its adds go in calls of at most
    ``_TILE_CALL_MAX`` (16) transactions, so that no call holds Redis long, and the row is the
    same as one call's: the merchant's earlier transactions decided again are duplicates, and a
    last call whose transactions are all too late (older than the newest by more than the
    lateness) still answers the tiles the row is built from."""
    from vigil_streamer import consumer as consumer_module

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    history = [
        _transaction(i, base - timedelta(hours=30 - i), card=f"h{i}", merchant="mhot", device=None)
        for i in range(6)
    ]
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw(_as_raw(history)), None, base)
    fresh = [
        _transaction(
            100 + i,
            base + timedelta(hours=6, minutes=-i),
            card=f"c{i}",
            merchant="mhot",
            device=None,
            amount=[2.5, 40.0, 0.1, 999.99][i % 4],
        )
        for i in range(27)
    ]
    late = [
        _transaction(
            200 + i, base + timedelta(minutes=i), card=f"l{i}", merchant="mhot", device=None
        )
        for i in range(13)
    ]
    _publish(server.url, fresh[:5], "first")
    await _consumed(server.url, _settings(server.url), StreamerMetrics())
    calls: list[int] = []
    script = consumer_module._Scripted.script

    def counted(self, which, keys, args):  # the merchant's tiles calls: transactions in each
        if which.script is consumer_module._ADD_TILES:
            calls.append((len(args) - 6) // 7)  # member, t, 2 tile indexes, 3 sums each
        script(self, which, keys, args)

    monkeypatch.setattr(consumer_module._Scripted, "script", counted)
    # 27 fresh (the first 5 decided again), then 13 older than the newest by over an hour: the
    # last call's transactions are all too late.
    _publish(server.url, fresh[:5] + fresh[5:] + late, "again")
    metrics = StreamerMetrics()
    await _consumed(server.url, _settings(server.url, batch_max=200), metrics)
    assert calls == [16, 16, 8], calls
    assert metrics.events.labels("late")._value.get() == 13
    assert metrics.events.labels("duplicate")._value.get() == 5
    assert metrics.rows.labels("merchant_stats", "written")._value.get() == 1
    merchant = _raw(_as_raw(history + fresh))
    _check_rows(server.url, merchant, [("merchant_id", "mhot")])
    _check_rows(server.url, _raw(_as_raw(late)), [("card_id", "l12")])
    client.close()


async def test_a_stopped_replicas_unacknowledged_events_are_taken_over_in_one_batch(server):
    """A replica read 450 events and stopped before acknowledging them: once they have been
    idle ``claim_idle_s``, another replica takes them all over in one claim cycle (claims of a
    read's size, through the pending list) and applies them as one batch; nothing is left
    pending, and the rows are the batch pipeline's."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw([]), None, base)
    live = [
        _transaction(i, base + timedelta(seconds=20 * i), card=f"c{i % 9}", merchant=f"m{i % 4}")
        for i in range(450)
    ]
    _publish(server.url, live, "r1")
    client.xgroup_create(STREAM_KEY, "streamer", id="0")
    read = client.xreadgroup("streamer", "stopped-1", {STREAM_KEY: ">"}, count=1000)
    assert len(read[0][1]) == 450  # read, never acknowledged: the replica stopped
    await asyncio.sleep(0.3)  # idle past claim_idle_s
    metrics = StreamerMetrics()
    await _consumed(server.url, _settings(server.url, read_count=200, batch_max=4000), metrics)
    assert metrics.batch_size._sum.get() == 450
    assert sum(b.get() for b in metrics.batch_size._buckets) == 1  # one batch
    assert client.xpending(STREAM_KEY, "streamer")["pending"] == 0
    _check_rows(server.url, _raw(_as_raw(live)), [("card_id", "c1"), ("merchant_id", "m2")])
    client.close()


async def test_consumers_gone_from_the_group_are_removed_those_holding_events_kept(server):
    """Each Kubernetes pod is a new consumer name: a consumer with nothing pending that has not
    read for ``forget_consumers_after_s`` is removed from the group; one still holding events
    is kept (until they are taken over), and so is this replica."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw([]), None, base)
    _publish(server.url, [_transaction(i, base + timedelta(minutes=i)) for i in range(3)], "r1")
    client.xgroup_create(STREAM_KEY, "streamer", id="0")
    (_, (done,)), *_ = client.xreadgroup("streamer", "gone-1", {STREAM_KEY: ">"}, count=1)
    client.xack(STREAM_KEY, "streamer", done[0])  # gone-1: read, acknowledged, gone
    client.xreadgroup("streamer", "holding-1", {STREAM_KEY: ">"}, count=1)  # never acknowledged
    await asyncio.sleep(0.3)
    settings = _settings(server.url, forget_consumers_after_s=0.2, claim_idle_s=60)
    own = aioredis.Redis.from_url(server.url)
    consumer = Consumer(own, settings, StreamerMetrics())
    await consumer._prepare()
    await consumer._consume()  # one pass: the claim cycle, then a read
    names = {c["name"] for c in client.xinfo_consumers(STREAM_KEY, "streamer")}
    assert names == {b"holding-1", b"test-1"}, names
    await own.aclose()
    client.close()


@pytest.mark.parametrize("held", [20_000, 0], ids=["windows-held", "windows-read-back"])
async def test_a_busy_cards_share_of_a_batch_takes_several_short_calls(server, monkeypatch, held):
    """150 transactions of one card (and one device) in one batch, after a batch that left its
    window held (or not): they go in calls of at most ``_EVENT_CALL_MAX`` (64), the last
    reading the window back; the rows are the batch pipeline's, duplicates and the too late
    counted as with one call."""
    from vigil_streamer import consumer as consumer_module

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw([]), None, base)
    first = [
        _transaction(i, base + timedelta(minutes=i), card="chot", device="dhot") for i in range(5)
    ]
    busy = [
        _transaction(
            100 + i, base + timedelta(hours=3, seconds=-20 * i), card="chot", device="dhot"
        )
        for i in range(145)
    ]
    late = [_transaction(300, base + timedelta(minutes=30), card="chot", device="dhot")]
    settings = _settings(server.url, batch_max=400, window_cache_events=held)
    await _consumed_once(server.url, first, "first", settings)
    calls: list[int] = []
    script = consumer_module._Scripted.script

    def counted(self, which, keys, args):
        if which.script is consumer_module._ADD_READ and "chot" in str(keys[0]):
            calls.append((len(args) - 8) // 2)
        script(self, which, keys, args)

    monkeypatch.setattr(consumer_module._Scripted, "script", counted)
    metrics = StreamerMetrics()
    _publish(server.url, first[:4] + busy + late, "again")  # 4 decided again, 1 too late
    await _consumed(server.url, settings, metrics)
    assert calls == [64, 64, 22], calls
    assert metrics.events.labels("duplicate")._value.get() == 4
    assert metrics.events.labels("late")._value.get() == 3  # for its card, device, merchant
    raw = _raw(_as_raw(first + busy))
    _check_rows(server.url, raw, [("card_id", "chot"), ("device_id", "dhot")])
    client.close()


async def _consumed_once(url: str, transactions, request_id: str, settings) -> None:
    _publish(url, transactions, request_id)
    await _consumed(url, settings, StreamerMetrics())


async def test_a_newer_stored_row_is_never_overwritten(server):
    client = redis.Redis.from_url(server.url)
    write = client.register_script(feast_layout.WRITE_NEWER)
    key = feast_layout.redis_key("card_id", "c1", "vigil")
    features = {"card_event_us": [1]}
    dtypes = {"card_event_us": "Array(Int64)"}
    assert (
        write(
            keys=[key, "w"],
            args=feast_layout.row_args("card_stats", features, dtypes, 2_000_000, 1, 60_000),
        )
        == 1
    )
    older = feast_layout.row_args(
        "card_stats", {"card_event_us": [7]}, dtypes, 1_999_999, 5, 60_000
    )
    assert write(keys=[key, "w"], args=older) == 0
    same_older_snapshot = feast_layout.row_args(
        "card_stats", {"card_event_us": [7]}, dtypes, 2_000_000, 0, 60_000
    )
    assert write(keys=[key, "w"], args=same_older_snapshot) == 0
    same_newer_snapshot = feast_layout.row_args(
        "card_stats", {"card_event_us": [2]}, dtypes, 2_000_000, 2, 60_000
    )
    assert write(keys=[key, "w"], args=same_newer_snapshot) == 1
    assert online_rows(client, "vigil", [("card_id", "c1")])[("card_id", "c1")][
        "card_event_us"
    ] == [2]
    client.close()


async def test_a_dead_letter_keeps_its_event_and_is_applied_once_requeued(server):
    """An event the streamer cannot convert to EUR (a currency without a dated rate, no vector
    to fall back on) goes to the dead-letter stream with the reason and its own fields; `vigil
    dead-letters list` shows it, and once the rate is loaded `vigil dead-letters requeue --all`
    sends it again: applied, the dead-letter stream empty. An entry without its event (as an
    older streamer wrote them) is listed as such and left."""
    from vigil.cli import main as vigil_main
    from vigil_contracts.entity_history import FX_KEY, fx_field

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    client = redis.Redis.from_url(server.url)
    seed_histories(
        client, _raw(_as_raw([_transaction(100, base - timedelta(hours=2))])), None, base
    )
    swiss = Transaction.model_validate(
        {**_transaction(1, base + timedelta(minutes=5)).model_dump(mode="json"), "currency": "CHF"}
    )
    eid, body = build_event((_answer(swiss), swiss, None, "r1", _trace([swiss]), time.time(), "k1"))
    client.xadd(
        STREAM_KEY, {b"id": eid.encode(), b"v": str(SCHEMA_VERSION).encode(), b"event": body}
    )
    client.xadd("vigil:decisions:dead", {"id": "old", "source_id": "1-0", "reason": "before"})
    settings = _settings(server.url, allowed_lateness_s=3600)
    metrics = StreamerMetrics()
    await _consumed(server.url, settings, metrics)
    assert metrics.events.labels("dead_letter")._value.get() == 1
    (_, old), (_, letter) = client.xrange("vigil:decisions:dead")
    assert letter[b"event"] == body and letter[b"id"] == eid.encode()
    assert b"no EUR rate for CHF" in letter[b"reason"]
    cli = ["dead-letters", "--redis-url", server.url]

    def run(*argv: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            vigil_main([*cli[:1], *argv, *cli[1:]])
        return out.getvalue()

    listed = run("list")
    assert "no EUR rate for CHF" in listed and "cannot be requeued" in listed
    day = (base + timedelta(minutes=5)).date().isoformat()
    client.hset(FX_KEY, fx_field("CHF", day), "1.05")  # the cause fixed: CHF's rate loaded
    assert "sent 1 dead letters" in run("requeue", "--all")
    assert [f[b"id"] for _, f in client.xrange("vigil:decisions:dead")] == [old[b"id"]]
    metrics = StreamerMetrics()
    await _consumed(server.url, settings, metrics)
    assert metrics.events.labels("applied")._value.get() == 1
    swiss_raw = _raw(_as_raw([_transaction(100, base - timedelta(hours=2)), swiss]))
    swiss_raw["amount"] = swiss_raw["amount"].where(swiss_raw["currency"] == "EUR", 10.0 * 1.05)
    swiss_raw["currency"] = "EUR"
    _check_rows(server.url, swiss_raw, [("card_id", "c1")])
    client.close()


@pytest.mark.parametrize("stored", ["not a rate", "nan", "-1"])
async def test_a_stored_rate_that_is_no_rate_dead_letters_its_events(server, stored):
    """A stored FX rate that is not a positive number (corrupt, NaN: its sums would fail in
    Redis) is no rate: the event is dead-lettered with the reason, the others are applied."""
    from vigil_contracts.entity_history import FX_KEY, fx_field

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw([]), None, base)
    fine = [_transaction(i, base + timedelta(minutes=i)) for i in range(1, 4)]
    swiss = Transaction.model_validate(
        {**_transaction(9, base + timedelta(minutes=5)).model_dump(mode="json"), "currency": "CHF"}
    )
    client.hset(FX_KEY, fx_field("CHF", (base + timedelta(minutes=5)).date().isoformat()), stored)
    _publish(server.url, [fine[0], swiss, *fine[1:]], "r1")
    metrics = StreamerMetrics()
    await _consumed(server.url, _settings(server.url, allowed_lateness_s=3600), metrics)
    assert metrics.events.labels("dead_letter")._value.get() == 1
    assert metrics.events.labels("applied")._value.get() == 3
    ((_, letter),) = client.xrange("vigil:decisions:dead")
    assert b"the stored EUR rate of CHF" in letter[b"reason"]
    client.close()


async def test_an_event_that_fails_for_a_reason_no_code_expected_is_dead_lettered_alone(
    server, monkeypatch, capsys
):
    """A failure that is neither Redis's nor a malformed event (a bug: here one injected into
    the streamer's reading of one event) fails the batch: it is applied again in halves, the
    event that fails alone goes to the dead-letter stream with the failure's type and where
    (not its message, which may quote a card), the others are applied, everything is
    acknowledged, and the streamer stays ready (before, the whole batch stayed pending and was
    retried for ever)."""
    from vigil_streamer import consumer as consumer_module

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw([]), None, base)
    txns = [_transaction(i, base + timedelta(minutes=i), card=f"c{i}") for i in range(1, 5)]
    record = consumer_module.Consumer._record

    async def failing(self, event):
        if event.transaction.transaction_id == "t3":
            raise RuntimeError(f"card {event.transaction.card_id} broke it")
        return await record(self, event)

    monkeypatch.setattr(consumer_module.Consumer, "_record", failing)
    _publish(server.url, txns, "r1")
    metrics = StreamerMetrics()
    await _consumed(server.url, _settings(server.url, allowed_lateness_s=3600), metrics)
    assert metrics.events.labels("dead_letter")._value.get() == 1
    assert metrics.events.labels("applied")._value.get() == 3
    assert metrics.errors._value.get() == 3  # the 4, its half of 2, then t3 alone
    ((_, letter),) = client.xrange("vigil:decisions:dead")
    assert letter[b"id"].startswith(b"t3")
    assert letter[b"reason"].startswith(b"not applied (or in part): RuntimeError at test_streamer")
    assert b"c3" not in letter[b"reason"] and "card c3" not in capsys.readouterr().err
    _check_rows(server.url, _raw(_as_raw([txns[0]])), [("card_id", "c1")])
    client.close()


async def test_a_script_call_redis_answers_noscript_is_sent_again_alone(server):
    """The streamer's pipelines call scripts by SHA; a call Redis answers NOSCRIPT is loaded
    and sent again, in order, and the pipeline's other commands ran once (here: two script
    calls around an INCR, both answered NOSCRIPT). An error that is not NOSCRIPT is raised."""
    from redis.exceptions import ResponseError

    from vigil_streamer.consumer import _Scripted

    client = aioredis.Redis.from_url(server.url)
    try:
        await client.script_flush()
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        pipe = _Scripted(client)
        pipe.script(script, ["s"], [10])
        pipe.pipe.incr("plain")
        pipe.script(script, ["s"], [1])
        assert await pipe.execute() == [10, 1, 11]
        assert int(await client.get("plain")) == 1 and int(await client.get("s")) == 11
        await client.set("text", "x")
        failing = _Scripted(client)
        failing.script(script, ["text"], [1])  # INCRBY of a string: an error, not NOSCRIPT
        with pytest.raises(ResponseError):
            await failing.execute()
    finally:
        await client.aclose()


async def test_scripts_redis_lost_are_loaded_again_and_the_batch_applied(server):
    """The consumer calls its scripts by SHA in its pipelines (no SCRIPT EXISTS round trip
    before each): on its first batch, and after Redis lost them while it ran (SCRIPT FLUSH, as
    a restart does), it loads them and applies the batch: rows equal to the batch pipeline's,
    every event applied once, no error, and the views' markers moved with the rows."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    history = [
        _transaction(100 + i, base - timedelta(hours=5 - i), merchant="m1") for i in range(4)
    ]
    client = redis.Redis.from_url(server.url)
    seed_histories(client, _raw(_as_raw(history)), None, base)
    marker = marker_key("vigil", "card_stats")
    client.hset(marker, mapping={"end": (base - timedelta(days=1)).isoformat(), "rows": "1"})
    client.script_flush()
    first = [_transaction(i, base + timedelta(minutes=i), device="d2") for i in range(3)]
    second = [_transaction(10 + i, base + timedelta(minutes=10 + i)) for i in range(3)]
    metrics = StreamerMetrics()
    aclient = aioredis.Redis.from_url(server.url)
    consumer = Consumer(aclient, _settings(server.url), metrics)
    task = asyncio.create_task(consumer.run())

    def applied() -> float:
        return metrics.events.labels("applied")._value.get()

    try:
        _publish(server.url, first, "r1")
        await _until(lambda: applied() == 3)
        client.script_flush()
        _publish(server.url, second, "r1")
        await _until(lambda: applied() == 6)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await aclient.aclose()
    assert metrics.errors._value.get() == 0
    assert metrics.events.labels("duplicate")._value.get() == 0
    targets = [("card_id", "c1"), ("merchant_id", "m1"), ("device_id", "d1"), ("device_id", "d2")]
    _check_rows(server.url, _raw(_as_raw(history + first + second)), targets)
    end = datetime.fromisoformat(client.hget(marker, "end").decode())
    assert end == second[-1].timestamp + timedelta(microseconds=1)
    client.close()


def test_rows_are_written_byte_for_byte_as_feast_materialized_them(feature_env, server):
    """The latest offline row of entities of every view, written by the streamer's layout into
    an empty Redis, is the very hash Feast's materialization left in the session's store."""
    from vigil import feast_repo

    feast = redis.Redis.from_url(feature_env.redis.url)
    ours = redis.Redis.from_url(server.url)
    write = ours.register_script(feast_layout.WRITE_NEWER)
    checked = 0
    for view, join_key in ENTITY_KEYS.items():
        table = pd.read_parquet(feast_repo.offline_dir(feature_env.repo) / f"{view}.parquet")
        last = table.drop_duplicates(subset=[join_key], keep="last").tail(40)
        for record in last.to_dict("records"):
            key = feast_layout.redis_key(join_key, record[join_key], "vigil")
            stored = feast.hgetall(key)
            if not stored:
                continue  # outside the materialized window
            stamp = int(pd.Timestamp(record["event_timestamp"]).value // 1000)
            features = {
                n: (None if isinstance(v, float) and v != v else v)
                for n, v in ((n, record[n]) for n in FEATURE_TABLES[view])
            }
            write(
                keys=[key, "w"],
                args=feast_layout.row_args(view, features, FEATURE_TYPES, stamp, 1, 60_000),
            )
            assert ours.hgetall(key) == stored, (view, record[join_key])
            checked += 1
    assert checked >= 60
    feast.close()
    ours.close()


def test_every_streamer_setting_is_documented():
    from settings_docs import undocumented_fields

    assert undocumented_fields(StreamerSettings) == []


async def test_the_streamer_app_answers_health_and_readiness(server):
    """Not ready until the histories are seeded; then consuming, with its metrics."""
    import httpx
    from httpx import ASGITransport

    from vigil_streamer.app import create_app

    app = create_app(_settings(server.url, nice=0))  # in process: the suite keeps its priority
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=ASGITransport(app), base_url="http://s") as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "vigil_streamer_ready 0.0" in (await client.get("/metrics")).text
            redis.Redis.from_url(server.url).hset("vigil:stream:seeded", "end", "x")
            await _until(lambda: app.state.consumer.running)
            assert (await client.get("/readyz")).status_code == 200
            text = (await client.get("/metrics")).text
            assert "vigil_streamer_events" in text and "vigil_streamer_ready 1.0" in text


def test_the_streamer_needs_neither_the_pipeline_nor_pandas_nor_feast():
    """Its image installs the contracts, the service kit and itself only: building every kind
    of row and starting the app import nothing of the batch pipeline's stack."""
    code = (
        "import sys\n"
        "from vigil_contracts.entity_history import HistoryRecord\n"
        "from vigil_streamer import rows\n"
        "from vigil_streamer.app import create_app\n"
        "from vigil_streamer.settings import StreamerSettings\n"
        "create_app(StreamerSettings())\n"
        "m = [HistoryRecord('t1', 1_700_000_000_000_000, 'c', 'm', 'd', 'FR', 12.5).encode()]\n"
        "for key in ('card_id', 'merchant_id', 'device_id'):\n"
        "    stamp, features = rows.newest_row(key, m, m[0])\n"
        "    assert stamp == 1_700_000_000_000_001 and features, key\n"
        "heavy = {'vigil', 'pandas', 'numpy', 'pyarrow', 'feast', 'google.protobuf'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_redis_cluster_is_refused_with_the_reason():
    """The stream and the streamer's state live in one Redis for now: a cluster URL stops the
    streamer at start with why, not with redis-py's unknown-scheme error at its first read."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="the streamer needs one Redis"):
        StreamerSettings(redis_url="redis+cluster://127.0.0.1:7000")
    assert StreamerSettings(redis_url="rediss://127.0.0.1:6380/0").redis_url.startswith("rediss")


def test_held_windows_are_bounded_by_their_events_least_recently_used_first():
    """The windows the streamer holds are bounded by the events they hold in all (a memory
    bound whatever the entities' traffic); the least recently used go first, after the batch."""
    from vigil_contracts.entity_history import HistoryRecord
    from vigil_streamer.rows import Windows

    def members(card: str, n: int) -> list[bytes]:
        return [
            HistoryRecord(f"{card}-{i}", 1_765_000_000_000_000 + i, card, "m1", None, "FR", 9.0)
            .encode()
            .encode()
            for i in range(n)
        ]

    windows = Windows(10)
    for card, n in (("a", 4), ("b", 4), ("c", 4)):
        held = members(card, n)
        windows.read(("card_id", card), 1, held[0], held[::-1])
    assert windows.events == 12  # within a batch nothing is dropped
    windows.settle()
    assert (windows.version(("card_id", "a")), windows.version(("card_id", "b"))) == (-1, 1)
    assert windows.events == 8
    windows.extend(("card_id", "b"), 2, members("b", 7)[4:])  # b used again: now 7 events
    windows.settle()
    assert windows.version(("card_id", "c")) == -1 and windows.version(("card_id", "b")) == 2
    assert windows.events == 7
    windows.still(("card_id", "b"), 3)  # its history moved elsewhere: dropped
    assert windows.version(("card_id", "b")) == -1 and windows.events == 0
