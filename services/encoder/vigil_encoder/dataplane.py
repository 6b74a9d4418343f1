"""The encoder's data plane: keys + request fields in, ordered feature vectors out.

Free of any HTTP framework: routes in ``rest.py`` hand it parsed requests (rows as plain dicts)
and return what it gives back; every failure is an ``EncoderError``.

One batch is one pipelined Redis round trip: an HMGET per distinct (entity, view), reading the
fields Feast wrote for the view (the service's features and its on-demand inputs) and the view's
``_ts`` field. Freshness is enforced here because Feast does not enforce a view's TTL online
(feast-dev/feast#6821): a row older than its TTL is served as missing, which is what training
saw, since Feast's point-in-time join drops rows older than the TTL.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from vigil_contracts.encoding import EncodeRequest

from vigil_encoder.errors import EncoderNotReady, FeatureServiceNotFound, SpecError, TooManyRows
from vigil_encoder.feast_values import decode_timestamp, decode_values
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.plan import ServicePlan, load_plans
from vigil_encoder.store import OnlineStore
from vigil_encoder.validation import check_rows

logger = logging.getLogger(__name__)

_NAN = math.nan
HIT, MISS, STALE = "hit", "miss", "stale"


@dataclass(slots=True)
class ViewRead:
    """One (entity, view) as read, with its parts of the output vectors ready to concatenate.

    ``od_inputs[j]`` is what on-demand view ``j`` reads from this view, by short name (None
    where the entity is missing or its row is stale); the ``chunk_*`` lists are the vector
    entries of the view's features in the service's order. A row's ``missing`` flags are
    computed from its values (missing is exactly "no value"), so they are not kept here.
    """

    od_inputs: tuple[dict[str, Any], ...]
    chunk_values: list[float]  # NaN = missing
    chunk_ages: list[float]  # NaN where the value is missing
    chunk_stale: list[bool]
    stale: bool


class _Layout:
    """What assembling rows of one plan needs, computed once per plan (not per row): the reads
    of an absent entity, the on-demand inputs each view feeds, the all-fresh stale flags."""

    def __init__(self, plan: ServicePlan) -> None:
        self.plan = plan
        self.width = len(plan.feature_names)
        self.od_views = tuple(od.input_views for od in plan.on_demand)
        self.od_pairs = tuple(
            tuple(od.view_inputs(v) for od in plan.on_demand) for v in range(len(plan.views))
        )
        self.od_fresh = [False] * sum(len(od.vector_outputs) for od in plan.on_demand)
        self.all_fresh = [False] * self.width
        self.miss: list[ViewRead] = []
        self.stale: list[ViewRead] = []
        for v, view in enumerate(plan.views):
            k = len(view.vector_positions)
            nothing = tuple({name: None for _, name in pairs} for pairs in self.od_pairs[v])
            self.miss.append(ViewRead(nothing, [_NAN] * k, [_NAN] * k, [False] * k, False))
            self.stale.append(ViewRead(nothing, [_NAN] * k, [_NAN] * k, [True] * k, True))
        self.fresh_chunks = [[False] * len(view.vector_positions) for view in plan.views]
        # Assembly order -> the model's order, in one C call per list (itemgetter of one index
        # would return the item itself, not a tuple: not needed then).
        order = plan.order
        self.reorder = itemgetter(*order) if order is not None and len(order) > 1 else None


def _read(layout: _Layout, v: int, reply: list[bytes | None], now: float,
          memo: dict[bytes, Any]) -> tuple[ViewRead, str]:
    view = layout.plan.views[v]
    ts = decode_timestamp(reply[-1])
    raws = reply[:-1]
    if ts is None and not any(raws):
        return layout.miss[v], MISS
    age = None if ts is None else max(0.0, now - ts)
    if view.ttl_seconds is not None and age is not None and age > view.ttl_seconds:
        return layout.stale[v], STALE
    values = decode_values(raws, memo)
    chunk: list[float] = []
    for p in view.vector_positions:
        # A vector entry: a finite float, or NaN for missing (None and inf included).
        value = values[p]
        if value is None:
            value = _NAN
        else:
            value = float(value)
            if value - value != 0.0:  # NaN or inf
                value = _NAN
        chunk.append(value)
    return ViewRead(
        tuple([{name: values[p] for p, name in pairs} for pairs in layout.od_pairs[v]]),
        chunk,
        [_NAN if x != x or age is None else age for x in chunk],
        layout.fresh_chunks[v],
        False,
    ), HIT


class Encoder:
    def __init__(self, spec_path: Path, store: OnlineStore, metrics: EncoderMetrics,
                 max_rows: int) -> None:
        self.spec_path = spec_path
        self.store = store
        self.metrics = metrics
        self.max_rows = max_rows
        self.plans: dict[str, ServicePlan] | None = None
        self.spec_error: str | None = "not loaded yet"
        self._layouts: dict[str, _Layout] = {}

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
        """Each dependency's state; raise EncoderNotReady naming the ones that are not ready."""
        if self.plans is None:
            self.load_spec()  # a spec written after startup (e.g. `vigil apply`) is picked up
        redis_error = await self.store.ping()
        checks = {
            "spec": {"ready": self.plans is not None, "detail": self.spec_error or "loaded"},
            "redis": {"ready": redis_error is None, "detail": redis_error or "PONG"},
        }
        failing = [name for name, check in checks.items() if not check["ready"]]
        if failing:
            raise EncoderNotReady(
                "not ready: " + "; ".join(f"{n}: {checks[n]['detail']}" for n in failing),
                extensions={"checks": checks},
            )
        return {"ready": True, "checks": checks}

    # encoding
    async def encode(self, request: EncodeRequest) -> dict[str, Any]:
        """:meth:`encode_rows` of a validated ``EncodeRequest``."""
        return await self.encode_rows(
            request.feature_service,
            [{"entities": row.entities, "request": row.request} for row in request.rows],
        )

    async def encode_rows(self, feature_service: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The response body of ``/v1/encode`` (``vigil_contracts.encoding.EncodeResponse``)
        for rows shaped as ``EncodeRow`` (``{"entities": {...}, "request": {...}}``).

        A missing value or age is NaN here: orjson writes NaN as JSON ``null`` (the contract's
        missing), and the binary form takes the floats as they are, without a pass to replace
        None."""
        plan = self.plan(feature_service)
        if len(rows) > self.max_rows:
            raise TooManyRows(
                f"{len(rows)} rows is more than the {self.max_rows} allowed per request"
            )
        request_values = check_rows(plan, rows)
        layout = self._layout(plan)
        n = len(rows)

        # One HMGET per distinct (entity, view); row_reads[v][i] = index of row i's read of view v.
        commands: list[bytes] = []
        command_views: list[int] = []
        row_reads: list[list[int]] = []
        for v, view in enumerate(plan.views):
            codec, pack = view.codec, view.hmget.pack
            single = codec.single_key
            seen: dict[Any, int] = {}
            indices: list[int] = []
            for row in rows:
                entities = row["entities"]
                # Keyed by the entity value itself where there is one join key: a repeated
                # card or merchant is then not even serialised again.
                ident = entities[single] if single is not None else codec.redis_key(entities)
                index = seen.get(ident)
                if index is None:
                    index = seen[ident] = len(commands)
                    key = codec.redis_key(entities) if single is not None else ident
                    commands.append(pack(key))
                    command_views.append(v)
                indices.append(index)
            row_reads.append(indices)

        replies = await self.store.hmget_many(commands)
        now = time.time()
        reads: list[ViewRead] = []
        tally: dict[tuple[int, str], int] = {}
        memo: dict[bytes, Any] = {}
        for v, reply in zip(command_views, replies):
            read, result = _read(layout, v, reply, now, memo)
            reads.append(read)
            tally[(v, result)] = tally.get((v, result), 0) + 1

        out_rows = [_assemble(layout, request_values[i], [reads[r[i]] for r in row_reads])
                    for i in range(n)]

        for (v, result), count in tally.items():
            self.metrics.view_reads.labels(plan.views[v].name, result).inc(count)
        self.metrics.rows_encoded.labels(plan.name).inc(n)
        return {
            "feature_service": plan.name,
            "feature_names": plan.feature_names,
            "feature_contract": plan.feature_contract,
            "rows": out_rows,
        }

    def _layout(self, plan: ServicePlan) -> _Layout:
        layout = self._layouts.get(plan.name)
        if layout is None or layout.plan is not plan:
            layout = self._layouts[plan.name] = _Layout(plan)
        return layout


def _assemble(layout: _Layout, request: dict[str, Any],
              views: list[ViewRead]) -> dict[str, Any]:
    """One row's vector from its view reads and request fields, in the service's order."""
    values: list[float] = []
    ages: list[float] = []
    stale_any = False
    for read in views:
        values += read.chunk_values
        ages += read.chunk_ages
        stale_any = stale_any or read.stale
    for j, od in enumerate(layout.plan.on_demand):
        inputs = dict(request)
        for v in layout.od_views[j]:
            inputs.update(views[v].od_inputs[j])
        outputs = od.transform(inputs)
        # A finite number as a float; None, NaN and inf are missing: NaN (NaN - NaN and
        # inf - inf are NaN, which is not 0).
        computed = [_NAN if value is None or value - value != 0.0 else float(value)
                    for value in map(outputs.get, od.vector_outputs)]
        values += computed
        ages += [_NAN if value != value else 0.0 for value in computed]
    if not stale_any:
        stale = layout.all_fresh.copy()
    else:
        stale = []
        for read in views:
            stale += read.chunk_stale
        stale += layout.od_fresh
    reorder = layout.reorder
    if reorder is not None:
        values = list(reorder(values))
        ages = list(reorder(ages))
        if stale_any:
            stale = list(reorder(stale))
    return {
        "values": values,
        "missing": [value != value for value in values],
        "stale": stale,
        "age_seconds": ages,
    }
