"""The online store's batch read against real Redis: the replies a batch takes straight from
the hiredis parser's buffer are those ``read_response`` gives one by one, however the bytes
arrive (large replies spanning many socket reads, missing keys, an error reply), and a
connection that is gone still fails the batch."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from vigil_encoder import store as store_module
from vigil_encoder.errors import FeatureStoreUnavailable
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.store import HmgetPacker, OnlineStore

FIELDS = [b"f%d" % i for i in range(6)] + [b"_ts:view"]


@pytest.fixture(scope="module")
def keys(redis_server) -> list[bytes]:
    client = redis.Redis.from_url(redis_server.url)
    rng = random.Random(3)
    keys = []
    for i in range(400):
        key = b"vigil-store-test:%d" % i
        keys.append(key)
        if i % 7 == 3:
            continue  # no such hash
        size = rng.choice([0, 1, 9, 200, 70_000]) if i % 50 else 300_000
        mapping = {f: rng.randbytes(size) for f in FIELDS if rng.random() < 0.8}
        if mapping:
            client.hset(key, mapping=mapping)
    client.set(b"vigil-store-test:string", b"not a hash")  # HMGET answers WRONGTYPE
    yield keys
    client.delete(*keys, b"vigil-store-test:string")
    client.close()


def _plain(replies: list) -> list:
    """Replies comparable with ==: an error reply as its type and message."""
    return [(type(r), str(r)) if isinstance(r, Exception) else r for r in replies]


async def _replies(url: str, commands: list[bytes], fast: bool, monkeypatch) -> list:
    if not fast:
        monkeypatch.setattr(store_module, "_AsyncHiredisParser", None)
    store = OnlineStore(url, 5.0, EncoderMetrics())
    store.open()
    try:
        connection = await store._require_client().connection_pool.get_connection()
        # The parser a connection has is the one the fast path reads from.
        hiredis_parser = type(connection._parser).__name__ == "_AsyncHiredisParser"
        assert hiredis_parser is store_module.HIREDIS_AVAILABLE
        await store._require_client().connection_pool.release(connection)
        first = await store.hmget_many(commands)
        second = await store.hmget_many(commands)  # the connection is reused cleanly
        assert _plain(first) == _plain(second)
        return first
    finally:
        await store.close()
        monkeypatch.undo()


async def test_a_batch_reads_what_redis_holds(redis_server, keys, monkeypatch):
    pack = HmgetPacker(FIELDS).pack
    commands = [pack(key) for key in keys]
    fast = await _replies(redis_server.url, commands, True, monkeypatch)
    slow = await _replies(redis_server.url, commands, False, monkeypatch)
    assert fast == slow
    client = redis.Redis.from_url(redis_server.url)
    assert fast == [client.hmget(key, FIELDS) for key in keys]
    client.close()
    assert any(r[0] is not None and len(r[0]) >= 300_000 for r in fast)
    assert any(all(v is None for v in r) for r in fast)


async def test_an_error_reply_fails_the_batch_as_before(redis_server, keys, monkeypatch):
    pack = HmgetPacker(FIELDS).pack
    commands = [pack(keys[0]), pack(b"vigil-store-test:string"), pack(keys[1])]
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(store_module, "_AsyncHiredisParser", None)
        store = OnlineStore(redis_server.url, 5.0, EncoderMetrics())
        store.open()
        with pytest.raises(FeatureStoreUnavailable) as caught:
            await store.hmget_many(commands)
        assert caught.value.detail == "the online store did not answer (response: ResponseError)"
        assert isinstance(caught.value.__cause__, redis.ResponseError)
        assert len(await store.hmget_many(commands[::2])) == 2  # and the next batch is read
        await store.close()
    monkeypatch.undo()


async def test_a_lost_server_fails_the_batch():
    from vigil.redis_server import RedisServer

    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        client.hset(b"k", mapping={f: b"x" * 1000 for f in FIELDS})
        client.close()
        store = OnlineStore(server.url, 2.0, EncoderMetrics())
        store.open()
        commands = [HmgetPacker(FIELDS).pack(b"k")] * 300
        assert len(await store.hmget_many(commands)) == 300
    finally:
        server.stop()
    with pytest.raises(FeatureStoreUnavailable):
        await store.hmget_many(commands)
    await store.close()


@asynccontextmanager
async def _own_redis(
    timeout_s: float, hashes: dict[bytes, bytes]
) -> AsyncIterator[tuple[Any, OnlineStore]]:
    """A private Redis holding ``hashes`` (key -> the first field's value) and a store open on
    it; both closed afterwards."""
    from vigil.redis_server import RedisServer

    server = RedisServer().start()
    store = OnlineStore(server.url, timeout_s, EncoderMetrics())
    store.open()
    try:
        client = redis.Redis.from_url(server.url)
        for key, value in hashes.items():
            client.hset(key, mapping={FIELDS[0]: value})
        client.close()
        yield server, store
    finally:
        await store.close()
        server.stop()


async def test_kept_connections_that_died_with_redis_cost_one_failed_try_not_a_failed_batch():
    pack = HmgetPacker(FIELDS).pack
    async with _own_redis(2.0, {b"k": b"before"}) as (server, store):
        # Concurrent batches: three connections made, all kept once their replies are read.
        answers = await asyncio.gather(*(store.hmget_many([pack(b"k")]) for _ in range(3)))
        assert [a[0][0] for a in answers] == [b"before"] * 3
        assert len(store._idle) == 3
        server.stop()
        server.start()  # same port, an empty store: every kept connection is dead
        assert (await store.hmget_many([pack(b"k")]))[0][0] is None
        assert len(store._idle) == 1  # the dead ones were dropped, the fresh one kept
    assert store._idle == []


async def test_a_reply_that_comes_after_its_deadline_is_never_read_as_the_next_batchs():
    pack = HmgetPacker(FIELDS).pack
    async with _own_redis(0.2, {b"first": b"1", b"second": b"2"}) as (server, store):
        assert (await store.hmget_many([pack(b"first")]))[0][0] == b"1"
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(FeatureStoreUnavailable):
                await store.hmget_many([pack(b"first")])
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert store._idle == []  # the connection with a reply still to come was closed
        assert (await store.hmget_many([pack(b"second")]))[0][0] == b"2"
