"""Stages *admit* and *rate limit*: how much work the gateway takes on, and from whom.

**Admission** bounds the requests being scored by this process (``GATEWAY_MAX_IN_FLIGHT``) and
by one key (``GATEWAY_MAX_IN_FLIGHT_PER_KEY``), and refuses a request whose time budget (counted
from its arrival, see ``context``) is as good as spent. Beyond the bound a request is answered at
once with 503 ``overloaded`` and ``Retry-After``, single and batch alike, and never stored: a
caller should retry (elsewhere) rather than wait in a queue past its own deadline, which is what
requests did before (measured at 256 connections: p99 867 ms, client time-outs). Once it has
refused a request for the process's bound, the process is overloaded: the bound is
``GATEWAY_MAX_IN_FLIGHT_OVERLOADED`` (smaller) until no request has been refused for
``OVERLOAD_HOLD_S``. More demand than the process serves is then met with the throughput of a
few requests in flight and their short wait, rather than with a long queue of admitted ones.

**Rate limit**: two token buckets per key (requests and transactions per second, each with a
burst; a batch takes one request and as many transactions as it has items), kept in Redis so
every replica draws on the same ones: one Lua script, one round trip. Over the limit is a 429
``rate-limited`` with ``Retry-After``. Redis's trouble never refuses a request: the limit is then
not enforced (logged, counted), as the decision store goes on without Redis.

While a key is far from its limit (both buckets half full after it), the script also hands the
process a small lease of tokens (``LEASE_S`` of the key's rates, at most 1/8 of a burst), taken
from the shared buckets like any others, which its next requests spend without a round trip
(measured: +0.49 ms on the end-to-end p50 at 50 req/s with a round trip per request). The
buckets never give more than the key's rates: a lease is taken from them, and a lease left
unspent for ``LEASE_MAX_AGE_S`` is dropped (those tokens are lost to the key, never added). Near
the limit, or for a rate too small to lease a whole token, every request is counted in Redis.

Neither knows anything of scoring.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from vigil_gateway.authenticate import Caller
from vigil_gateway.decisions import _Script
from vigil_gateway.errors import GatewayError
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.redis_wire import REDIS_FAILURES, call_packed, pack_command

logger = logging.getLogger(__name__)

KEY_PREFIX = "vigil:ratelimit:"
#: How long a process stays overloaded (its smaller bound) after it last refused a request.
OVERLOAD_HOLD_S = 1.0
#: A lease is this many seconds of a key's rates (at most 1/8 of its burst) ...
LEASE_S = 0.05
#: ... and is dropped when not spent within this many seconds.
LEASE_MAX_AGE_S = 1.0


class Overloaded(GatewayError):
    """More work in flight than this gateway (or this key's share of it) takes on."""

    status = 503
    title = "Overloaded"
    slug = "overloaded"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


#: What leaves a request unlimited (fail open, counted): Redis failing, or an unreadable reply.
_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, ValueError)


