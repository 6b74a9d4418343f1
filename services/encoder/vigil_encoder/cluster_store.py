"""The encoder's reads from Feast's online store in a Redis Cluster (``redis+cluster://``).

What it saves, how it is held equal: a batch's HMGETs are grouped by the node that serves each
key's slot and sent as one pipelined write per node, all nodes at once, their replies read as
:mod:`vigil_encoder.store` reads one server's (so one round trip per node, not per key, and
no per-command work in redis-py's cluster pipeline). The commands are the single-server path's
own packed HMGETs, each key read back from its command; the answers are put back in the
batch's order. Held equal to the single-Redis store on the same data by
``tests/test_redis_cluster.py``.

redis-py's ``RedisCluster`` keeps the slot map and each node's connections. A reply that says
the map is stale (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) or a node that is gone makes
the map be read again and the batch retried once, within the one deadline: during a failover
the batch fails (``FeatureStoreUnavailable``, so the gateway answers ``uncertain``) until a
replica has taken over, and then reads go to it unaided.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from vigil_encoder.errors import FeatureStoreUnavailable
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.store import _error_kind, _read_replies, pipelined
from vigil_servicekit.redis_url import cluster_url

_HMGET = b"HMGET\r\n$"


def command_key(command: bytes) -> bytes:
    """The key of a packed ``HMGET`` (:class:`vigil_encoder.store.HmgetPacker`)."""
    start = command.index(_HMGET) + len(_HMGET)
    end = command.index(b"\r\n", start)
    return command[end + 2 : end + 2 + int(command[start:end])]


class _StaleMap(Exception):
    """The slot map the batch was routed by is out of date (or a node is gone)."""


class ClusterOnlineStore:
    """Same interface as :class:`vigil_encoder.store.OnlineStore`, over a Redis Cluster."""

    def __init__(self, url: str, timeout_s: float, metrics: EncoderMetrics) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._client: RedisCluster | None = None

    def open(self) -> None:
        if self._client is None:
            self._client = RedisCluster.from_url(
                cluster_url(self.url),
                socket_timeout=None,  # one asyncio deadline covers the batch
                socket_connect_timeout=self.timeout_s,
                decode_responses=False,
                retry=Retry(NoBackoff(), 0),  # this store retries once itself, on a fresh map
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _require_client(self) -> RedisCluster:
        if self._client is None:
            raise FeatureStoreUnavailable("the online store client is not open")
        return self._client

    async def hgetall_many(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        """``HGETALL`` of each key (the materialization markers: readiness and the metrics
        scrape, never the request path), through redis-py's cluster pipeline, which splits it
        by node."""
        pipe = self._require_client().pipeline()
        commands = [("HGETALL", key) for key in keys]
        return await pipelined(pipe, commands, self.timeout_s, self.metrics)

    async def read_many(
        self, commands: Sequence[tuple[str, ...]], timeout_s: float | None = None
    ) -> list[Any]:
        """:meth:`vigil_encoder.store.OnlineStore.read_many`, through redis-py's cluster
        pipeline."""
        pipe = self._require_client().pipeline()
        started = time.perf_counter()
        try:
            return await pipelined(pipe, commands, timeout_s or self.timeout_s, self.metrics)
        finally:
            self.metrics.redis_latency.observe(time.perf_counter() - started)

    async def hmget_many(
        self, commands: Sequence[bytes], timeout_s: float | None = None
    ) -> list[list[bytes | None]]:
        if not commands:
            return []
        started = time.perf_counter()
        client = self._require_client()
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                try:
                    return await self._read(client, commands)
                except _StaleMap:
                    await self._refresh(client)
                    return await self._read(client, commands)
        except _StaleMap as exc:
            self.metrics.redis_errors.labels("connection").inc()
            raise FeatureStoreUnavailable(
                f"the online store did not answer (cluster: {exc.__cause__!r})"
            ) from exc
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            kind = _error_kind(exc)
            self.metrics.redis_errors.labels(kind).inc()
            raise FeatureStoreUnavailable(
                f"the online store did not answer ({kind}: {type(exc).__name__})"
            ) from exc
        finally:
            self.metrics.redis_latency.observe(time.perf_counter() - started)

    async def _refresh(self, client: RedisCluster) -> None:
        # Read the slot map again from any node that answers.
        await client.nodes_manager.initialize()

    async def _read(
        self, client: RedisCluster, commands: Sequence[bytes]
    ) -> list[list[bytes | None]]:
        if client._initialize:
            await client.initialize()
        nodes = client.nodes_manager
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        try:
            for i, command in enumerate(commands):
                node = nodes.get_node_from_slot(key_slot(command_key(command)))
                groups.setdefault(node.name, (node, []))[1].append(i)
        except RedisClusterException as exc:  # a slot no node serves (yet)
            raise _StaleMap() from exc
        results = await asyncio.gather(
            *(
                self._round_trip(node, [commands[i] for i in indexes])
                for node, indexes in groups.values()
            ),
            return_exceptions=True,
        )
        replies: list[Any] = [None] * len(commands)
        for (_, indexes), result in zip(groups.values(), results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, (RedisConnectionError, OSError, ResponseError)):
                    # MOVED, ASK, TRYAGAIN, CLUSTERDOWN, or a node that went away.
                    raise _StaleMap() from result
                raise result
            for i, reply in zip(indexes, result, strict=True):
                replies[i] = reply
        return replies

    async def _round_trip(self, node: ClusterNode, commands: list[bytes]) -> list[Any]:
        connection = node.acquire_connection()
        done = False
        try:
            if not connection.is_connected:
                await connection.connect()
            await connection.send_packed_command(b"".join(commands), check_health=False)
            replies = await _read_replies(connection, len(commands))
            done = True
            return replies
        finally:
            if not done:
                # Unread replies may be left on the wire: the connection is not reused.
                await connection.disconnect(nowait=True)
            node.release(connection)

    async def ping(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._require_client().ping(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[misc]  # as above
        except FeatureStoreUnavailable as exc:
            return exc.detail
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            kind = _error_kind(exc)
            self.metrics.redis_errors.labels(kind).inc()
            return f"{kind}: {type(exc).__name__}: {exc}"
        return None
