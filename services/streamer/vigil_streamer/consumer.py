"""The streamer's consumer loop: decision events in, each touched entity's online row out.

For a batch read from the group (``XREADGROUP``): parse each entry (a malformed one, or one of
an unknown schema version, goes to the dead-letter stream with the reason); skip event ids
read twice in the batch; add the batch's transactions to each touched card's, merchant's and
device's history and read back what the entity's newest row needs, with the history's version,
unless the streamer holds the window of the version the history was at (``rows.Windows``)
(one Lua call per entity, all in one pipeline: idempotent, since a transaction is one member, so
an event delivered again or a transaction decided again changes nothing and is counted as a
duplicate; an event older than the entity's newest by more than the allowed lateness is left out and counted);
build each touched entity's newest row from its events (``rows``, the function the batch
pipeline's rows are held equal to); write the rows newer-wins in Feast's layout
(``feast_layout``); move the views' markers; acknowledge. A crash anywhere before the
acknowledgement leaves the entries pending: they are read again at restart (or taken over by
another replica after ``claim_idle_s``) and change nothing twice.

Replicas share the group; two may touch one entity at once. Every change of an entity's history
moves its version, a row is built from a snapshot read atomically with that version, and a row of the
same instant is written only by a snapshot at least as new as the stored one's: the last write
is always the newest history's row, whichever replica makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from vigil_contracts.decision_events import (
    CONTRACTS_KEY,
    FIELD_EVENT,
    FIELD_VERSION,
    READABLE_VERSIONS,
    DecisionEvent,
    EventFeatures,
    contract_names,
)
from vigil_contracts.entity_history import (
    FX_KEY,
    KINDS,
    SEEDED_KEY,
    VERSION_STEP_MAX,
    HistoryRecord,
    fx_field,
    history_key,
    tiles_key,
    version_key,
    written_key,
)
from vigil_contracts.online_markers import marker_key
from vigil_streamer import feast_layout
from vigil_streamer.metrics import StreamerMetrics
from vigil_streamer.rows import (
    CAP,
    DTYPES,
    TILED,
    WINDOW_US,
    Row,
    Windows,
    tile_args,
    tiled_row,
)
from vigil_streamer.settings import StreamerSettings

logger = logging.getLogger(__name__)

_US_PER_DAY = 86_400_000_000
#: Most transactions of one tiled entity (a merchant) in one script call; a busy merchant's
#: transactions of a batch take several calls in the batch's one pipeline, so that no call
#: holds Redis long (about 10 µs per transaction; 1.4 ms and more for a merchant's 1,000-event
#: batch share before, ``bench.stream_drain``'s slow calls).
_TILE_CALL_MAX = 16
#: Most transactions of one card or device in one script call (about 3 µs each, and the window
#: read back at the end): a busy one's transactions of a batch take several calls.
_EVENT_CALL_MAX = 64
#: Most XAUTOCLAIM round trips of one takeover cycle (each looks at up to 10 pending entries
#: per one asked).
_CLAIMS_MAX = 50
_EUR_FEATURE = "request_features__txn_amount"

# Adds each of a batch's transactions of one entity (member, t: ARGV from `first`, every
# `stride`) to KEYS[1], the entity's history (scored by time), in batch order, and says what
# became of each: already there (0; ZADD is idempotent anyway), too late (-1: older than the
# newest, the batch's earlier ones included, by more than the lateness `late`), added (1). When
# any was added, the version KEYS[2] moves by the caller's random `step` (so a version names one
# state of the history, even after Redis is rolled back to a snapshot and the history moves on
# anew) and what no row can read any more (older than the newest by the kept `span`) is trimmed,
# the first sighting kept, and both keys' expiry moves to `ttl` ms. `wanted`: some transaction
# was not too late (the newest row is to be written). Shared by both scripts below; each
# `redis.call` costs, so the newest and the first are read once, not per transaction.
_ADD_ALL = """
local function add_all(first_arg, stride, step, ttl)
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local top = newest[2] and tonumber(newest[2])
  local statuses, added, wanted = {}, {}, false
  for i = first_arg, #ARGV, stride do
    local member, t = ARGV[i], tonumber(ARGV[i + 1])
    local status = 1
    if redis.call('ZSCORE', KEYS[1], member) then
      status = 0
    elseif top and t < top - late then
      status = -1
    else
      redis.call('ZADD', KEYS[1], t, member)
      if not top or t > top then top = t end
      added[#added + 1] = i
    end
    if status ~= -1 then wanted = true end
    statuses[#statuses + 1] = status
  end
  local version
  if #added > 0 then
    version = redis.call('INCRBY', KEYS[2], step)
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local cutoff = top - span
    if tonumber(first[2]) < cutoff then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. first[2],
        '(' .. string.format('%.0f', cutoff))
    end
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  else
    version = tonumber(redis.call('GET', KEYS[2]) or '0')
  end
  return statuses, added, version, top, wanted
end
"""
# An event view's entity (card, device). KEYS[1] history, KEYS[2] version; ARGV: kept span
# (µs), lateness (µs), ttl (ms), how far back the view's row reads (µs), the event cap, the
# version step, the version the caller holds the window of (-1: none), the call's mode, then
# (member, t_us) of each of the batch's transactions of the entity, in batch order. Returns
# {statuses, version} and, in mode 1 (the entity's one call of the batch), unless all were too
# late, either "=" (the history was at the caller's version before these adds: its window and
# first sighting, with what was added, are the newest row's) or what the newest row reads, read
# in the same atomic call as the version: the first member and the window's members ((T -
# window, T], newest first, at most the cap). A busy entity's transactions go in several calls
# of at most ``_EVENT_CALL_MAX``: mode 0 before the last (adds only), mode 2 the last (always
# reads what the row reads).
_ADD_READ = (
    """
local span, late, w = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local step, mode = tonumber(ARGV[6]), ARGV[8]
"""
    + _ADD_ALL
    + """
local statuses, added, version, top, wanted = add_all(9, 2, step, ARGV[3])
if mode == '0' then return {statuses, version} end
if mode == '1' then
  if not wanted then return {statuses, version} end
  local before = version
  if #added > 0 then before = version - step end
  if before == tonumber(ARGV[7]) then return {statuses, version, '='} end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
local window = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf',
  '(' .. string.format('%.0f', top - w), 'LIMIT', 0, ARGV[5])
