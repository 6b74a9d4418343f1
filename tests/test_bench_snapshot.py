"""The benchmark's store snapshot: every case starts from the store as set up.

On a real redis-server: what the snapshot holds comes back exactly (values and TTLs) after the
cases have changed it, streams (the decision stream and its consumer group) are never touched,
and keys made since the snapshot stay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bench.store_snapshot import FreshStore, restore, take
from vigil.redis_server import RedisServer


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    # Its own server: the snapshot reads the whole database.
    with RedisServer() as server:
        c = redis.Redis.from_url(server.url)
        yield c
        c.close()


def _state(c: redis.Redis, key: str) -> Any:
    kind = c.type(key)
    if kind == b"string":
        return c.get(key)
    if kind == b"hash":
        return c.hgetall(key)
    if kind == b"zset":
        return c.zrange(key, 0, -1, withscores=True)
    if kind == b"set":
        return c.smembers(key)
    if kind == b"list":
        return c.lrange(key, 0, -1)
    assert kind == b"none", kind
    return None


def _set_up(c: redis.Redis) -> None:
    """A store as the bench sets it up: rows, histories, counters, one key with a TTL, and the
    decision stream with its consumer group."""
    c.hset(b"\x01\x00row:card", mapping={b"\x9a\x01": b")\x00\x00", b"_ts:card_stats": b"\x08\x01"})
    c.hset("vigil:stream:fx", mapping={"EUR:2026-12-06": "1.0", "USD:2026-12-06": "0.93"})
    c.zadd("vigil:stream:h:card_id:c1", {"tx1": 1, "tx2": 2, "tx3": 3})
    c.set("vigil:stream:hv:card_id:c1", 1)
    c.set("vigil:stream:hv:card_id:c2", 1, px=600_000)
    c.sadd("a:set", "x", "y")
    c.rpush("a:list", "1", "2")
    c.xadd("vigil:decisions", {"v": "1", "event": "{}"})
    c.xgroup_create("vigil:decisions", "streamer", id="0")


def _change(c: redis.Redis) -> None:
    """What a case does to it."""
    c.hset(b"\x01\x00row:card", b"_ts:card_stats", b"\x08\x02")
    c.hset(b"\x01\x00row:card", b"\x9b\x01", b"new")
    c.hset("vigil:stream:fx", "GBP:2026-12-06", "1.2")
    c.zadd("vigil:stream:h:card_id:c1", {"tx4": 4, "tx5": 5})
    c.zrem("vigil:stream:h:card_id:c1", "tx1")
    c.incr("vigil:stream:hv:card_id:c1", 4)
    c.set("vigil:stream:hv:card_id:c2", 7)  # a write without PX drops the TTL
    c.delete("a:set")
    c.rpush("a:list", "3")
    c.set("vigil:stream:hw:card_id:c1", 5)  # a key the case made
    c.xadd("vigil:decisions", {"v": "1", "event": "{}"})


def test_a_restore_puts_back_every_key_but_the_streams_and_leaves_new_keys(
    client: redis.Redis,
) -> None:
    _set_up(client)
    before = {k: _state(client, k) for k in client.scan_iter() if client.type(k) != b"stream"}
    ttl_before = client.pttl("vigil:stream:hv:card_id:c2")
    snapshot = take(client, chunk=3)  # several pipelines
    assert snapshot.keys == len(before) == 7
    assert snapshot.streams == 1
    assert snapshot.bytes > 0

    _change(client)
    assert client.pttl("vigil:stream:hv:card_id:c2") == -1
    done = restore(client, snapshot, chunk=2)

    assert done.keys == 7 and done.expired == 0
    assert {k: _state(client, k) for k in before} == before
    assert client.hget(b"\x01\x00row:card", b"_ts:card_stats") == b"\x08\x01"
    assert client.smembers("a:set") == {b"x", b"y"}  # deleted by the case, back
    assert client.pttl("vigil:stream:hv:card_id:c1") == -1
    ttl = client.pttl("vigil:stream:hv:card_id:c2")
    assert ttl_before - 5_000 < ttl <= ttl_before
    # The stream is untouched: both entries, its group and what the group has read.
    assert client.xlen("vigil:decisions") == 2
    [group] = client.xinfo_groups("vigil:decisions")
    assert group["name"] == b"streamer" and group["lag"] == 2
    # A key made after the snapshot stays.
    assert client.get("vigil:stream:hw:card_id:c1") == b"5"


def test_a_key_whose_ttl_ran_out_is_deleted(client: redis.Redis) -> None:
    client.set("short", "a", px=50)
    client.set("long", "b")
    snapshot = take(client)
    time.sleep(0.1)
    client.set("short", "c")  # made again, with no TTL: it would otherwise stay
    done = restore(client, snapshot)
    assert (done.keys, done.expired) == (1, 1)
    assert client.get("short") is None and client.get("long") == b"b"


def test_fresh_store_restores_only_after_a_case_through_the_gateway(
    client: redis.Redis,
) -> None:
    client.set("row", "set up")
    logged: list[str] = []
    store = FreshStore(client, take(client), backlog=lambda: 0, log=logged.append)
    assert store.before("first") is not None  # setup's checks went through the gateway
    client.set("row", "changed by nobody")
    assert store.before("encoder alone") is None  # a case that only reads: nothing done
    assert client.get("row") == b"changed by nobody"
    store.touched()
    record = store.before("e2e")
    assert record is not None and record["keys"] == 1
    assert client.get("row") == b"set up"
    summary = store.summary()
    assert summary["restores"] == 2 and summary["snapshot"]["keys"] == 1
    assert len(logged) == 2


def test_fresh_store_waits_for_the_stream_to_drain(client: redis.Redis) -> None:
    client.set("row", "set up")
    backlog = iter([3, 2, 0])
    store = FreshStore(client, take(client), backlog=lambda: next(backlog), log=lambda _: None)
    record = store.before("e2e")
    assert record is not None and record["backlog"] == 0 and record["waited_s"] >= 0.1
