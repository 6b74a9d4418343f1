"""The decision store: one decision per transaction id, in Redis, for idempotent replays.

Saves: redis-py's per-argument packing (2.7 ms for a 1000-decision batch against ~0.5 ms) and
most of pydantic's per-answer serialisation; held equal: tests hold the entries and bodies
byte-equal to what the models and redis-py write (tests/test_gateway_fastpaths.py).

A client that retries (a timeout on its side, a network blip) must get the decision it would have
had, not a second opinion, whichever gateway replica answers. Each entry holds the decision and a
hash of the transaction it was made for, so the same id with another payload is recognised as a
conflict. The store is an optimisation of correctness, not a dependency of scoring: when Redis
is slow or gone, every operation gives up quickly, is logged and counted, and scoring goes on.

A single transaction's decision is written *behind* its answer (a Redis round trip less on its
path), and the promise holds through a reservation made while the encoder works: the first
request for an id sets a short-lived pending marker (``pending <payload hash> <token>``) where
the decision will go; after answering, it replaces its own marker with the decision, or deletes
it when its answer was degraded. A concurrent request for the same id finds the marker and waits
for that decision (answering it as a replay), or is told the id is in progress; one for the same
id with another payload is a conflict at once. A batch only looks, and writes its decisions
before answering where nothing is (a marker or a decision found there is another request's).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import orjson
import pydantic_core
import redis.asyncio as aioredis
from pydantic import TypeAdapter, ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from vigil_contracts.api import ModelRef, Reason, SafeguardsRef, ScoreResponse, Transaction
from vigil_contracts.thresholds import LABELS
from vigil_gateway.decision_slots import ClusterCommands
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.redis_wire import call_packed, pack_command
from vigil_servicekit.redis_url import cluster_url, is_cluster

logger = logging.getLogger(__name__)

KEY_PREFIX = "vigil:decision:"

PENDING = b"pending "


class _Script:
    """A Lua script sent by its SHA1 (``EVALSHA``), and in full when Redis has not seen it.
    Its first ``shared`` arguments are the call's, then one argument per key (so that a
    cluster can split a call by hash slot: ``decision_slots``)."""

    def __init__(self, source: str, shared: int) -> None:
        self.source = source.encode()
        self.shared = shared
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


# Reserve every KEYS[i] that holds nothing with its pending marker ARGV[i + 1], for ARGV[1]
# milliseconds; the value each key held (false where it was reserved).
_RESERVE = _Script(
    """
local held = {}
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if not value then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
  end
  held[i] = value
end
return held
""",
    shared=1,
)

# SET KEYS[i] to ARGV[i + 2] for ARGV[2] seconds, where it holds nothing (ARGV[1] = '1': NX) or
# whatever it holds; 1 where it was written, else 0.
_PUT = _Script(
    """
local nx = ARGV[1] == '1'
local ttl = ARGV[2]
local written = {}
for i = 1, #KEYS do
  local ok
  if nx then
    ok = redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', ttl, 'NX')
  else
    ok = redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', ttl)
  end
  written[i] = ok and 1 or 0
end
return written
""",
    shared=2,
)

# Settle every KEYS[i] with ARGV[i + 3] for ARGV[2] seconds, where it holds the marker of the
# request whose token is ARGV[1], or nothing (the reservation was not made); with ARGV[3] = '1'
# (a rescore) whatever it holds. An empty value deletes the request's own marker. 1 where the
# decision was written, else 0.
_SETTLE = _Script(
    """