return {statuses, version, first[1], window}
"""
)
# A tiled view's entity (merchant): its row is its tiles, kept as running sums in KEYS[3] (field
# "<level>:<tile index>:<sum>", sums in entity_rows.TILE_SUMS order), so no event is read back;
# the history only makes the adds idempotent and finds the too-late. ARGV: kept span (µs),
# lateness (µs), ttl (ms), the number of tile levels L, the version step, whether to answer
# the sums (1: the entity's last call of the batch; 0: a call before it), then for each
# transaction in batch order: member, t_us, its tile index at each level, small (0/1), EUR
# amount, night (0/1). An added transaction adds to its tile at every level. Returns {statuses,
# version} and, when asked, the newest time and every kept sum (field, value, ...): the caller
# drops the tiles older than every row can read (they are never read, so whenever they go
# changes nothing). A busy merchant's transactions of a batch are sent in several calls of at
# most ``_TILE_CALL_MAX`` (each call holds Redis, every other client waiting, ~10 µs per
# transaction), all in the batch's one pipeline.
_ADD_TILES = (
    """
local span, late, levels = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
"""
    + _ADD_ALL
    + """
local statuses, added, version, top = add_all(7, 5 + levels, tonumber(ARGV[5]), ARGV[3])
for _, i in ipairs(added) do
  for j = 1, levels do
    local tile = (j - 1) .. ':' .. ARGV[i + 1 + j] .. ':'
    redis.call('HINCRBY', KEYS[3], tile .. '0', 1)
    redis.call('HINCRBY', KEYS[3], tile .. '1', ARGV[i + 2 + levels])
    redis.call('HINCRBYFLOAT', KEYS[3], tile .. '2', ARGV[i + 3 + levels])
    redis.call('HINCRBY', KEYS[3], tile .. '3', ARGV[i + 4 + levels])
  end
end
if #added > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
if ARGV[6] ~= '1' then return {statuses, version} end
return {statuses, version, string.format('%.0f', top), redis.call('HGETALL', KEYS[3])}
"""
)
# KEYS[1] a view's marker; ARGV: end (ISO, UTC), written_at. Only an existing marker moves, and
# only forward: a store never loaded stays not ready.
_MARK = """
local e = redis.call('HGET', KEYS[1], 'end')
if e and ARGV[1] > e then
  redis.call('HSET', KEYS[1], 'end', ARGV[1], 'written_at', ARGV[2])
  return 1
