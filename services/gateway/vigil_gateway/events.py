"""Decision events: one per fresh decision, appended to a Redis Stream behind the answer.

The record stage hands each fresh decision to :meth:`EventSpool.put`, which only appends a small
tuple to a bounded in-memory spool (no serialisation, no I/O on the request's path). One task,
:meth:`EventSpool.run`, takes what is spooled, builds the events (``vigil_contracts.
decision_events``) and sends them in batches, one Lua call per batch: for each event, ``SET
NX`` of its id (kept ``events_dedupe_ttl_s``) and, if it was new, ``XADD``. An event names its
features by their contract; the same call registers a contract's names (``CONTRACTS_KEY``)
the first time this process sends it, and otherwise checks that Redis still has them: if not
(Redis lost them), it adds nothing and the batch is sent again with the names. A batch whose reply
was lost (a hung Redis, a timeout) is sent again and adds nothing twice, so every decision
reaches the stream once. While Redis is away the events wait in the spool and are retried with a
growing pause (at most 1 s); a full spool drops the new event (counted, logged). At a graceful
stop :meth:`EventSpool.drain` keeps sending for ``events_drain_timeout_s``; what a crash loses is
what the spool holds, at most ``events_spool_max`` events (in steady state, the last few
milliseconds' decisions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from vigil_contracts.api import ScoreResponse, Transaction
from vigil_contracts.decision_events import (
    CONTRACTS_KEY,
    SCHEMA_VERSION,
    event_id,
)
from vigil_gateway.context import DecisionTrace
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.redis_wire import REDIS_FAILURES

logger = logging.getLogger(__name__)

# KEYS[1] the stream, KEYS[2] the feature contracts' names; ARGV: maxlen, dedupe ttl (ms), the
# number n of the batch's feature contracts, n (contract, names JSON or "") pairs, then (id,
# version, event) per event; the entry fields are the contract's FIELD_ID, FIELD_VERSION,
# FIELD_EVENT. A contract sent with its names is (re)registered; one sent without must be there.
# Returns how many were added (the others were already there), or, adding nothing, the
# contracts that were not registered.
_APPEND = """
local n = tonumber(ARGV[3])
local unknown = {}
for i = 4, 3 + 2 * n, 2 do
  if ARGV[i + 1] ~= '' then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  elseif redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then
    unknown[#unknown + 1] = ARGV[i]
  end
end
if #unknown > 0 then
  return unknown
end
local added = 0
for i = 4 + 2 * n, #ARGV, 3 do
  if redis.call('SET', 'vigil:decision-event:' .. ARGV[i], '1', 'NX', 'PX', ARGV[2]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
               'id', ARGV[i], 'v', ARGV[i + 1], 'event', ARGV[i + 2])
    added = added + 1
  end
end
return added
"""
_RETRY_FIRST_S, _RETRY_MAX_S = 0.05, 1.0

# One spooled decision: the answer, its transaction, the trace's vector row (or None), the
# request id, the trace, when it was decided (epoch seconds), and the caller's key id.
_Item = tuple[ScoreResponse, Transaction, int | None, str, DecisionTrace, float, str]


def _vector(trace: DecisionTrace, row: int | None) -> dict[str, Any] | None:
    encoded = trace.encoded
    if encoded is None or row is None:
        return None
    vector = encoded.rows[row]
    return {
        "feature_service": encoded.feature_service,
        "feature_contract": encoded.feature_contract,
        "values": vector.values,
        "missing_at": [i for i, m in enumerate(vector.missing) if m],
        "stale_at": [i for i, s in enumerate(vector.stale) if s],
    }


def build_event(item: _Item) -> tuple[str, bytes]:
    """The id and the JSON of one spooled decision's event."""
    answer, transaction, row, request_id, trace, decided_at, key_id = item
    eid = event_id(answer.transaction_id, request_id)
    safeguards = answer.safeguards
    event = {
        "schema_version": SCHEMA_VERSION,
        "event_id": eid,
        "request_id": request_id,
        "key_id": key_id,
        "transaction": transaction.model_dump(mode="json"),
        "entities": {
            "card_id": transaction.card_id,
            "merchant_id": transaction.merchant_id,
            "device_id": transaction.device_id,
        },
        "model_name": answer.model.name,
        "model_version": answer.model.version,
        "score": answer.score,
        "label": answer.label,
        "reasons": [r.code for r in answer.reasons],
        "degraded": answer.degraded,
        "safeguards": None
        if safeguards is None
        else {"version": safeguards.version, "fired": safeguards.fired},
        "features": _vector(trace, row),
        "timings": {
            "encode_ms": trace.encode_ms,
            "predict_ms": trace.predict_ms,
            "total_ms": round(1000 * (trace.finished - trace.started), 3)
            if trace.finished is not None
            else None,
            "decided_at": decided_at,
        },
    }
    return eid, orjson.dumps(event)


class EventSpool:
    """The gateway's side of the decision stream (see the module)."""

    def __init__(
        self,
        client: Redis,
        metrics: GatewayMetrics,
        *,
        stream: str,
        spool_max: int,
        batch_max: int,
        maxlen: int,
        dedupe_ttl_s: int,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.stream = stream
        self.batch_max = batch_max
        self.maxlen = maxlen
        metrics.events_stream_maxlen.set(maxlen)
        self.dedupe_ms = dedupe_ttl_s * 1000
        self._spool: deque[_Item] = deque()
        self._spool_max = spool_max
        self._ready = asyncio.Event()
        self._append = client.register_script(_APPEND)
        self._full_since: float | None = None
        self._closed = False
        self._registered: set[str] = set()
        """Feature contracts this process registered (sent without their names after)."""

    def __len__(self) -> int:
        return len(self._spool)

    def put(
        self,
        answers: Sequence[ScoreResponse],
        transactions: Sequence[Transaction],
        trace: DecisionTrace,
        request_id: str,
        key_id: str,
    ) -> None:
        """Spool the events of ``answers`` (fresh decisions; each one's transaction is among
        ``transactions``, whose index is its row of the trace's vectors), asked for by the API
        key ``key_id``."""
        if not answers:
            return
        rows = {t.transaction_id: i for i, t in enumerate(transactions)}
        now = time.time()
        room = self._spool_max - len(self._spool)
        for answer in answers[: max(room, 0)]:
            row = rows[answer.transaction_id]
            self._spool.append((answer, transactions[row], row, request_id, trace, now, key_id))
        taken = min(len(answers), max(room, 0))
        self.metrics.events.labels("spooled").inc(taken)
        if taken < len(answers):
            self.metrics.events.labels("dropped").inc(len(answers) - taken)
            if self._full_since is None or now - self._full_since > 10:
                self._full_since = now
                logger.error(
                    "decision event spool full: events dropped",
                    extra={"dropped": len(answers) - taken, "spool_max": self._spool_max},
                )
        self.metrics.events_spooled.set(len(self._spool))
        self._ready.set()

    async def run(self) -> None:
        """Send what is spooled until :meth:`close` (then :meth:`drain` sends the rest).

        It stops on a flag rather than on cancellation: a cancellation landing inside the Redis
        client's call can be absorbed by it, and the loop would then wait for ever."""
        pause = _RETRY_FIRST_S
        while not self._closed:
            if not self._spool:
                self._ready.clear()
                await self._ready.wait()
                continue
            try:
                sent = await self._send_some()
            except Exception:  # a bug, never Redis's (kept and retried below): the loop goes on
                self.metrics.events_send_errors.inc()
                logger.exception("decision events not sent: the sender failed; kept in the spool")
                sent = False
            if sent:
                pause = _RETRY_FIRST_S
            else:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):  # woken early by close()
                    await asyncio.wait_for(self._ready.wait(), pause)
                pause = min(pause * 2, _RETRY_MAX_S)

    def close(self) -> None:
        """Ask :meth:`run` to return after the send in progress, if any."""
        self._closed = True
        self._ready.set()

    async def _send_some(self) -> bool:
        """Send up to ``batch_max`` spooled events; False when Redis could not take them (they
        stay spooled, in order)."""
        batch = [self._spool[i] for i in range(min(self.batch_max, len(self._spool)))]
        contracts: dict[str, list[str]] = {}
        for item in batch:
            encoded = item[4].encoded
            if encoded is not None and item[2] is not None:
                contracts[encoded.feature_contract] = encoded.feature_names
        events: list[Any] = []
        for item in batch:
            try:
                eid, body = build_event(item)
            except Exception:  # a bug, never Redis: this event is lost, the others go on
                self.metrics.events.labels("dropped").inc()
                logger.exception(
                    "decision event could not be built; dropped",
                    extra={"transaction_id": item[0].transaction_id},
                )
                continue
            events += [eid, SCHEMA_VERSION, body]
        try:
            while True:
                args: list[Any] = [self.maxlen, self.dedupe_ms, len(contracts)]
                for contract, names in contracts.items():
                    known = contract in self._registered
                    args += [contract, b"" if known else orjson.dumps(names)]
                reply = await self._append(keys=[self.stream, CONTRACTS_KEY], args=args + events)
                if not isinstance(reply, list):
                    break
                # Redis lost these contracts' names (nothing was added): send them again.
                self._registered.difference_update(
                    c.decode() if isinstance(c, bytes) else c for c in reply
                )
            added = int(reply)
        except REDIS_FAILURES as exc:
            self.metrics.events_send_errors.inc()
            logger.warning(
                "decision events not sent yet; kept in the spool",
                extra={"spooled": len(self._spool), "error": f"{type(exc).__name__}: {exc}"},
            )
            return False
        self._registered.update(contracts)
        for _ in batch:
            self._spool.popleft()
        self.metrics.events.labels("sent").inc(added)
        if added < len(batch):
            self.metrics.events.labels("duplicate").inc(len(batch) - added)
        self.metrics.events_spooled.set(len(self._spool))
        return True

    async def drain(self, timeout_s: float) -> None:
        """At a graceful stop: keep sending until the spool is empty or ``timeout_s`` passed;
        what is left is counted and logged as lost."""
        deadline = time.monotonic() + timeout_s
        pause = _RETRY_FIRST_S
        while self._spool and time.monotonic() < deadline:
            if not await self._send_some():
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, _RETRY_MAX_S)
        if self._spool:
            self.metrics.events.labels("lost_at_shutdown").inc(len(self._spool))
            logger.error(
                "decision events lost at shutdown: the stream could not be reached",
                extra={"lost": len(self._spool)},
            )
            self._spool.clear()


async def stop(task: asyncio.Task[None], spool: EventSpool, timeout_s: float) -> None:
    """Stop the sender and drain the spool (the app's shutdown)."""
    spool.close()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=max(timeout_s, 1.0))
    except TimeoutError:  # a send that hangs beyond its socket timeout
        task.cancel()
    await spool.drain(timeout_s)
