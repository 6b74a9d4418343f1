"""The encoder's one connection to Feast's Redis online store.

Saves: ~2 us of Python per reply (replies read from hiredis's buffer, commands packed once);
held equal: a dry buffer falls back to redis-py's ``read_response``, and the vectors are tested
equal to Feast's SDK on real Redis (tests/test_encoder.py, tests/test_encoder_columns.py).

A batch is one pipelined round trip: every HMGET is packed into a single write and the replies
are read back in order. The commands are packed here rather than through redis-py's
``Pipeline``, because for a few hundred HMGETs its per-command packing and its per-reply socket
timeout (an ``asyncio.timeout`` for every reply) cost several times the round trip itself; a
single deadline covers the whole batch instead.

The connections a batch goes over are kept here, made by redis-py's pool but not handed out by
it: the pool checks each connection it hands out by reading it with a zero timeout, which costs
a task cancellation and a turn of the event loop in front of every request's round trip. A
connection is only put back after a round trip that read every reply (any failure, timeout or
cancellation closes it), so it holds nothing unread; one that died with Redis fails on its next
use, and then every kept connection is closed before the retry.

Redis failures become :class:`FeatureStoreUnavailable`, so that a lost store is a 503 the
gateway can act on, never a stack trace. The deadline is short and there is a single immediate
retry, on a broken connection only: it lets a kept connection that died with a restarted
Redis reconnect, while a Redis that is down or hung fails within one deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

try:  # redis-py's hiredis parser, whose buffered replies a batch takes directly (see below)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover - another redis-py layout: every reply the usual way
    NOT_ENOUGH_DATA, _AsyncHiredisParser = None, None  # type: ignore[assignment,misc]

from vigil_encoder.errors import FeatureStoreUnavailable
from vigil_encoder.metrics import EncoderMetrics

logger = logging.getLogger(__name__)


class HmgetPacker:
    """``HMGET <key> <fields...>`` in the Redis protocol, with the fixed fields packed once."""

    def __init__(self, fields: Sequence[bytes]) -> None:
        self.fields = tuple(fields)
        self._head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(self.fields) + 2)
        self._tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in self.fields)

    def pack(self, key: bytes) -> bytes:
        return b"".join((self._head, b"$%d\r\n" % len(key), key, b"\r\n", self._tail))


async def _read_replies(connection: Any, count: int) -> list[Any]:
    """``count`` replies, in order. ``connection.read_response()`` costs ~2 µs of Python per
    reply (two coroutines, a timeout check, the host named for an error message that is not
    raised) and a batch reads hundreds; with the hiredis parser, the replies already in its
    buffer are taken from it directly, as its own ``read_response`` takes them, and only when it
    needs more bytes from the socket does ``read_response`` run (which reads, and fails, as
    usual). Tested equal on real Redis, and a connection lost mid-batch still fails."""
    parser = connection._parser
    reader = getattr(parser, "_reader", None)
    if (
        _AsyncHiredisParser is None
        or type(parser) is not _AsyncHiredisParser
        or reader is None
        or not getattr(parser, "_connected", False)
        # read_response would note a health check (the ignore: mypy types getattr's default by
        # the `or` chain's bool context)
        or getattr(connection, "health_check_interval", 0)  # type: ignore[arg-type]
        or getattr(connection, "protocol", 2) in (3, "3")
    ):  # RESP3 may interleave pushes
        return [await connection.read_response() for _ in range(count)]
    gets = reader.gets
    replies: list[Any] = []
    append = replies.append
    while len(replies) < count:
        reply = gets()
        if reply is NOT_ENOUGH_DATA:
            append(await connection.read_response())
            continue
        # As the parser's and the connection's read_response treat what hiredis hands out
        # (RESP2: no pushes).
        if isinstance(reply, (RedisConnectionError, ResponseError)):
            raise reply from None
        if type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
            raise reply[0]
        append(reply)
    return replies


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, (RedisTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, (RedisConnectionError, OSError)):
        return "connection"
    return "response"


async def pipelined(
    pipe: Any, commands: Sequence[tuple[str, ...]], timeout_s: float, metrics: EncoderMetrics
) -> list[Any]:
    """Each command (name, arguments) through redis-py's pipeline ``pipe`` (one server's or a
    cluster's), within ``timeout_s``: the readiness probe's, the metrics scrape's and the rare
    reads of a request (:meth:`OnlineStore.read_many`), not the batch's HMGETs. Redis failures
    become :class:`FeatureStoreUnavailable`."""
    try:
        async with asyncio.timeout(timeout_s):
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        kind = _error_kind(exc)
        metrics.redis_errors.labels(kind).inc()
        raise FeatureStoreUnavailable(
            f"the online store did not answer ({kind}: {type(exc).__name__})"
        ) from exc


class OnlineStore:
    """Owns the ``redis.asyncio`` client between :meth:`open` and :meth:`close`."""

    def __init__(self, url: str, timeout_s: float, metrics: EncoderMetrics) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._client: aioredis.Redis | None = None
        self._idle: list[Any] = []  # connections that read every reply of their last round trip

    def open(self) -> None:
        """Create the client (no connection is made until the first command)."""
        if self._client is None:
            # The hiredis parser is redis-py's default when hiredis is installed; it is in the
            # encoder's dependencies for that reason.
            if not HIREDIS_AVAILABLE:
                logger.warning("hiredis is not installed; replies are parsed in pure Python")
            # No per-read socket timeout: every operation runs under one asyncio deadline.
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=None,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                decode_responses=False,
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        await self._drop_idle()
        if client is not None:
            await client.aclose()

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect(nowait=True)

    def _require_client(self) -> aioredis.Redis:
        if self._client is None:
            raise FeatureStoreUnavailable("the online store client is not open")
        return self._client

    async def _round_trip(self, payload: bytes, count: int) -> list[list[bytes | None]]:
        client = self._require_client()
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = client.connection_pool.make_connection()
            try:
                await connection.connect()
            except BaseException:
                await connection.disconnect(nowait=True)  # a half-made socket is not left open
                raise
        done = False
        try:
            await connection.send_packed_command(payload, check_health=False)
            replies = await _read_replies(connection, count)
            done = True
            return replies
        finally:
            if done and self._client is client:
                self._idle.append(connection)
            else:
                # Unread replies may be left on the wire (or the store is closing): not reused.
                await connection.disconnect(nowait=True)

    async def hmget_many(
        self, commands: Sequence[bytes], timeout_s: float | None = None
    ) -> list[list[bytes | None]]:
        """The reply of each packed HMGET (see :class:`HmgetPacker`), in order, in one trip,
        within ``timeout_s`` (default: the store's deadline)."""
        if not commands:
            return []
        payload = b"".join(commands)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                try:
                    return await self._round_trip(payload, len(commands))
                except RedisConnectionError:
                    # Reads are idempotent; a fresh connection gets one more try. The kept ones
                    # most likely died with the same Redis.
                    await self._drop_idle()
                    return await self._round_trip(payload, len(commands))
        except (RedisError, OSError, TimeoutError) as exc:
            kind = _error_kind(exc)
            self.metrics.redis_errors.labels(kind).inc()
            raise FeatureStoreUnavailable(
                f"the online store did not answer ({kind}: {type(exc).__name__})"
            ) from exc
        finally:
            self.metrics.redis_latency.observe(time.perf_counter() - started)

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """``HGETALL`` of each key, in one pipelined round trip within the deadline (for the
        readiness probe and the metrics scrape; the request path never calls it)."""
        client = self._require_client()
        commands = [("HGETALL", key) for key in keys]
        return await pipelined(client.pipeline(False), commands, self.timeout_s, self.metrics)

    async def read_many(
        self, commands: Sequence[tuple[str, ...]], timeout_s: float | None = None
    ) -> list[Any]:
        """The reply of each command (name, arguments), in order, in one pipelined round trip
        within ``timeout_s`` (default: the store's deadline): a request's rare reads beside
        its HMGETs (``dataplane``), so through redis-py."""
        pipe = self._require_client().pipeline(False)
        started = time.perf_counter()
        try:
            return await pipelined(pipe, commands, timeout_s or self.timeout_s, self.metrics)
        finally:
            self.metrics.redis_latency.observe(time.perf_counter() - started)

    async def ping(self) -> str | None:
        """None when Redis answers PING within the deadline, else why not."""
        try:
            async with asyncio.timeout(self.timeout_s):
                # redis-py types the asyncio client's ping as the sync client's (bool or awaitable)
                await self._require_client().ping()  # type: ignore[misc]
        except FeatureStoreUnavailable as exc:
            return exc.detail
        except (RedisError, OSError, TimeoutError) as exc:
            kind = _error_kind(exc)
            self.metrics.redis_errors.labels(kind).inc()
            return f"{kind}: {type(exc).__name__}: {exc}"
        return None
