"""The decision store's commands on a Redis Cluster (``GATEWAY_REDIS_URL=redis+cluster://...``).

A cluster refuses a script over keys of several hash slots, and the decision keys keep the names
one Redis has always had (``vigil:decision:<id>``: stored data, no hash tags), so a batch's keys
are grouped by slot and each group gets the same script with its own keys and their arguments;
redis-py's cluster pipeline sends each node's groups as one pipeline, the nodes at once. Every
key's answer is what the one script over all keys gives (the scripts treat each key on its own);
held equal by ``tests/test_redis_cluster.py``. Cluster trouble is a ``RedisError`` like any other
Redis trouble, so the store's callers give up on it as they do on one Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from vigil_gateway.decisions import _Script

# Answers that say the slot map is out of date or a node is gone (MovedError is an AskError).
_STALE = (RedisConnectionError, RedisTimeoutError, AskError, TryAgainError, ClusterDownError)


class ClusterCommands:
    def __init__(self, client: RedisCluster) -> None:
        self.client = client

    async def run(self, script: _Script, keys: Sequence[bytes], args: Sequence[bytes]) -> list[Any]:
        """``script`` over ``keys`` as if in one call: ``args`` are the script's shared
        arguments, then one per key."""
        shared, per_key = list(args[: script.shared]), args[script.shared :]
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key_slot(key), []).append(i)
        calls = [
            ([keys[i] for i in indexes], [*shared, *(per_key[i] for i in indexes)])
            for indexes in groups.values()
        ]
        results = await self._pipeline([("EVALSHA", script.sha, len(k), *k, *a) for k, a in calls])
        unseen = [j for j, result in enumerate(results) if isinstance(result, NoScriptError)]
        if unseen:  # a node that has not seen the script yet (new, restarted, promoted)
            again = await self._pipeline(
                [
                    ("EVAL", script.source, len(calls[j][0]), *calls[j][0], *calls[j][1])
                    for j in unseen
                ]
            )
            for j, result in zip(unseen, again, strict=True):
                results[j] = result
        out: list[Any] = [None] * len(keys)
        for indexes, result in zip(groups.values(), results, strict=True):
            if isinstance(result, BaseException):
                raise result
            for i, value in zip(indexes, result, strict=True):
                out[i] = value
        return out

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply or error. The commands that met a stale slot map or a lost
        node are sent once more on a fresh map (a failover's new master): a decision written
        behind its answer is then not lost to the first request after the failover. (Where a
        connection broke after a write, the retry finds the key taken, which the scripts count
        as another request's, never as a second write.)"""
        results = await self._execute(commands)
        stale = [j for j, result in enumerate(results) if isinstance(result, _STALE)]
        if stale:
            again = await self._execute([commands[j] for j in stale])
            for j, result in zip(stale, again, strict=True):
                results[j] = result
        return results

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            results = await pipe.execute(raise_on_error=False)
        except _STALE as exc:
            results = [exc] * len(commands)
        except RedisClusterException as exc:
            self._reload_map()
            raise RedisError(f"cluster: {exc}") from exc
        if any(isinstance(result, _STALE) for result in results):
            self._reload_map()
        return results

    def _reload_map(self) -> None:
        # redis-py's own flag (its single commands set it on a lost node; its pipeline does not):
        # the next command reads the slot map again before it routes.
        self.client._initialize = True

    async def mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        try:
            return await self.client.mget_nonatomic(list(keys))
        except RedisClusterException as exc:
            raise RedisError(f"cluster: {exc}") from exc

    async def delete(self, keys: Sequence[bytes]) -> None:
        for result in await self._pipeline([("DEL", key) for key in keys]):
            if isinstance(result, BaseException):
                raise result

    async def set_px(self, key: bytes, value: bytes, ms: int) -> None:
        try:
            await self.client.set(key, value, px=ms)
        except RedisClusterException as exc:
            raise RedisError(f"cluster: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self.client.ping(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[misc]  # redis-py types sync and async alike
        except RedisClusterException as exc:
            raise RedisError(f"cluster: {exc}") from exc