end
return 0
"""


def _calls(items: list[Any], size: int) -> list[tuple[list[Any], bool]]:
    """``items`` in calls of at most ``size``, each with whether it is the last."""
    return [(items[i : i + size], i + size >= len(items)) for i in range(0, len(items), size)]


def _joined(replies: Sequence[list[Any]]) -> list[Any]:
    """One entity's answer from its calls' (in order): every transaction's status, then the
    last call's version and what only it answers (a merchant's newest time and sums, a card's
    or device's first member and window)."""
    statuses = [status for reply in replies for status in reply[0]]
    return [statuses, *replies[-1][1:]]


# KEYS[1] the stream; ARGV: the group, this consumer, idle (ms). Removes every other consumer of
# the group with nothing pending that has been idle that long (in one atomic call: none can read
# in between and lose its events); returns their names.
_FORGET = """
local gone = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    gone[#gone + 1] = info['name']
  end
end
return gone
"""


def _stack(exc: BaseException) -> str:
    """Where ``exc`` was raised (files, lines, code), without its message."""
    return "".join(traceback.format_tb(exc.__traceback__))


class _NotYet(Exception):
    """The streamer cannot consume yet (the histories are not seeded)."""


class Malformed(ValueError):
    """An entry that cannot be processed; its reason goes to the dead-letter stream."""


