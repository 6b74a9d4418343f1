"""The rate limiter's lease (tokens taken from a key's shared buckets ahead of its requests), on
real Redis: a key far from its limit costs one round trip per lease, never more than its rates;
a key near its limit is counted in Redis request by request. And admission's smaller bound
while the process is overloaded."""

from __future__ import annotations

import contextlib
import itertools
import time

import pytest
import redis.asyncio as aioredis

import test_gateway
from vigil_gateway.authenticate import Caller
from vigil_gateway.limits import (
    KEY_PREFIX,
    LEASE_MAX_AGE_S,
    Admission,
    Overloaded,
    RateLimited,
    RateLimiter,
    Rates,
)
from vigil_gateway.metrics import GatewayMetrics

redis_url = test_gateway.redis_url  # the session fixture, shared
_ids = itertools.count()


def _caller() -> Caller:
    return Caller(key_id=f"lease-{time.time_ns()}-{next(_ids)}", client="test")


class _Counting(RateLimiter):
    calls = 0

    async def _run(self, key: bytes, args: list[bytes]) -> bytes:
        self.calls += 1
        return await super()._run(key, args)


async def test_a_key_far_from_its_limit_takes_a_round_trip_per_lease(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        limiter = _Counting(client, Rates(200.0, 400.0, 5000.0, 10000.0), GatewayMetrics())
        caller = _caller()
        for _ in range(30):
            await limiter(caller, 1)
        # A lease is 10 requests (0.05 s of 200/s): the first call and one per spent lease.
        assert limiter.calls == 3
        held = await client.hgetall(KEY_PREFIX + caller.key_id)  # type: ignore[misc]
        # Taken from the shared bucket: 3 requests and 3 leases of 10, refilled a little since.
        assert 400 - 33 <= float(held[b"r"]) < 400 - 33 + 5
        # An unspent lease is dropped after LEASE_MAX_AGE_S: the next request asks Redis.
        lease = limiter._leases[caller.key_id]
        lease.until = time.monotonic() - 1
        await limiter(caller, 1)
        assert limiter.calls == 4
        assert LEASE_MAX_AGE_S <= 1.0  # a changed limit holds within a second
    finally:
        await client.aclose()


async def test_a_key_near_its_limit_is_counted_request_by_request(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        # 20 requests/s, burst 20: a lease of one request while that leaves the bucket half
        # full, then none; the limit holds exactly.
        limiter = _Counting(client, Rates(20.0, 20.0, 1e6, 1e6), GatewayMetrics())
        caller = _caller()
        passed = 0
        with pytest.raises(RateLimited):
            for _ in range(40):
                await limiter(caller, 1)
                passed += 1
        assert 20 <= passed <= 21  # the burst, plus at most what refilled meanwhile
        # Below a whole token of lease (1 request/s), every request is a round trip.
        small = _Counting(client, Rates(1.0, 2.0, 1e6, 1e6), GatewayMetrics())
        other = _caller()
        await small(other, 1)
        await small(other, 1)
        assert small.calls == 2 and not small._leases
        with pytest.raises(RateLimited):
            await small(other, 1)
    finally:
        await client.aclose()


async def test_a_batch_beyond_the_lease_asks_redis(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        limiter = _Counting(client, Rates(200.0, 400.0, 5000.0, 10000.0), GatewayMetrics())
        caller = _caller()
        await limiter(caller, 1)  # leases 250 transactions
        await limiter(caller, 200)
        assert limiter.calls == 1
        await limiter(caller, 200)  # 50 left in the lease
        assert limiter.calls == 2
    finally:
        await client.aclose()


async def test_a_redis_cluster_no_node_of_which_answers_fails_open_and_the_key_refresh_goes_on():
    """redis-py's cluster client raises ``RedisClusterException`` (not a ``RedisError``) when it
    reaches no node: the rate limiter fails open (counted), as for one Redis, instead of every
    request answering 500; the API key table's refresh keeps trying instead of dying."""
    import asyncio

    from vigil.redis_server import free_port
    from vigil_gateway.api_keys import KeyRing

    url = f"redis://127.0.0.1:{free_port()}"
    client = aioredis.RedisCluster.from_url(url, socket_connect_timeout=0.2)
    metrics = GatewayMetrics()
    limiter = RateLimiter(client, Rates(20.0, 20.0, 1e6, 1e6), metrics)
    for _ in range(2):
        await limiter(_caller(), 1)
    assert metrics.rate_limit_errors._value.get() == 2
    ring = KeyRing(
        aioredis.RedisCluster.from_url(url, socket_connect_timeout=0.2), "s", refresh_s=0.05
    )
    task = asyncio.create_task(ring.run())
    await asyncio.sleep(0.5)
    assert not task.done() and ring.loaded_at is None  # still trying, nothing read
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_an_overloaded_process_admits_fewer_until_it_refuses_none_for_a_while() -> None:
    admit = Admission(
        GatewayMetrics(),
        max_in_flight=4,
        max_in_flight_per_key=4,
        min_budget_s=0.0,
        max_in_flight_overloaded=2,
    )
    caller = Caller(key_id="k", client="test")
    with contextlib.ExitStack() as held:
        for _ in range(4):  # not overloaded: the full bound
            held.enter_context(admit(caller, None))
        with pytest.raises(Overloaded), admit(caller, None):
            pass
    # Overloaded now: two in flight at most ...
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(admit(caller, None))
        with pytest.raises(Overloaded), admit(caller, None):
            pass
    # ... until no request has been refused for OVERLOAD_HOLD_S.
    admit.overloaded_until = time.monotonic() - 0.001
    with contextlib.ExitStack() as held:
        for _ in range(4):
            held.enter_context(admit(caller, None))
    assert admit.in_flight == 0 and not admit.per_key