class RateLimited(GatewayError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


@dataclass(frozen=True)
class Rates:
    requests_per_s: float
    request_burst: float
    transactions_per_s: float
    transaction_burst: float


# Both buckets refilled by Redis's own clock; taken only when both have enough. Returns the
# seconds to wait (as text: Lua numbers become integers in replies), "0" when taken, "-1" when
# the request can never pass (more transactions than the burst), then the lease granted
# (requests, transactions): "0 10 250".
_TAKE = _Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rrate, rburst = tonumber(ARGV[1]), tonumber(ARGV[2])
local xrate, xburst = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local held = redis.call('HMGET', KEYS[1], 'r', 'x', 'ts')
local ts = tonumber(held[3]) or now
local elapsed = math.max(0, now - ts)
local r = math.min(rburst, (tonumber(held[1]) or rburst) + elapsed * rrate)
local x = math.min(xburst, (tonumber(held[2]) or xburst) + elapsed * xrate)
local wait = 0
if r < 1 then wait = (1 - r) / rrate end
if n > xburst then
  wait = -1
elseif x < n then
  wait = math.max(wait, (n - x) / xrate)
end
local lr, lx = 0, 0
if wait == 0 then
  r = r - 1
  x = x - n
  -- A lease (ARGV[7] requests, ARGV[8] transactions), whole, only if it leaves both buckets
  -- at least half full.
  lr, lx = tonumber(ARGV[7]), tonumber(ARGV[8])
  if lr >= 1 and lx >= 1 and r - lr >= rburst / 2 and x - lx >= xburst / 2 then
    r = r - lr
    x = x - lx
  else
    lr, lx = 0, 0
  end
end
redis.call('HSET', KEYS[1], 'r', tostring(r), 'x', tostring(x), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return tostring(wait) .. ' ' .. tostring(lr) .. ' ' .. tostring(lx)
""",
    shared=0,
)


class RateLimiter:
    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster | None,
        defaults: Rates,
        metrics: GatewayMetrics,
    ) -> None:
        self.client = client  # None: rate limiting is off
        self.defaults = defaults
        self.metrics = metrics
        self._failing = False
        self._leases: dict[str, _Lease] = {}

    def rates_of(self, caller: Caller) -> Rates:
        record, d = caller.record, self.defaults
        if record is None:
            return d
        return Rates(
            record.requests_per_s or d.requests_per_s,
            record.request_burst or d.request_burst,
            record.transactions_per_s or d.transactions_per_s,
            record.transaction_burst or d.transaction_burst,
        )

    async def __call__(self, caller: Caller, transactions: int) -> None:
        """Take one request and ``transactions`` from the caller's buckets, or raise
        :class:`RateLimited`."""
        if self.client is None:
            return
        rates = self.rates_of(caller)
        lease = self._leases.get(caller.key_id)
        if lease is not None and lease.spend(rates, transactions, time.monotonic()):
            return
        # The buckets' state lives until both would be full again (then it is the default).
        ttl_ms = (
            1000
            * max(
                rates.request_burst / rates.requests_per_s,
                rates.transaction_burst / rates.transactions_per_s,
            )
            + 1000
        )
        args = [
            b"%r" % float(v)
            for v in (
                rates.requests_per_s,
                rates.request_burst,
                rates.transactions_per_s,
                rates.transaction_burst,
            )
        ]
        args += [
            b"%d" % transactions,
            b"%d" % int(ttl_ms),
            b"%d" % int(min(rates.requests_per_s * LEASE_S, rates.request_burst / 8)),
            b"%d" % int(min(rates.transactions_per_s * LEASE_S, rates.transaction_burst / 8)),
        ]
        try:
            reply = (await self._run((KEY_PREFIX + caller.key_id).encode(), args)).split()
            wait, leased_requests, leased_transactions = (float(v) for v in reply)
        except _FAILURES as exc:
            self.metrics.rate_limit_errors.inc()
            if not self._failing:
                logger.warning(
                    "rate limits not enforced: Redis unavailable", extra={"error": repr(exc)}
                )
            self._failing = True
            return
        self._failing = False
        if wait == 0:
            if leased_requests:
                self._lease(caller.key_id, rates, leased_requests, leased_transactions)
            return
        self.metrics.refused.labels("rate_limited", caller.key_id).inc()
        if wait < 0:
            raise RateLimited(
                f"a batch of {transactions} transactions is more than this key's "
                f"burst of {rates.transaction_burst:g}; send smaller batches",
                1.0,
            )
        raise RateLimited(
            f"over this key's rate limit ({rates.requests_per_s:g} requests/s, "
            f"{rates.transactions_per_s:g} transactions/s)",
            wait,
        )

    def _lease(self, key_id: str, rates: Rates, requests: float, transactions: float) -> None:
        lease = self._leases.get(key_id)
        now = time.monotonic()
        if lease is None or lease.rates != rates or lease.until <= now:
            self._leases[key_id] = _Lease(rates, requests, transactions, now + LEASE_MAX_AGE_S)
        else:  # another request's lease came back meanwhile: both are this process's to spend
            lease.requests += requests
            lease.transactions += transactions

    async def _run(self, key: bytes, args: list[bytes]) -> bytes:
        if isinstance(self.client, aioredis.RedisCluster):
            # A cluster routes the one key to its node: redis-py's own script call does that.
            try:
                return await self.client.evalsha(_TAKE.sha.decode(), 1, key, *args)  # type: ignore[misc]  # redis-py types sync and async alike
            except NoScriptError:
                return await self.client.eval(_TAKE.source.decode(), 1, key, *args)  # type: ignore[misc]  # redis-py types sync and async alike
        try:
            return await call_packed(
                self.client, pack_command(b"EVALSHA", _TAKE.sha, b"1", key, *args)
            )
        except NoScriptError:  # a restarted (or another) Redis: EVAL caches the script
            return await call_packed(
                self.client, pack_command(b"EVAL", _TAKE.source, b"1", key, *args)
            )


@dataclass
class _Lease:
    """Tokens this process took from a key's shared buckets ahead of its requests."""

    rates: Rates
    requests: float
    transactions: float
    until: float  # monotonic: dropped, unspent, after this

    def spend(self, rates: Rates, transactions: int, now: float) -> bool:
        """Take one request and ``transactions`` from the lease, if it holds them (for the
        same rates, not yet dropped)."""
        if (
            now >= self.until
            or self.requests < 1
            or self.transactions < transactions
            or rates != self.rates
        ):
            return False
        self.requests -= 1
        self.transactions -= transactions
        return True


class Admission:
    """Counts the requests in flight, in all and per key; refuses beyond the bounds."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        max_in_flight: int,
        max_in_flight_per_key: int,
        min_budget_s: float,
        max_in_flight_overloaded: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.max_in_flight_overloaded = min(
            max_in_flight, max_in_flight_overloaded or max_in_flight
        )
        self.overloaded_until = 0.0  # monotonic
        self.max_in_flight_per_key = max_in_flight_per_key
        self.min_budget_s = min_budget_s
        self.in_flight = 0
        self.per_key: dict[str, int] = {}

    @contextmanager
    def __call__(self, caller: Caller, remaining_s: float | None) -> Iterator[None]:
        """Hold a place while the request is scored, or raise :class:`Overloaded` at once."""
        key_id = caller.key_id
        mine = self.per_key.get(key_id, 0)
        refusal = self.over_bound(caller)
        if refusal is not None:
            raise refusal
        if mine >= self.max_in_flight_per_key:
            self._refuse(
                caller,
                f"this key has {self.max_in_flight_per_key} requests in flight; retry shortly",
            )
        if remaining_s is not None and remaining_s < self.min_budget_s:
            self._refuse(caller, "the request waited too long to be taken on to be scored in time")
        self.in_flight += 1
        self.per_key[key_id] = mine + 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            left = self.per_key[key_id] - 1
            if left:
                self.per_key[key_id] = left
            else:
                del self.per_key[key_id]
            self.metrics.in_flight.set(self.in_flight)

    def over_bound(self, caller: Caller) -> Overloaded | None:
        """The refusal (counted) of a request beyond the process's bound, or None: it may be
        taken on as far as the process is concerned. Also asked at the server's door (``shed``)."""
        if self.in_flight < self.max_in_flight_overloaded:
            return None
        now = time.monotonic()
        bound = self.max_in_flight_overloaded if now < self.overloaded_until else self.max_in_flight
        if self.in_flight < bound:
            return None
        self.overloaded_until = now + OVERLOAD_HOLD_S
        self.metrics.refused.labels("overloaded", caller.key_id).inc()
        return Overloaded(f"more than {bound} requests in flight; retry shortly")

    def _refuse(self, caller: Caller, detail: str) -> None:
        self.metrics.refused.labels("overloaded", caller.key_id).inc()
        raise Overloaded(detail)