def parse(fields: dict[bytes, bytes]) -> DecisionEvent:
    version = fields.get(FIELD_VERSION.encode())
    if version is None or FIELD_EVENT.encode() not in fields:
        raise Malformed(
            f"not a decision event: fields {sorted(k.decode(errors='replace') for k in fields)}"
        )
    if version not in _READABLE:
        raise Malformed(f"unknown schema version {version.decode(errors='replace')!r}")
    try:
        event = DecisionEvent.model_validate_json(fields[FIELD_EVENT.encode()])
    except ValidationError as exc:
        raise Malformed(
            f"invalid event: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
    if event.transaction.timestamp.tzinfo is None:
        raise Malformed("transaction.timestamp has no UTC offset")
    return event


_READABLE = frozenset(str(v).encode() for v in READABLE_VERSIONS)


def _step() -> int:
    """How far one change moves a history's version (random: see ``rows.Windows``)."""
    return _random.randrange(VERSION_STEP_MAX) + 1


_random = random.Random()  # not a secret: only unlikely to repeat


def t_us(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _Scripted:
    """A pipeline (no transaction) whose Lua scripts are called by their SHA.

    redis-py's pipeline asks Redis whether its scripts exist (``SCRIPT EXISTS``, a round trip)
    before every execute that holds one: two extra round trips a batch, a large part of a small
    batch's cost. Here a call Redis answers NOSCRIPT (it lost its scripts: a restart, ``SCRIPT
    FLUSH``; or never had them: this consumer's first batch) is loaded and sent again, alone:
    the pipeline's other commands ran once, in order, and each script call is independent of
    the others (one entity's). Any other error is raised, as redis-py's pipeline raises it."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.pipe: Pipeline = client.pipeline(transaction=False)
        self._calls: list[tuple[int, AsyncScript, list[Any], list[Any]]] = []

    def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> None:
        self._calls.append((len(self.pipe), script, keys, args))
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)

    async def execute(self) -> list[Any]:
        replies = await self.pipe.execute(raise_on_error=False)
        lost = [call for call in self._calls if isinstance(replies[call[0]], NoScriptError)]
        if lost:
            for script in {id(call[1]): call[1] for call in lost}.values():
                await self.client.script_load(script.script)
            again = self.client.pipeline(transaction=False)
            for _, script, keys, args in lost:
                again.evalsha(script.sha, len(keys), *keys, *args)
            for (i, _, _, _), reply in zip(lost, await again.execute(False), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


def _iso(t: int) -> str:
    return (
        datetime.fromtimestamp(t // 1_000_000, UTC).replace(microsecond=t % 1_000_000).isoformat()
    )


class Consumer:
    def __init__(self, client: Redis, settings: StreamerSettings, metrics: StreamerMetrics) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self._add = client.register_script(_ADD_READ)
        self._add_tiles = client.register_script(_ADD_TILES)
        self._write = client.register_script(feast_layout.WRITE_NEWER)
        self._mark = client.register_script(_MARK)
        self._forget = client.register_script(_FORGET)
        self._rates: dict[str, float] = {}
        self._contracts: dict[str, list[str]] = {}
        self.windows = Windows(settings.window_cache_events)
        self.lateness_us = int(settings.allowed_lateness_s * 1_000_000)
        self.ttl_ms = settings.history_ttl_s * 1000
        self.running = False
        """True once the group exists and the histories are seeded (readiness)."""
        self.problem = "starting"
        self._last_claim = 0.0

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume for ever (cancelled at shutdown). Redis trouble is logged and retried."""
        pause = 0.1
        while True:
            try:
                await self._prepare()
                await self._consume()
                pause = 0.1
            except asyncio.CancelledError:
                raise
            except _NotYet:
                await asyncio.sleep(1.0)
            except (RedisError, OSError) as exc:
                self.running = False
                self.problem = f"redis: {type(exc).__name__}: {exc}"
                self.metrics.errors.inc()
                logger.warning("streamer waiting for Redis", extra={"error": self.problem})
                await asyncio.sleep(pause)
                pause = min(2 * pause, 2.0)
            except Exception:
                self.metrics.errors.inc()
                logger.exception("streamer batch failed; its events will be read again")
                await asyncio.sleep(pause)
                pause = min(2 * pause, 2.0)

    async def _prepare(self) -> None:
        if self.running:
            return
        s = self.settings
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.client.xgroup_create(s.stream, s.group, id="0", mkstream=True)
        if s.require_seed and not await self.client.exists(SEEDED_KEY):
            self.problem = "entity histories not seeded: run `vigil stream-seed`"
            raise _NotYet
        # What this consumer read and did not acknowledge before it stopped, first.
        while True:
            reply = await self.client.xreadgroup(
                s.group, s.consumer, {s.stream: "0"}, count=min(s.read_count, s.batch_max)
            )
            entries = reply[0][1] if reply else []
            if not entries:
                break
            await self.process(entries)
        self.running = True
        self.problem = ""
        logger.info(
            "streamer consuming",
            extra={"stream": s.stream, "group": s.group, "consumer": s.consumer},
        )

    async def _consume(self) -> None:
        s = self.settings
        now = time.monotonic()
        if now - self._last_claim >= s.claim_idle_s:
            self._last_claim = now
            # What stopped replicas read and never acknowledged: up to a batch at once, in
            # claims of a read's size (the cursor goes on through the pending list).
            taken: list[Any] = []
            start: Any = "0-0"
            # Until the cursor has gone through the pending list (a claim may return fewer than
            # asked before its end: deleted entries count, and it looks at 10 per one asked),
            # a batch is taken, or a bound on the round trips.
            for _ in range(_CLAIMS_MAX):
                if len(taken) >= s.batch_max:
                    break
                chunk = min(s.read_count, s.batch_max - len(taken))
                claimed = await self.client.xautoclaim(
                    s.stream,
                    s.group,
                    s.consumer,
                    min_idle_time=int(s.claim_idle_s * 1000),
                    start_id=start,
                    count=chunk,
                )
                if not claimed:
                    break
                taken += claimed[1]
                start = claimed[0]
                if start in (b"0-0", "0-0"):
                    break  # the whole pending list seen
            if taken:
                logger.info("took over events of a stopped replica", extra={"events": len(taken)})
                await self.process(taken)
            gone = await self._forget(
                keys=[s.stream],
                args=[s.group, s.consumer, int(s.forget_consumers_after_s * 1000)],
            )
            if gone:
                logger.info(
                    "removed consumers gone from the group",
                    extra={"consumers": [g.decode(errors="replace") for g in gone]},
                )
            await self._gauge_lag()
        chunk = min(s.read_count, s.batch_max)
        reply = await self.client.xreadgroup(
            s.group, s.consumer, {s.stream: ">"}, count=chunk, block=s.block_ms
        )
        entries = list(reply[0][1]) if reply else []
        got = len(entries)
        # A full read means a backlog: read on (without waiting) up to batch_max, in short reads.
        while got == chunk and len(entries) < s.batch_max:
            chunk = min(s.read_count, s.batch_max - len(entries))
            reply = await self.client.xreadgroup(s.group, s.consumer, {s.stream: ">"}, count=chunk)
            more = reply[0][1] if reply else []
            entries += more
            got = len(more)
        if entries:
            await self.process(entries)

    async def _gauge_lag(self) -> None:
        for group in await self.client.xinfo_groups(self.settings.stream):
            if group.get("name") in (self.settings.group, self.settings.group.encode()):
                lag = group.get("lag")
                self.metrics.lag.set(float(lag) if lag is not None else 0.0)
                self.metrics.pending.set(float(group.get("pending") or 0))

    # --- one batch -----------------------------------------------------------------------
    async def process(self, entries: Sequence[tuple[Any, dict[bytes, bytes]]]) -> None:
        """Apply ``entries``, acknowledged once applied. Redis failing the batch raises (it is
        read again once Redis answers). Any other failure (a bug, or state no code expected) is
        narrowed down: the batch is applied again in halves, and halves of the failing half,
        so that the entry that fails alone goes to the dead-letter stream with the reason and
        one event never holds the others back, nor the streamer's readiness up. (A failing
        batch's own counts, duplicates or late events seen before the failure, may be counted
        again when its halves are applied; every event is idempotent.)"""
        try:
            await self._process(entries)
            return
        except (RedisError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - any failure but Redis's: narrowed down below
            self.metrics.errors.inc()
            # The type and where, not the message (it may quote an event's card or device:
            # the log holds none, README *Privacy*; the dead letter keeps the event itself).
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            logger.error(
                "streamer batch failed; applying it again in halves"
                if len(entries) > 1
                else "decision event failed alone; dead-lettered",
                extra={"events": len(entries), "error": where, "stack": _stack(exc)},
            )
        if len(entries) > 1:  # out of the except block: no exception context carried along
            half = len(entries) // 2
            await self.process(entries[:half])
            await self.process(entries[half:])
            return
        ((entry_id, fields),) = entries
        await self._dead_letter([(entry_id, fields, f"not applied (or in part): {where}")])

    async def _dead_letter(self, dead: Sequence[tuple[Any, dict[bytes, bytes], str]]) -> None:
        """Move ``dead`` to the dead-letter stream and acknowledge them."""
        pipe = self.client.pipeline(transaction=False)
        self._add_dead_letters(pipe, dead)
        pipe.xack(self.settings.stream, self.settings.group, *[entry_id for entry_id, _, _ in dead])
        await pipe.execute()
        self._count_dead_letters(dead)

    def _add_dead_letters(
        self, pipe: Pipeline, dead: Sequence[tuple[Any, dict[bytes, bytes], str]]
    ) -> None:
        # A dead letter keeps the entry's own fields beside the reason: it can be sent again
        # once its cause is fixed (`vigil dead-letters requeue`).
        for entry_id, fields, reason in dead:
            source = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            entry: dict[Any, Any] = {**fields, b"source_id": source, b"reason": reason}
            pipe.xadd(self.settings.dead_letter_stream, entry)

    def _count_dead_letters(self, dead: Sequence[tuple[Any, dict[bytes, bytes], str]]) -> None:
        if dead:
            self.metrics.events.labels("dead_letter").inc(len(dead))
        for entry_id, _, reason in dead:
            logger.warning(
                "decision event dead-lettered", extra={"entry": str(entry_id), "reason": reason}
            )

    async def _process(self, entries: Sequence[tuple[Any, dict[bytes, bytes]]]) -> None:
        started = time.perf_counter()
        s = self.settings
        ids = [entry_id for entry_id, _ in entries]
        events: list[tuple[Any, dict[bytes, bytes], DecisionEvent]] = []
        dead: list[tuple[Any, dict[bytes, bytes], str]] = []
        for entry_id, fields in entries:
            try:
                events.append((entry_id, fields, parse(fields)))
            except Malformed as exc:
                dead.append((entry_id, fields, str(exc)))
        # An event id read twice in one batch is one event; read again in a later batch (a
        # redelivery) or decided again (a rescore), its transaction is already in its
        # entities' histories, which the history scripts find (and count as a duplicate).
        once = {item[2].event_id: item for item in reversed(events)}
        if repeated := len(events) - len(once):
            self.metrics.events.labels("duplicate").inc(repeated)
        records: list[tuple[DecisionEvent, HistoryRecord]] = []
        for entry_id, fields, event in list(once.values())[::-1]:
            try:
                records.append((event, await self._record(event)))
            except Malformed as exc:
                dead.append((entry_id, fields, str(exc)))
        latest, added, newest = await self._apply(records)
        # Once the rows are written: the views' markers move, then the batch is acknowledged.
        done = _Scripted(self.client)
        written_at = datetime.now(UTC).isoformat()
        for view, stamp in newest.items():
            done.script(self._mark, [marker_key(s.project, view)], [_iso(stamp), written_at])
        self._add_dead_letters(done.pipe, dead)
        for start in range(0, len(ids), s.read_count):  # as read: no call holds Redis long
            done.pipe.xack(s.stream, s.group, *ids[start : start + s.read_count])
        await done.execute()
        self._count_dead_letters(dead)
        if added:
            self.metrics.events.labels("applied").inc(len(added))
        if duplicates := len(latest.keys() - added):
            self.metrics.events.labels("duplicate").inc(duplicates)
        now = time.time()
        for event, _ in records:
            if event.event_id in latest:
                self.metrics.freshness.observe(max(0.0, now - event.timings.decided_at))
        self.metrics.batch_size.observe(len(entries))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _record(self, event: DecisionEvent) -> HistoryRecord:
        txn = event.transaction
        when = t_us(txn.timestamp)
        return HistoryRecord(
            txn.transaction_id,
            when,
            txn.card_id,
            txn.merchant_id,
            txn.device_id,
            txn.country,
            await self._in_eur(event, when),
        )

    async def _in_eur(self, event: DecisionEvent, when: int) -> float:
        """The amount in EUR at the rate of its currency on its UTC day (as the batch pipeline
        converts it); the event's own EUR amount when no dated rate is known."""
        txn = event.transaction
        day = datetime.fromtimestamp(when // _US_PER_DAY * 86_400, UTC).date().isoformat()
        field = fx_field(txn.currency, day)
        rate = self._rates.get(field)
        if rate is None:
            stored = await self.client.hget(FX_KEY, field)  # type: ignore[misc]
            if stored is not None:
                try:
                    rate = float(stored)
                except ValueError:
                    raise Malformed(
                        f"the stored EUR rate of {txn.currency} on {day} is not a number"
                    ) from None
                if not math.isfinite(rate) or rate <= 0:
                    raise Malformed(f"the stored EUR rate of {txn.currency} on {day} is {rate}")
                self._rates[field] = rate
        if rate is not None:
            return txn.amount * rate
        features = event.features
        names = None if features is None else await self._names(features)
        if features is not None and names is not None and _EUR_FEATURE in names:
            value = features.values[names.index(_EUR_FEATURE)]
            if value is not None and math.isfinite(value):
                self.metrics.fx_from_event.inc()
                return float(value)
        raise Malformed(f"no EUR rate for {txn.currency} on {day}")

    async def _names(self, features: EventFeatures) -> list[str] | None:
        """The vector's feature names: the event's own (version 1) or its contract's, as
        registered beside the stream (None if they are not)."""
        if features.names is not None:
            return features.names
        contract = features.feature_contract
        names = self._contracts.get(contract)
        if names is None:
            stored = await self.client.hget(CONTRACTS_KEY, contract)  # type: ignore[misc]
            try:
                names = self._contracts[contract] = contract_names(contract, stored)
            except ValueError:
                return None
        return names

    async def _apply(
        self, records: Sequence[tuple[DecisionEvent, HistoryRecord]]
    ) -> tuple[dict[str, int], set[str], dict[str, int]]:
        """Histories and rows of ``records``: the events not too late for any of their
        entities (their rows were written), those that added their transaction to some
        entity's history (the others' were there already: duplicates), and per view the newest
        row written (for its marker)."""
        if not records:
            return {}, set(), {}
        s = self.settings
        # Per entity, its transactions in batch order: one script call adds them and reads
        # what the entity's newest row needs, all in one pipeline (one round trip).
        touched: dict[tuple[str, str], list[tuple[DecisionEvent, bytes, int]]] = {}
        for event, record in records:
            member = record.encode().encode()
            for join_key in KINDS:
                value = getattr(record, join_key)
                if value is not None:
                    touched.setdefault((join_key, value), []).append((event, member, record.t_us))
        pipe = _Scripted(self.client)
        calls: list[int] = []  # per touched entity, its script calls
        for (join_key, value), items in touched.items():
            keys = [history_key(join_key, value), version_key(join_key, value)]
            span = WINDOW_US[join_key] + self.lateness_us
            if join_key in TILED:
                keys.append(tiles_key(join_key, value))
                head = [span, self.lateness_us, self.ttl_ms, len(TILED[join_key])]
                chunks = _calls(items, _TILE_CALL_MAX)
                for chunk, last in chunks:
                    args: list[Any] = [*head, _step(), int(last)]
                    for _, member, when in chunk:
                        args += [member, when, *tile_args(join_key, member, when)]
                    pipe.script(self._add_tiles, keys, args)
                calls.append(len(chunks))
                continue
            head = [span, self.lateness_us, self.ttl_ms, WINDOW_US[join_key], CAP[join_key]]
            chunks = _calls(items, _EVENT_CALL_MAX)
            for chunk, last in chunks:
                if len(chunks) == 1:  # the entity's one call: its held window may answer "="
                    args = [*head, _step(), self.windows.version((join_key, value)), 1]
                else:
                    args = [*head, _step(), -1, 2 if last else 0]
                for _, member, when in chunk:
                    args += [member, when]
                pipe.script(self._add, keys, args)
            calls.append(len(chunks))
        answers = iter(await pipe.execute())
        rows: dict[tuple[str, str], Row] = {}
        versions: dict[tuple[str, str], int] = {}
        unread: dict[tuple[str, str], list[bytes]] = {}
        late: set[str] = set()
        added: set[str] = set()
        for ((join_key, value), items), n in zip(touched.items(), calls, strict=True):
            reply = _joined([next(answers) for _ in range(n)]) if n > 1 else next(answers)
            for (event, _, _), status in zip(items, reply[0], strict=True):
                if status == 1:
                    added.add(event.event_id)
                elif status == -1:
                    late.add(event.event_id)
                    self.metrics.events.labels("late").inc()
                    logger.warning(
                        "decision event too late for an entity: left out of its features",
                        extra={
                            "event_id": event.event_id,
                            "entity": join_key,
                            "allowed_lateness_s": s.allowed_lateness_s,
                        },
                    )
            key, version = (join_key, value), int(reply[1])
            if len(reply) == 2 or -1 == max(reply[0]):  # every one too late: no row to write
                if join_key not in TILED:
                    self.windows.still(key, version)
                continue
            versions[key] = version
            if join_key in TILED:
                rows[key], unread[key] = tiled_row(join_key, int(reply[2]), reply[3])
            elif len(reply) == 3:  # "=": the window held, with what was added
                new = [m for (_, m, _), status in zip(items, reply[0], strict=True) if status == 1]
                rows[key] = self.windows.extend(key, version, new)
                self.metrics.windows.labels("held").inc()
            else:
                rows[key] = self.windows.read(key, version, reply[2], reply[3])
                self.metrics.windows.labels("read").inc()
        self.windows.settle()
        if not rows:
            return {}, added, {}
        write = _Scripted(self.client)
        order: list[tuple[str, str]] = []
        newest: dict[str, int] = {}
        for (join_key, value), (stamp, features) in rows.items():
            view = KINDS[join_key]
            row_keys: list[Any] = [
                feast_layout.redis_key(join_key, value, s.project),
                written_key(join_key, value),
            ]
            args = feast_layout.row_args(
                view, features, DTYPES, stamp, versions[(join_key, value)], self.ttl_ms
            )
            write.script(self._write, row_keys, args)
            order.append((join_key, value))
            newest[view] = max(newest.get(view, 0), stamp)
        for (join_key, value), fields in unread.items():
            if fields:
                write.pipe.hdel(tiles_key(join_key, value), *fields)  # type: ignore[arg-type]
        outcomes = (await write.execute())[: len(order)]
        for (join_key, _), written in zip(order, outcomes, strict=True):
            self.metrics.rows.labels(KINDS[join_key], "written" if written else "older").inc()
        latest = {event.event_id: 1 for event, _ in records if event.event_id not in late}
        return latest, added, newest
