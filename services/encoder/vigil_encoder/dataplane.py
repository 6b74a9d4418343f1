"""The encoder's data plane: keys + request fields in, ordered feature vectors out.

Free of any HTTP framework: routes in ``rest.py`` hand it parsed requests (rows as plain dicts,
or the rows' columns as :class:`BatchColumns`) and return what it gives back (an
:class:`EncodedBatch`, whose binary and JSON forms are the answer); every failure is an
``EncoderError``. Either form is checked into the one representation the batch is encoded
from: entity columns (join key -> each row's value) and request columns (request field -> each
row's converted value); a batch sent as columns gets there without an object per row.

One batch is one pipelined Redis round trip: an HMGET per distinct (entity, view), reading the
fields Feast wrote for the view (the service's features and its on-demand inputs) and the view's
``_ts`` field. Freshness is enforced here because Feast does not enforce a view's TTL online
(feast-dev/feast#6821): a row older than its TTL is served as missing, which is what training
saw, since Feast's point-in-time join drops rows older than the TTL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, repeat
from operator import add, itemgetter, ne, sub
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from vigil_contracts import entity_rows, windows
from vigil_contracts.encoding import EncodeRequest, binary_header, encode_binary_flat
from vigil_contracts.entity_history import KINDS, HistoryRecord, history_key
from vigil_encoder.errors import (
    EncoderNotReady,
    FeatureServiceNotFound,
    FeatureStoreUnavailable,
    SpecError,
    TooManyRows,
)
from vigil_encoder.feast_values import decode_timestamp, decode_timestamp_us, decode_values
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.plan import (
    ColumnsTransform,
    OnDemandPlan,
    ServicePlan,
    VectorTransform,
    load_plans,
)
from vigil_encoder.store import OnlineStore
from vigil_encoder.validation import check_columns, check_request_columns
from vigil_encoder.view_markers import ViewMarkers
from vigil_servicekit.gc_tuning import collector_paused

logger = logging.getLogger(__name__)

_NAN = math.nan
HIT, MISS, STALE = "hit", "miss", "stale"


@dataclass(frozen=True, slots=True)
class BatchColumns:
    """The rows of an encode request as columns (``EncodeColumns``' ``entities`` and
    ``request``, as sent): row ``i`` is the ``i``-th value of every column, and every column
    holds ``n_rows`` values. Not yet checked against a feature service."""

    entities: Mapping[str, Sequence[str]]
    request: Mapping[str, Sequence[Any]]
    n_rows: int

    def __len__(self) -> int:
        return self.n_rows


@dataclass(slots=True)
class ViewRead:
    """One (entity, view) as read, with its parts of the output vectors ready to concatenate.

    ``od_values[j]`` is what on-demand view ``j`` reads from this view, in the order of the
    layout's ``od_names[v][j]`` (None where the entity is missing or its row is stale; shared
    between rows, never written); the ``chunk_*`` lists are the vector entries of the view's
    features in the service's order. A row's ``missing`` flags are computed from its values
    (missing is exactly "no value"), so they are not kept here.
    """

    od_values: tuple[Sequence[Any], ...]
    chunk_values: list[float]  # NaN = missing
    chunk_ages: list[float]  # NaN where the value is missing
    chunk_stale: list[bool]
    stale: bool
    age: float = _NAN
    """The row's age in seconds (NaN: no row, or no stamp): the age of what an on-demand view
    finishes from it (the windows)."""
    stamp_us: int | None = None
    """A tiled view's row: its stamp in µs (its newest event's time + 1 µs; see :func:`_recut`)."""


def _columns_transform(od: OnDemandPlan) -> ColumnsTransform | None:
    """How to compute ``od``'s vector entries of many rows from their inputs as columns, as
    output columns in vector order (None: no column form)."""
    impl = od.impl
    columns = impl.columns
    if columns is None:
        return None
    positions = [impl.outputs.index(name) for name in od.vector_outputs]
    if positions == list(range(len(impl.outputs))):
        return columns

    def chosen(inputs: Mapping[str, Sequence[Any]]) -> Sequence[Sequence[float]] | None:
        outputs = columns(inputs)
        return None if outputs is None else [*map(outputs.__getitem__, positions)]

    return chosen


def _vector_transform(od: OnDemandPlan) -> tuple[VectorTransform, frozenset[str] | None]:
    """How to compute ``od``'s vector entries from a row's inputs, and the only inputs it reads
    (None: any)."""
    impl = od.impl
    vector = impl.vector
    if vector is not None:
        positions = [impl.outputs.index(name) for name in od.vector_outputs]
        if positions == list(range(len(impl.outputs))):
            return vector, impl.reads
        return (lambda row: [*map(vector(row).__getitem__, positions)]), impl.reads
    transform, names = impl.transform, od.vector_outputs

    def plain(row: Mapping[str, Any]) -> list[float]:
        outputs = transform(row)
        # A finite number as a float; None, NaN and inf are missing: NaN (NaN - NaN and
        # inf - inf are NaN, which is not 0).
        return [
            _NAN if value is None or value - value != 0.0 else float(value)
            for value in map(outputs.get, names)
        ]

    return plain, None


#: The share of the caller's budget (``TIMEOUT_HEADER``) the store's round trip may use; the
#: rest is for finishing the vectors and answering. A single row's budget (the gateway's
#: 150 ms) is below the store's own deadline, which then holds.
STORE_SHARE = 0.8

#: Binary headers kept per plan (one per batch size met; about 2 kB each).
_HEADERS_KEPT = 256


class _Layout:
    """What assembling rows of one plan needs, computed once per plan (not per row): the reads
    of an absent entity, the on-demand inputs each view feeds, the all-fresh stale flags, the
    binary headers already made."""

    def __init__(self, plan: ServicePlan) -> None:
        self.plan = plan
        self.width = len(plan.feature_names)
        vectors = [_vector_transform(od) for od in plan.on_demand]
        self.od_vectors = tuple(vector for vector, _ in vectors)
        self.od_columns = tuple(_columns_transform(od) for od in plan.on_demand)
        # od_pairs[v][j]: (position, short name) of what on-demand view j reads from view v.
        # An input the transform never reads is not copied into every row's inputs.
        self.od_pairs = tuple(
            tuple(
                tuple(pair for pair in od.view_inputs(v) if reads is None or pair[1] in reads)
                for od, (_, reads) in zip(plan.on_demand, vectors, strict=True)
            )
            for v in range(len(plan.views))
        )
        self.od_views = tuple(
            tuple(v for v in od.input_views if self.od_pairs[v][j])
            for j, od in enumerate(plan.on_demand)
        )
        # Per view: its vector features' values, and the values each on-demand view reads from
        # it (None: it feeds none), each taken from the decoded values in one C call; their
        # names are od_names[v][j].
        self.vector_getters = tuple(_getter(view.vector_positions) for view in plan.views)
        self.od_names = tuple(
            tuple(tuple(name for _, name in pairs) for pairs in view_pairs)
            for view_pairs in self.od_pairs
        )
        self.od_getters = tuple(
            tuple(_getter([p for p, _ in pairs]) for pairs in view_pairs)
            if any(view_pairs)
            else None
            for view_pairs in self.od_pairs
        )
        self.ttls = tuple(view.ttl_seconds for view in plan.views)
        self.od_fresh = tuple([False] * len(od.vector_outputs) for od in plan.on_demand)
        self.od_stale = tuple([True] * len(od.vector_outputs) for od in plan.on_demand)
        # Per on-demand view: the views whose staleness its outputs share (none for most).
        self.od_stale_views = tuple(
            od.input_views if od.impl.stale_with_inputs else () for od in plan.on_demand
        )
        self.miss: list[ViewRead] = []
        self.stale: list[ViewRead] = []
        for v, view in enumerate(plan.views):
            k = len(view.vector_positions)
            # Shared by every absent entity's row: the inputs are read, never written.
            nothing = tuple((None,) * len(pairs) for pairs in self.od_pairs[v])
            self.miss.append(ViewRead(nothing, [_NAN] * k, [_NAN] * k, [False] * k, False))
            self.stale.append(ViewRead(nothing, [_NAN] * k, [_NAN] * k, [True] * k, True))
        self.fresh_chunks = [[False] * len(view.vector_positions) for view in plan.views]
        # Assembly order -> the model's order, in one C call per row (itemgetter of one index
        # would return the item itself, not a tuple: not needed then).
        order = plan.order
        self.reorder = itemgetter(*order) if order is not None and len(order) > 1 else None
        self.headers: dict[int, bytes] = {}
        # Per view: the join key of a tiled view's entity, whose history the streamer keeps
        # (see _recut), else None.
        self.tiled = tuple(
            view.join_keys[0]
            if view.name in windows.TILES
            and len(view.join_keys) == 1
            and KINDS.get(view.join_keys[0]) == view.name
            and any(self.od_names[v])
            else None
            for v, view in enumerate(plan.views)
        )
        self.any_tiled = any(key is not None for key in self.tiled)

    def binary_header(self, n_rows: int) -> bytes:
        header = self.headers.get(n_rows)
        if header is None:
            plan = self.plan
            header = binary_header(plan.name, plan.feature_names, plan.feature_contract, n_rows)
            if len(self.headers) < _HEADERS_KEPT:
                self.headers[n_rows] = header
        return header


def _getter(positions: Sequence[int]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """``values -> [values[p] for p in positions]`` as one C call (a slice where they follow
    each other, as a view's vector features usually do)."""
    start = positions[0] if positions else 0
    if tuple(positions) == tuple(range(start, start + len(positions))):
        return itemgetter(slice(start, start + len(positions)))
    return itemgetter(*positions)  # two or more, so a tuple


def _read(
    layout: _Layout, v: int, reply: list[bytes | None], now: float, memo: dict[bytes, Any]
) -> tuple[ViewRead, str]:
    stamp_us = None
    if layout.tiled[v] is None:
        ts = decode_timestamp(reply[-1])
    else:  # its stamp in whole µs too (_past_rows)
        stamp_us = decode_timestamp_us(reply[-1])
        ts = None if stamp_us is None else stamp_us / 1e6
    raws = reply[:-1]
    if ts is None and not any(raws):
        return layout.miss[v], MISS
    age = None if ts is None else max(0.0, now - ts)
    ttl = layout.ttls[v]
    if ttl is not None and age is not None and age > ttl:
        return layout.stale[v], STALE
    values = decode_values(raws, memo)
    stored = layout.vector_getters[v](values)
    # A vector entry is a finite float, or NaN for missing (None, NaN and inf). Mostly every
    # value is there and finite: then one C call converts them all, and their sum is finite.
    chunk = list(map(float, stored)) if None not in stored else None
    if chunk is not None and (total := sum(chunk)) - total == 0.0:
        ages = [_NAN if age is None else age] * len(chunk)
    else:
        chunk = []
        for value in stored:
            value = _NAN if value is None else float(value)
            chunk.append(value if value - value == 0.0 else _NAN)  # NaN - NaN, inf - inf: NaN
        ages = [_NAN if x != x or age is None else age for x in chunk]
    od_getters = layout.od_getters[v]
    if od_getters is None:
        od_values = layout.miss[v].od_values  # empty: shared
    elif len(od_getters) == 1:
        od_values = (od_getters[0](values),)
    else:
        od_values = tuple([get(values) for get in od_getters])
    return ViewRead(
        od_values,
        chunk,
        ages,
        layout.fresh_chunks[v],
        False,
        _NAN if age is None else age,
        stamp_us,
    ), HIT


@dataclass(slots=True)
class EncodedBatch:
    """The answer to one encode request as flat row-major lists of ``n_rows`` x ``width``
    entries in the service's order: row ``i`` is ``[i * width:(i + 1) * width]``.

    A missing value or age is NaN: orjson writes NaN as JSON ``null`` (the contract's missing),
    and the binary form packs the floats as they are. :meth:`binary` is the answer's binary
    form, :meth:`response` its JSON form (``vigil_contracts.encoding.EncodeResponse``).
    """

    layout: _Layout = field(repr=False)
    n_rows: int
    values: list[float]
    age_seconds: list[float]
    stale: list[bool]
    any_stale: bool = True
    """False only if no entry of ``stale`` is True (then its bytes are all zero)."""

    @property
    def missing(self) -> list[bool]:
        """Missing is exactly "no value" (NaN != NaN)."""
        return list(map(ne, self.values, self.values))

    @property
    def width(self) -> int:
        return self.layout.width

    def rows(self) -> list[dict[str, Any]]:
        """Each row as an ``EncodedRow`` dict (``values``, ``missing``, ``stale``,
        ``age_seconds``)."""
        width = self.layout.width
        values, missing, stale, ages = self.values, self.missing, self.stale, self.age_seconds
        starts = range(0, self.n_rows * width, width) if width else repeat(0, self.n_rows)
        return [
            {
                "values": values[i : i + width],
                "missing": missing[i : i + width],
                "stale": stale[i : i + width],
                "age_seconds": ages[i : i + width],
            }
            for i in starts
        ]

    def response(self) -> dict[str, Any]:
        """The JSON answer of ``/v1/encode`` as plain data (``EncodeResponse``)."""
        plan = self.layout.plan
        return {
            "feature_service": plan.name,
            "feature_names": plan.feature_names,
            "feature_contract": plan.feature_contract,
            "rows": self.rows(),
        }

    def binary(self) -> tuple[bytes, int]:
        """(binary body, header length): the answer's binary form, as ``encode_binary`` of
        :meth:`response` would make it."""
        values, stale = self.values, self.stale
        # The flags go to bytes straight from the comparisons, without a list between.
        return encode_binary_flat(
            self.layout.binary_header(self.n_rows),
            values,
            self.age_seconds,
            bytes(map(ne, values, values)),
            stale if self.any_stale else bytes(len(stale)),
        )


class Encoder:
    def __init__(
        self, spec_path: Path, store: OnlineStore, metrics: EncoderMetrics, max_rows: int
    ) -> None:
        self.spec_path = spec_path
        self.store = store
        self.metrics = metrics
        self.max_rows = max_rows
        self.plans: dict[str, ServicePlan] | None = None
        self.spec_error: str | None = "not loaded yet"
        self.markers = ViewMarkers(store, metrics)
        self._layouts: dict[str, _Layout] = {}
        self._counters: dict[tuple[Counter, tuple[str, ...]], Counter] = {}

    # spec
    def load_spec(self) -> bool:
        """(Re)compile the serving spec; on failure keep the previous plans and the reason."""
        try:
            plans = load_plans(self.spec_path)
        except SpecError as exc:
            self.spec_error = str(exc)
            logger.error("serving spec not loaded", extra={"reason": self.spec_error})
            return False
        self.plans, self.spec_error = plans, None
        logger.info(
            "serving spec loaded",
            extra={
                "spec_path": str(self.spec_path),
                "feature_services": {n: p.feature_contract for n, p in plans.items()},
            },
        )
        return True

    def _plans(self) -> dict[str, ServicePlan]:
        # Only the readiness probe retries a missing spec: requests must not each re-read it.
        if self.plans is None:
            raise EncoderNotReady(f"the serving spec is not loaded: {self.spec_error}")
        return self.plans

    def plan(self, name: str) -> ServicePlan:
        plans = self._plans()
        plan = plans.get(name)
        if plan is None:
            raise FeatureServiceNotFound(
                f"no feature service {name!r}; this encoder serves {sorted(plans)}"
            )
        return plan

    # metadata
    def feature_services(self) -> dict[str, Any]:
        return {"feature_services": [p.summary() for p in self._plans().values()]}

    def feature_service(self, name: str) -> dict[str, Any]:
        return self.plan(name).describe()

    # health
    async def readiness(self) -> dict[str, Any]:
        """Each dependency's state; raise EncoderNotReady naming the ones that are not ready.

        ``features``: the online store holds every view the spec serves (``view_markers``),
        checked once the spec is loaded and Redis answers."""
        if self.plans is None:
            self.load_spec()  # a spec written after startup (e.g. `vigil apply`) is picked up
        redis_error = await self.store.ping()
        checks: dict[str, dict[str, Any]] = {
            "spec": {"ready": self.plans is not None, "detail": self.spec_error or "loaded"},
            "redis": {"ready": redis_error is None, "detail": redis_error or "PONG"},
        }
        if self.plans is not None and redis_error is None:
            try:
                checks["features"] = await self.markers.check(self.plans.values())
            except FeatureStoreUnavailable as exc:
                checks["features"] = {"ready": False, "detail": exc.detail}
        failing = [name for name, check in checks.items() if not check["ready"]]
        if failing:
            raise EncoderNotReady(
                "not ready: " + "; ".join(f"{n}: {checks[n]['detail']}" for n in failing),
                extensions={"checks": checks},
            )
        return {"ready": True, "checks": checks}

    async def refresh_view_ages(self) -> None:
        """Update the feature views' age gauge (before a metrics scrape)."""
        if self.plans is not None:
            await self.markers.refresh(self.plans.values())

    # encoding
    async def encode(self, request: EncodeRequest) -> dict[str, Any]:
        """:meth:`encode_rows` of a validated ``EncodeRequest``."""
        return await self.encode_rows(
            request.feature_service,
            [{"entities": row.entities, "request": row.request} for row in request.rows],
        )

    async def encode_rows(self, feature_service: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The JSON answer of ``/v1/encode`` (``vigil_contracts.encoding.EncodeResponse``, NaN
        where missing) for rows shaped as ``EncodeRow``; see :meth:`encode_batch`."""
        return (await self.encode_batch(feature_service, rows)).response()

    async def encode_batch(
        self,
        feature_service: str,
        batch: list[dict[str, Any]] | BatchColumns,
        budget_s: float | None = None,
    ) -> EncodedBatch:
        """The answer to a batch of ``feature_service``: rows shaped as ``EncodeRow``
        (``{"entities": {...}, "request": {...}}``), or their columns (answered exactly as the
        same rows would be). ``budget_s``: how long the caller waits (``TIMEOUT_HEADER``); the
        store's round trip may use :data:`STORE_SHARE` of it, when that is longer than the
        store's own deadline."""
        plan = self.plan(feature_service)
        n = len(batch)
        if n > self.max_rows:
            raise TooManyRows(f"{n} rows is more than the {self.max_rows} allowed per request")
        entities: Mapping[str, Sequence[str]]
        request_columns: Mapping[str, Sequence[Any]]
        if isinstance(batch, BatchColumns):
            entities = batch.entities
            request_columns = check_request_columns(plan, entities, batch.request)
        else:
            request_columns = check_columns(plan, batch)
            entities = _entity_columns(plan, batch)
        timeout_s = self.store.timeout_s
        if budget_s is not None:
            timeout_s = max(timeout_s, STORE_SHARE * budget_s)
        return await self._encode(plan, entities, request_columns, n, timeout_s)

    async def _encode(
        self,
        plan: ServicePlan,
        entities: Mapping[str, Sequence[str]],
        request_columns: Mapping[str, Sequence[Any]],
        n: int,
        store_timeout_s: float,
    ) -> EncodedBatch:
        """The answer to ``n`` checked rows as columns: join key -> each row's value (the
        plan's join keys all there), request field -> each row's converted value; the store's
        round trips within ``store_timeout_s``."""
        layout = self._layout(plan)

        # One HMGET per distinct (entity, view); row_reads[v][i] = index of row i's read of view v.
        commands: list[bytes] = []
        command_views: list[int] = []
        row_reads: list[list[int]] = []
        if n == 1:  # a single transaction: one HMGET per view, without the batch's dedupe
            for v, view in enumerate(plan.views):
                codec = view.codec
                single = codec.single_key
                commands.append(
                    view.hmget.pack(
                        codec.single_redis_key(entities[single][0])
                        if single is not None
                        else codec.redis_key({key: entities[key][0] for key in codec.join_keys})
                    )
                )
                command_views.append(v)
                row_reads.append([v])
        else:
            for v, view in enumerate(plan.views):
                codec, pack = view.codec, view.hmget.pack
                single = codec.single_key
                # Keyed by the entity value itself where there is one join key (a repeated card or
                # merchant is then not even serialised again), else by its values in key order.
                idents: Sequence[Any] = (
                    entities[single]
                    if single is not None
                    else list(zip(*[entities[k] for k in codec.join_keys], strict=True))
                )
                start = len(commands)
                distinct = dict.fromkeys(idents)  # in order of first appearance
                index = dict(zip(distinct, range(start, start + len(distinct)), strict=True))
                if single is not None:
                    commands += map(pack, map(codec.single_redis_key, distinct))
                else:
                    commands += [
                        pack(codec.redis_key(dict(zip(codec.join_keys, ident, strict=True))))
                        for ident in distinct
                    ]
                command_views += repeat(v, len(distinct))
                row_reads.append(list(map(index.__getitem__, idents)))

        # One deadline for the store's round trips: the HMGETs, and the rare second (_recut).
        deadline = asyncio.get_running_loop().time() + store_timeout_s
        replies = await self.store.hmget_many(commands, store_timeout_s)
        now = time.time()
        reads: list[ViewRead] = []
        tally: dict[tuple[int, str], int] = {}
        memo: dict[bytes, Any] = {}
        with collector_paused():  # objects freed by reference counting, not cycles
            for v, reply in zip(command_views, replies, strict=True):
                read, result = _read(layout, v, reply, now, memo)
                reads.append(read)
                tally[(v, result)] = tally.get((v, result), 0) + 1
            past = _past_rows(layout, request_columns, reads, row_reads)
            if not past:
                batch = _assemble(layout, request_columns, n, reads, row_reads)
        if past:
            await self._recut(layout, entities, past, reads, row_reads, deadline)
            with collector_paused():
                batch = _assemble(layout, request_columns, n, reads, row_reads)

        for (v, result), count in tally.items():
            self._counter(self.metrics.view_reads, plan.views[v].name, result).inc(count)
        self._counter(self.metrics.rows_encoded, plan.name).inc(n)
        return batch

    async def _recut(
        self,
        layout: _Layout,
        entities: Mapping[str, Sequence[str]],
        past: list[tuple[int, int, int]],
        reads: list[ViewRead],
        row_reads: list[list[int]],
        deadline: float,
    ) -> None:
        """Cut the tiles of each ``past`` row (view, row, its instant in µs) again at its
        instant, from its entity's history (``entity_rows.tiles_before``): its stored row holds
        this transaction or later ones (a transaction scored again once the streamer applied
        it, or one that arrived after later ones of its merchant), whose tiles would count
        them. One more round trip, for these rows only, within the store's deadline (``deadline``,
        on the loop's clock): per merchant, the history's events its row holds from the
        earliest of its rows' instants on (a few, for a transaction that arrived out of order;
        at most its share of :data:`RECUT_MAX_EVENTS`), to take out of each row's own tiles, and its first
        sighting: none when the merchant has no history (a store loaded by ``feast
        materialize`` alone keeps none); at or after ``t``, the merchant was unknown at ``t``
        (its windows are missing, as offline). Each row gets its own read (two rows of one
        merchant may be at different instants). Where the history cannot say (none, more events
        than the bound, a read that failed, an unreadable member), the stored tiles are served,
        as before there was a history, and counted by why."""
        plan = layout.plan
        # Rows of one merchant share its read: its newest time and one read of its history.
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for v, i, t_us in past:
            groups.setdefault((v, row_reads[v][i]), []).append((i, t_us))
        commands: list[tuple[str, ...]] = []
        # A request's events, shared among its merchants: a bound on the CPU a batch of
        # transactions far older than their merchants' rows can cost.
        bound = max(RECUT_MIN_EVENTS, RECUT_MAX_EVENTS // len(groups))
        for (v, r), rows in groups.items():
            join_key, stamp = layout.tiled[v], reads[r].stamp_us
            assert join_key is not None and stamp is not None  # _past_rows picks these only
            key = history_key(join_key, entities[join_key][rows[0][0]])
            start, newest = min(t for _, t in rows), stamp - entity_rows.ROW_DELAY_US
            limit = str(bound + 1)
            commands.append(("ZRANGEBYSCORE", key, str(start), str(newest), "LIMIT", "0", limit))
            commands.append(("ZRANGE", key, "0", "0", "WITHSCORES"))  # its first sighting
        try:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise FeatureStoreUnavailable("the store's deadline passed")
            replies = await self.store.read_many(commands, left)
        except FeatureStoreUnavailable as exc:
            logger.warning(
                "merchant histories not read: stored tiles served", extra={"reason": exc.detail}
            )
            replies = [None] * len(commands)
        for k, ((v, r), rows) in enumerate(groups.items()):
            view = plan.views[v].name
            later, source = _later_events(replies[2 * k], replies[2 * k + 1], bound)
            self._counter(self.metrics.tiles_recut, view, source).inc(len(rows))
            if later is None:
                continue
            first, events = later
            times = [e.us for e in events]
            read = reads[r]
            # The stored lists each on-demand view reads of the merchant's row (the same for
            # all its rows); a view that reads none, or a row without them, has nothing to cut.
            inputs: dict[int, tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = {}
            for j, names in enumerate(layout.od_names[v]):
                stored = dict(zip(names, read.od_values[j], strict=True))
                lists = {name: stored.get(name) for name in windows.stored_lists(view)}
                if names and all(value is not None for value in lists.values()):
                    inputs[j] = (names, stored, lists)
            for i, t_us in rows:
                after = events[bisect_left(times, t_us) :]
                od_values = list(read.od_values)
                for j, (names, stored, lists) in inputs.items():
                    cut = entity_rows.tiles_before(view, lists, t_us, after, first)
                    od_values[j] = tuple(cut.get(name, stored[name]) for name in names)
                row_reads[v][i] = len(reads)
                reads.append(dataclasses.replace(read, od_values=tuple(od_values)))

    def _counter(self, metric: Counter, *labels: str) -> Counter:
        """``metric.labels(*labels)``, kept: a call costs a few µs, and a one-row request
        counted four."""
        child = self._counters.get((metric, labels))
        if child is None:
            child = self._counters[(metric, labels)] = metric.labels(*labels)
        return child

    def _layout(self, plan: ServicePlan) -> _Layout:
        layout = self._layouts.get(plan.name)
        if layout is None or layout.plan is not plan:
            layout = self._layouts[plan.name] = _Layout(plan)
        return layout


_ENTITIES = itemgetter("entities")

#: The most history events one request's rows are cut with (:meth:`Encoder._recut`), shared
#: among its merchants (at least :data:`RECUT_MIN_EVENTS` each): beyond its share (a popular
#: merchant's transaction scored again hours later) a merchant's stored tiles are served. A
#: member costs ~4 µs to read the first time: at most ~8 ms of a request (~64 ms for a batch of
#: 1,000 merchants, each at its floor).
RECUT_MAX_EVENTS = 2_000
RECUT_MIN_EVENTS = 16


@lru_cache(maxsize=65_536)
def _history_event(member: bytes) -> entity_rows.Event:
    """A history member (``HistoryRecord``) as the tiles sum it (members never change)."""
    r = HistoryRecord.decode(member)
    return entity_rows.event(r.t_us, r.amount_eur, r.card_id, r.merchant_id, r.device_id, r.country)


def _later_events(
    members: list[bytes] | None, first: Sequence[Any] | None, bound: int
) -> tuple[tuple[int, list[entity_rows.Event]] | None, str]:
    """((first sighting µs, events in time order), "history") from a merchant's history reads
    (``ZRANGEBYSCORE ... LIMIT``, ``ZRANGE key 0 0 WITHSCORES``: a flat [member, score], or
    [(member, score)] where redis-py pairs them); (None, why) where they cannot say:
    ``error`` (not read, or a member or score unreadable), ``no_history``, ``over_cap`` (more
    than ``bound`` members)."""
    if members is None or first is None:
        return None, "error"
    if not first:
        return None, "no_history"
    if len(members) > bound:
        return None, "over_cap"
    try:
        score = first[0][1] if isinstance(first[0], (tuple, list)) else first[1]
        return (int(float(score)), [_history_event(m) for m in members]), "history"
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        logger.warning(
            "merchant history unreadable: stored tiles served", extra={"error": repr(exc)}
        )
        return None, "error"


def _past_rows(
    layout: _Layout,
    requests: Mapping[str, Sequence[Any]],
    reads: list[ViewRead],
    row_reads: list[list[int]],
) -> list[tuple[int, int, int]]:
    """(view, row, the row's instant in µs) of each row whose tiled view's stored row is
    stamped after its instant (its newest event is at or after it): :meth:`Encoder._recut`.
    A live transaction is newer than every stored row: one comparison of the newest stamp
    with the oldest instant settles the batch."""
    if not layout.any_tiled:
        return []
    instants = requests.get(windows.REQUEST_FIELD)
    if not instants:
        return []
    stamps = [read.stamp_us for read in reads if read.stamp_us is not None]
    if not stamps or max(stamps) <= windows.request_us(float(min(instants))):
        return []
    past: list[tuple[int, int, int]] = []
    for v, join_key in enumerate(layout.tiled):
        if join_key is None:
            continue
        for i, r in enumerate(row_reads[v]):
            stamp = reads[r].stamp_us
            if stamp is not None and stamp > (t_us := windows.request_us(float(instants[i]))):
                past.append((v, i, t_us))
    return past


def _entity_columns(plan: ServicePlan, rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """The plan's join keys as columns of checked rows (each has them all)."""
    if len(rows) == 1:
        entities = rows[0]["entities"]
        return {key: [entities[key]] for key in plan.join_keys}
    entities = list(map(_ENTITIES, rows))
    return {key: list(map(itemgetter(key), entities)) for key in plan.join_keys}


def _assemble(
    layout: _Layout,
    requests: Mapping[str, Sequence[Any]],
    n: int,
    reads: list[ViewRead],
    row_reads: list[list[int]],
) -> EncodedBatch:
    """The rows' vectors from their view reads and request fields (as columns: field -> each
    row's value), in the service's order.

    A row is its views' chunks, then each on-demand view's outputs, back to back (the
    assembly order), put in the service's order only if the service interleaves them.
    """
    if n == 1:
        request = {name: column[0] for name, column in requests.items()}
        values, ages, stale = _one_row(layout, request, [reads[r[0]] for r in row_reads])
    else:
        values, ages, stale = _many_rows(layout, requests, n, reads, row_reads)
    reorder = layout.reorder
    if reorder is not None:
        width = layout.width
        values = _reordered(values, reorder, width)
        ages = _reordered(ages, reorder, width)
        stale = _reordered(stale, reorder, width)
    return EncodedBatch(layout, n, values, ages, stale, any(read.stale for read in reads))


def _one_row(
    layout: _Layout, request: dict[str, Any], views: list[ViewRead]
) -> tuple[list[float], list[float], list[bool]]:
    """(values, ages, stale) of one row in assembly order: a single transaction's request
    does without the setup :func:`_many_rows` pays once per batch."""
    values: list[float] = []
    ages: list[float] = []
    stale_any = False
    for read in views:
        values += read.chunk_values
        ages += read.chunk_ages
        stale_any = stale_any or read.stale
    od_names = layout.od_names
    for j, vector in enumerate(layout.od_vectors):
        inputs = dict(request)
        for v in layout.od_views[j]:
            inputs.update(zip(od_names[v][j], views[v].od_values[j], strict=True))
        entries = vector(inputs)
        values += entries
        # 0.0 for a value (x - x), NaN for a missing one; plus the source row's age for the
        # outputs finished from a stored row (the windows).
        if layout.od_stale_views[j]:
            row_age = min(views[v].age for v in layout.od_stale_views[j])
            ages += map(add, map(sub, entries, entries), repeat(row_age))
        else:
            ages += map(sub, entries, entries)
    if not stale_any:
        return values, ages, [False] * layout.width
    stale: list[bool] = []
    for read in views:
        stale += read.chunk_stale
    for j, fresh in enumerate(layout.od_fresh):
        shared = any(views[v].stale for v in layout.od_stale_views[j])
        stale += layout.od_stale[j] if shared else fresh
    return values, ages, stale


def _many_rows(
    layout: _Layout,
    requests: Mapping[str, Sequence[Any]],
    n: int,
    reads: list[ViewRead],
    row_reads: list[list[int]],
) -> tuple[list[float], list[float], list[bool]]:
    """(values, ages, stale) of the rows in assembly order, flat and row-major: joined by
    ``map``, ``zip`` and ``chain`` over the rows, without a Python loop per row. An on-demand
    view with a column form is computed over the batch's columns; one without (or a batch its
    column form leaves to the rows) runs once per row."""
    values_parts: list[Iterable[Sequence[float]]] = []
    ages_parts: list[Iterable[Sequence[float]]] = []
    stale_parts: list[Iterable[Sequence[bool]]] = []
    read_values = [read.chunk_values for read in reads]
    read_ages = [read.chunk_ages for read in reads]
    read_stale = [read.chunk_stale for read in reads]
    for indices in row_reads:
        values_parts.append(map(read_values.__getitem__, indices))
        ages_parts.append(map(read_ages.__getitem__, indices))
        stale_parts.append(map(read_stale.__getitem__, indices))
    request_rows: list[dict[str, Any]] | None = None
    any_stale = any(read.stale for read in reads)
    for j, vector in enumerate(layout.od_vectors):
        found = [read.od_values[j] for read in reads]
        columns_form = layout.od_columns[j]
        outputs = None
        if columns_form is not None and n:
            inputs_by_name: dict[str, Sequence[Any]] = dict(requests)
            for v in layout.od_views[j]:
                # Each row's values from view v, turned into one column per input.
                inputs_by_name.update(
                    zip(
                        layout.od_names[v][j],
                        zip(*map(found.__getitem__, row_reads[v]), strict=True),
                        strict=True,
                    )
                )
            outputs = columns_form(inputs_by_name)
        row_ages = _source_ages(reads, row_reads, layout.od_stale_views[j], n)
        if outputs is not None:
            values_parts.append(list(zip(*outputs, strict=True)))
            # 0.0 for a value (x - x), NaN for a missing one (a column whose sum is finite
            # has no missing value); plus the source row's age for the windows.
            zeros = [0.0] * n if row_ages is None else row_ages
            ages_parts.append(
                list(
                    zip(
                        *[
                            zeros
                            if (total := sum(column)) - total == 0.0
                            else [*map(sub, column, column)]
                            if row_ages is None
                            else [*map(add, map(sub, column, column), row_ages)]
                            for column in outputs
                        ],
                        strict=True,
                    )
                )
            )
        else:
            if request_rows is None:
                request_rows = _request_rows(requests, n)
            sources = [
                map(
                    dict,
                    map(zip, repeat(layout.od_names[v][j]), map(found.__getitem__, row_reads[v])),
                )
                for v in layout.od_views[j]
            ]
            inputs = request_rows  # transforms read their inputs, never write them
            for source in sources:
                inputs = [{**request, **a} for request, a in zip(inputs, source, strict=True)]
            vectors = list(map(vector, inputs))
            values_parts.append(vectors)
            # 0.0 for a value (x - x), NaN for a missing one; plus the source row's age.
            if row_ages is None:
                ages_parts.append([[*map(sub, entries, entries)] for entries in vectors])
            else:
                width = len(layout.od_fresh[j])
                ages_parts.append(
                    [
                        [a] * width  # every entry a finite value (their sum is finite)
                        if (total := sum(entries)) - total == 0.0
                        else [*map(add, map(sub, entries, entries), repeat(a))]
                        for entries, a in zip(vectors, row_ages, strict=True)
                    ]
                )
        stale_views = layout.od_stale_views[j]
        if stale_views and any_stale:
            fresh, stale_flags = layout.od_fresh[j], layout.od_stale[j]
            stale_parts.append(
                [
                    stale_flags if any(reads[row_reads[v][i]].stale for v in stale_views) else fresh
                    for i in range(n)
                ]
            )
        else:
            stale_parts.append(repeat(layout.od_fresh[j], n))

    values = list(chain.from_iterable(chain.from_iterable(zip(*values_parts, strict=True))))
    ages = list(chain.from_iterable(chain.from_iterable(zip(*ages_parts, strict=True))))
    if any_stale:
        stale = list(chain.from_iterable(chain.from_iterable(zip(*stale_parts, strict=True))))
    else:
        stale = [False] * (n * layout.width)
    return values, ages, stale


def _source_ages(
    reads: list[ViewRead], row_reads: list[list[int]], views: Sequence[int], n: int
) -> list[float] | None:
    """Per row, the age of the stored row(s) an on-demand view finishes (the oldest is not
    needed: the youngest of its sources); None for a view that finishes none."""
    if not views:
        return None
    ages = [reads[row_reads[v][i]].age for v in views for i in range(n)]
    if len(views) == 1:
        return ages
    return [min(ages[k * n + i] for k in range(len(views))) for i in range(n)]


def _request_rows(requests: Mapping[str, Sequence[Any]], n: int) -> list[dict[str, Any]]:
    """Request columns back as one dict per row."""
    if not requests:
        return [{} for _ in range(n)]
    names = list(requests)
    return [
        dict(zip(names, values, strict=True)) for values in zip(*requests.values(), strict=True)
    ]


def _reordered(flat: list[Any], reorder: itemgetter, width: int) -> list[Any]:
    rows = [flat[i : i + width] for i in range(0, len(flat), width)]
    return list(chain.from_iterable(map(reorder, rows)))