local token, ttl, overwrite = ARGV[1], ARGV[2], ARGV[3] == '1'
local written = {}
for i = 1, #KEYS do
  local value = ARGV[i + 3]
  local held = redis.call('GET', KEYS[i])
  local ours = held and string.sub(held, 1, 8) == 'pending ' and string.sub(held, -#token) == token
  written[i] = 0
  if value == '' then
    if ours then
      redis.call('DEL', KEYS[i])
    end
  elseif overwrite or ours or not held then
    redis.call('SET', KEYS[i], value, 'EX', ttl)
    written[i] = 1
  end
end
return written
""",
    shared=3,
)

_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z
# A stored decision is the answer without what belongs to the request that reads it.
_NOT_STORED = {"request_id", "cached"}


def _as_text(value: Any) -> str:
    """A field value orjson does not write itself (an IP address) as its text; an IPv4
    address's written by the C library (``str`` builds it in Python, a microsecond each)."""
    if type(value) is IPv4Address:
        return socket.inet_ntoa(value.packed)
    return str(value)


def payload_hash(transaction: Transaction) -> str:
    """Hash of the validated transaction: equal for payloads that mean the same (key order,
    whitespace, ``12`` vs ``12.0``), different when any field differs.

    The bytes hashed are exactly ``transaction.model_dump(mode="json")`` with sorted keys (what
    decisions already in the store were hashed with), produced by orjson straight from the
    field values: datetimes in RFC 3339 with ``Z`` for UTC (the ``Timestamp`` serializer's
    form), IP addresses as their text.
    """
    canonical = orjson.dumps(transaction.__dict__, option=_CANONICAL, default=_as_text)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class Pending:
    """Another request's reservation: the decision for ``payload_hash`` is being made."""

    payload_hash: str

    @classmethod
    def decode(cls, raw: bytes) -> Pending:
        return cls(payload_hash=raw[len(PENDING) :].split(b" ", 1)[0].decode())


def pending_marker(payload: str, token: bytes) -> bytes:
    return b"%s%s %s" % (PENDING, payload.encode(), token)


def _held(raw: bytes) -> StoredDecision | Pending:
    return Pending.decode(raw) if raw.startswith(PENDING) else StoredDecision.decode(raw)


@dataclass(frozen=True)
class StoredDecision:
    payload_hash: str
    decision: dict[str, Any]  # a ScoreResponse without request_id and cached
    request_id: str  # of the request that made the decision
    stored_at: float

    def replay(self, request_id: str) -> ScoreResponse:
        return ScoreResponse(**self.decision, request_id=request_id, cached=True)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "payload_hash": self.payload_hash,
                "decision": self.decision,
                "request_id": self.request_id,
                "stored_at": self.stored_at,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> StoredDecision:
        data = orjson.loads(raw)
        stored = cls(
            payload_hash=data["payload_hash"],
            decision=data["decision"],
            request_id=data.get("request_id", ""),
            stored_at=data.get("stored_at", 0.0),
        )
        stored.replay("")  # an entry an older release wrote must still make an answer
        return stored

    @classmethod
    def of(cls, response: ScoreResponse, payload: str) -> StoredDecision:
        return cls(
            payload_hash=payload,
            decision=response.model_dump(mode="json", exclude=_NOT_STORED),
            request_id=response.request_id,
            stored_at=time.time(),
        )


# decisions_json writes the fields in this order; the stored part of an answer is all of it but
# its last two fields, which answer_json relies on.
assert list(ScoreResponse.model_fields) == [
    "transaction_id",
    "label",
    "score",
    "reasons",
    "model",
    "degraded",
    "safeguards",
    "request_id",
    "cached",
]
assert _NOT_STORED == {"request_id", "cached"}


_LABEL_JSON = {label: orjson.dumps(label) for label in LABELS}
_BOOL_JSON = {False: b"false", True: b"true"}
_dump_reasons = TypeAdapter(list[Reason]).dump_json
_dump_model = ModelRef.__pydantic_serializer__.to_json
_dump_safeguards = SafeguardsRef.__pydantic_serializer__.to_json


class _Serialised:
    """JSON of the objects many answers share (a not_fraud answer's one reason, the model
    reference of a version), made once per object and kept while it lives."""

    def __init__(self, dump: Callable[[Any], bytes], size: int) -> None:
        self._dump = dump
        self._size = size
        self._json: dict[int, tuple[Any, bytes]] = {}

    def __call__(self, obj: Any) -> bytes:
        kept = self._json.get(id(obj))
        if kept is not None and kept[0] is obj:
            return kept[1]
        raw = self._dump(obj)
        if len(self._json) >= self._size:
            self._json.clear()
        self._json[id(obj)] = (obj, raw)
        return raw


_shared_reasons = _Serialised(lambda reason: _dump_reasons([reason]), 16)
_shared_models = _Serialised(_dump_model, 64)
_shared_safeguards = _Serialised(_dump_safeguards, 64)


def decisions_json(responses: Sequence[ScoreResponse]) -> list[bytes]:
    """The stored part of each answer, as JSON: the answer without ``request_id`` and
    ``cached``, byte for byte what ``ScoreResponse``'s serialiser writes for it.

    Written field by field, each by pydantic's own serialiser for its type, but the scores of
    all the answers in one call and what answers share (a not_fraud answer's one reason, the
    model) once: a batch of a thousand answers costs a fifth of serialising each model.
    """
    if not responses:
        return []
    # As the model writes a float field: NaN and infinities as null.
    scores = pydantic_core.to_json([r.score for r in responses], inf_nan_mode="null")[1:-1].split(
        b","
    )
    out = []
    for response, score in zip(responses, scores, strict=True):
        reasons = response.reasons
        safeguards = response.safeguards
        out.append(
            b'{"transaction_id":%s,"label":%s,"score":%s,"reasons":%s,"model":%s,"degraded":%s,'
            b'"safeguards":%s}'
            % (
                orjson.dumps(response.transaction_id),
                _LABEL_JSON[response.label],
                score,
                _shared_reasons(reasons[0]) if len(reasons) == 1 else _dump_reasons(reasons),
                _shared_models(response.model),
                _BOOL_JSON[response.degraded],
                b"null" if safeguards is None else _shared_safeguards(safeguards),
            )
        )
    return out


def decision_json(response: ScoreResponse) -> bytes:
    """The stored part of one answer (see :func:`decisions_json`)."""
    return decisions_json([response])[0]


def answer_json(decision: bytes, request_id: str, cached: bool) -> bytes:
    """The whole answer from its stored part, byte for byte what ``ScoreResponse``'s own
    serialiser writes (its last two fields appended): a fresh answer of a batch is serialised
    once, for the store and for the response."""
    tail = b',"cached":true}' if cached else b',"cached":false}'
    return b"".join((decision[:-1], b',"request_id":', orjson.dumps(request_id), tail))


def encode_entries(
    decisions: Sequence[bytes], payloads: Sequence[str], request_id: str
) -> list[bytes]:
    """What :meth:`StoredDecision.of` followed by :meth:`StoredDecision.encode` writes for each
    answer made by the request ``request_id``, from the answers' :func:`decisions_json` and
    their payload hashes (no intermediate dicts; one ``stored_at`` for them all)."""
    tail = b',"request_id":%s,"stored_at":%s}' % (
        orjson.dumps(request_id),
        orjson.dumps(time.time()),
    )
    return [
        b'{"payload_hash":%s,"decision":%s%s' % (orjson.dumps(payload), decision, tail)
        for decision, payload in zip(decisions, payloads, strict=True)
    ]


def encode_entry(response: ScoreResponse, payload: str, decision: bytes | None = None) -> bytes:
    """One answer's stored entry (see :func:`encode_entries`); ``decision`` is its
    :func:`decision_json` when it was already made."""
    return encode_entries(
        [decision if decision is not None else decision_json(response)],
        [payload],
        response.request_id,
    )[0]


def connect(url: str, *, timeout_s: float, max_connections: int) -> aioredis.Redis | RedisCluster:
    """A client that fails fast: no retries, short socket timeouts (scoring must not wait).

    The pool blocks (briefly) when all connections are busy instead of raising "too many
    connections", so a burst of traffic does not silently switch idempotency off. A
    ``redis+cluster://`` URL gives a Redis Cluster client (``decision_slots``).
    """
    if is_cluster(url):
        return RedisCluster.from_url(
            cluster_url(url),
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
    return aioredis.Redis.from_pool(pool)


Held = dict[str, "StoredDecision | Pending"]


class DecisionStore:
    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        metrics: GatewayMetrics,
        *,
        ttl_s: int,
        timeout_s: float | None = None,
    ) -> None:
        self.client = client
        self._cluster = ClusterCommands(client) if isinstance(client, RedisCluster) else None
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        """The client's own deadline per operation (``decision_store_timeout_s``); a call may
        be given a longer one (a batch's: ``timeout_s`` of :meth:`get_many`, :meth:`put_first`;
        one Redis: a cluster's calls keep the client's own)."""
        self._behind: set[asyncio.Task[None]] = set()  # writes behind answers, until done

    @staticmethod
    def key(transaction_id: str) -> str:
        return KEY_PREFIX + transaction_id

    @staticmethod
    def _keys(transaction_ids: Sequence[str]) -> list[bytes]:
        return [(KEY_PREFIX + t).encode() for t in transaction_ids]

    async def _call(self, command: bytes, timeout_s: float | None = None) -> Any:
        return await call_packed(self.client, command, timeout_s)

    async def _run(
        self,
        script: _Script,
        keys: Sequence[bytes],
        args: Sequence[bytes],
        timeout_s: float | None = None,
    ) -> Any:
        """One script call over every key: one command whatever the count (a pipeline of a
        thousand commands costs more in redis-py than the round trip). On a cluster, one call
        per hash slot of the keys (under the client's own deadline)."""
        if self._cluster is not None:
            return await self._cluster.run(script, keys, args)
        count = b"%d" % len(keys)
        try:
            return await self._call(
                pack_command(b"EVALSHA", script.sha, count, *keys, *args), timeout_s
            )
        except NoScriptError:
            # A restarted (or another) Redis has not seen the script yet; EVAL caches it.
            return await self._call(
                pack_command(b"EVAL", script.source, count, *keys, *args), timeout_s
            )

    def _decoded(
        self, transaction_ids: Sequence[str], raws: Sequence[bytes | None]
    ) -> tuple[Held, list[str]]:
        found: Held = {}
        unreadable: list[str] = []
        for transaction_id, raw in zip(transaction_ids, raws, strict=True):
            if raw is None:
                continue
            try:
                found[transaction_id] = _held(raw)
            except (
                orjson.JSONDecodeError,
                KeyError,
                TypeError,
                ValidationError,
                UnicodeDecodeError,
            ):
                unreadable.append(transaction_id)
        if unreadable:
            logger.warning(
                "unreadable stored decisions dropped", extra={"transaction_ids": unreadable[:10]}
            )
        return found, unreadable

    async def get_many(
        self, transaction_ids: Sequence[str], timeout_s: float | None = None
    ) -> Held:
        """What the store holds by id, decisions and other requests' reservations; empty
        (never an error) when the store is unavailable (or did not answer within
        ``timeout_s``; default: the client's deadline)."""
        if not transaction_ids:
            return {}
        try:
            keys = self._keys(transaction_ids)
            async with asyncio.timeout(timeout_s):  # the whole call (None: each read's own)
                raws = await (
                    self._cluster.mget(keys)
                    if self._cluster is not None
                    else self._call(pack_command(b"MGET", *keys), timeout_s)
                )
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return {}
        found, unreadable = self._decoded(transaction_ids, raws)
        if unreadable:
            # Dropped, so that the fresh decision can take its place.
            try:
                if self._cluster is not None:
                    await self._cluster.delete(self._keys(unreadable))
                else:
                    await self._call(pack_command(b"DEL", *self._keys(unreadable)))
            except (RedisError, OSError) as exc:
                self._failed("delete", exc)
        return found

    async def reserve_many(
        self,
        transaction_ids: Sequence[str],
        payloads: Sequence[str],
        token: bytes,
        *,
        pending_ms: int,
    ) -> Held:
        """Reserve, for ``pending_ms``, each id the store holds nothing for (with the marker of
        the request whose ``token`` it is); what it held for the others. Empty (never an error)
        when the store is unavailable: then nothing is reserved, and :meth:`settle_behind`
        writes where nobody else has."""
        if not transaction_ids:
            return {}
        keys = self._keys(transaction_ids)
        try:
            raws = await self._run(
                _RESERVE,
                keys,
                [b"%d" % pending_ms, *(pending_marker(payload, token) for payload in payloads)],
            )
        except (RedisError, OSError) as exc:
            self._failed("reserve", exc)
            return {}
        found, unreadable = self._decoded(transaction_ids, raws)
        if unreadable:
            # Replaced by this request's reservation, so that its decision can take their place.
            index = {t: i for i, t in enumerate(transaction_ids)}
            try:
                for transaction_id in unreadable:
                    marker = pending_marker(payloads[index[transaction_id]], token)
                    if self._cluster is not None:
                        await self._cluster.set_px(keys[index[transaction_id]], marker, pending_ms)
                    else:
                        await self._call(
                            pack_command(
                                b"SET",
                                keys[index[transaction_id]],
                                marker,
                                b"PX",
                                b"%d" % pending_ms,
                            )
                        )
            except (RedisError, OSError) as exc:
                self._failed("reserve", exc)
        return found

    async def settle(
        self, entries: Sequence[tuple[str, bytes]], token: bytes, *, overwrite: bool
    ) -> list[int]:
        """Write each encoded decision (:func:`encode_entry`) where this request's marker is, or
        nothing is; with ``overwrite``, over whatever is there. An empty entry deletes this
        request's marker (a degraded answer is not kept). 1 where a decision was written."""
        if not entries:
            return []
        written = await self._write(
            _SETTLE,
            [t for t, _ in entries],
            [token, b"%d" % self.ttl_s, b"1" if overwrite else b"0", *(e for _, e in entries)],
        )
        # ``written`` is empty when the store was unavailable: nothing to say then.
        overtaken = [t for (t, entry), w in zip(entries, written, strict=False) if entry and not w]
        if overtaken:
            # Only when a marker outlived its reservation, or a rescore wrote first.
            self.metrics.decision_store.labels("overtaken").inc(len(overtaken))
            logger.warning(
                "decisions not stored: another request's value was there",
                extra={"transaction_ids": overtaken[:10]},
            )
        return written

    async def put_first(
        self,
        entries: Sequence[tuple[str, bytes]],
        *,
        overwrite: bool,
        timeout_s: float | None = None,
    ) -> list[str]:
        """Write each encoded decision where the store holds nothing (the first writer wins;
        with ``overwrite``, over whatever is there), before answering: the batch path, whose
        reservations would cost Redis more than the round trip costs the batch. The ids not
        written (another request's decision or reservation was there); none when the store
        is unavailable (or did not answer within ``timeout_s``; default: the client's
        deadline)."""
        if not entries:
            return []
        written = await self._write(
            _PUT,
            [t for t, _ in entries],
            [b"0" if overwrite else b"1", b"%d" % self.ttl_s, *(e for _, e in entries)],
            timeout_s,
        )
        return [
            t for (t, _), w in zip(entries, written, strict=False) if not w
        ]  # [] if unavailable

    async def _write(
        self,
        script: _Script,
        transaction_ids: Sequence[str],
        args: Sequence[bytes],
        timeout_s: float | None = None,
    ) -> list[int]:
        """Run a writing script over the ids' keys: 1 where it stored a decision (counted),
        else 0; nothing (logged, counted) when the store is unavailable."""
        try:
            keys = self._keys(transaction_ids)
            async with asyncio.timeout(timeout_s):  # the whole call, a script loaded again too
                written: list[int] = await self._run(script, keys, args, timeout_s)
        except (RedisError, OSError) as exc:
            self._failed("put", exc)
            return []
        stored = sum(written)
        if stored:
            self.metrics.decision_store.labels("stored").inc(stored)
        return written

    def settle_behind(
        self, entries: Callable[[], Sequence[tuple[str, bytes]]], token: bytes, *, overwrite: bool
    ) -> None:
        """:meth:`settle` of what ``entries()`` makes, both run after the answer has gone (the
        outcome is counted and logged); :meth:`drain` waits for what is in flight."""
        task = asyncio.get_running_loop().create_task(self._settle_later(entries, token, overwrite))
        self._behind.add(task)
        task.add_done_callback(self._behind.discard)

    async def _settle_later(
        self, entries: Callable[[], Sequence[tuple[str, bytes]]], token: bytes, overwrite: bool
    ) -> None:
        try:
            made = entries()
        except Exception:
            self.metrics.decision_store.labels("error").inc()
            logger.exception("decisions not stored: their entries could not be made")
            return
        if made:
            await self.settle(made, token, overwrite=overwrite)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for the writes behind answers still in flight: at
        shutdown, before the connection pool closes."""
        if self._behind:
            await asyncio.wait(set(self._behind), timeout=timeout_s)

    async def ping(self) -> tuple[bool, str]:
        try:
            if self._cluster is not None:
                await self._cluster.ping()
            else:
                await self._call(pack_command(b"PING"))
        except (RedisError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, "reachable"

    def _failed(self, operation: str, exc: Exception) -> None:
        self.metrics.decision_store.labels("error").inc()
        logger.warning(
            "decision store unavailable; answering without it",
            extra={"operation": operation, "error": f"{type(exc).__name__}: {exc}"},
        )
