"""The encoder's data plane: keys + request fields in, ordered feature vectors out.

Free of any HTTP framework: routes in ``rest.py`` hand it parsed requests and return what it
gives back; every failure is an ``EncoderError``.

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
from pathlib import Path
from typing import Any

from vigil_contracts.encoding import EncodeRequest

from vigil_encoder.errors import EncoderNotReady, FeatureServiceNotFound, SpecError, TooManyRows
from vigil_encoder.feast_values import decode_timestamp, decode_values
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.plan import ServicePlan, ViewPlan, load_plans
from vigil_encoder.store import OnlineStore
from vigil_encoder.validation import check_rows

logger = logging.getLogger(__name__)

HIT, MISS, STALE = "hit", "miss", "stale"


@dataclass(slots=True)
class ViewRead:
    """One (entity, view) as read, with its part of the output vector ready to concatenate.

    ``values`` are all the view's decoded fields (what on-demand views read), None when the
    entity is missing or its row is stale; the ``chunk_*`` lists are the vector entries of the
    view's features in the service's order.
    """

    values: list[Any] | None
    chunk_values: list[float | None]
    chunk_missing: list[bool]
    chunk_stale: list[bool]
    chunk_ages: list[float | None]


def _absent(view: ViewPlan, stale: bool) -> ViewRead:
    k = len(view.vector_positions)
    return ViewRead(None, [None] * k, [True] * k, [stale] * k, [None] * k)


def _number(value: Any) -> float | None:
    """A vector entry: a finite float, or None for missing (NaN and inf included)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _read(view: ViewPlan, reply: list[bytes | None], now: float,
          memo: dict[bytes, Any]) -> tuple[ViewRead, str]:
    ts = decode_timestamp(reply[-1])
    raws = reply[:-1]
    if ts is None and not any(raws):
        return _absent(view, stale=False), MISS
    age = None if ts is None else max(0.0, now - ts)
    if view.ttl_seconds is not None and age is not None and age > view.ttl_seconds:
        return _absent(view, stale=True), STALE
    values = decode_values(raws, memo)
    chunk = [_number(values[p]) for p in view.vector_positions]
    return ViewRead(
        values,
        chunk,
        [v is None for v in chunk],
        [False] * len(chunk),
        [None if v is None else age for v in chunk],
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
        """The response body of ``/v1/encode`` (``vigil_contracts.encoding.EncodeResponse``)."""
        plan = self.plan(request.feature_service)
        rows = request.rows
        if len(rows) > self.max_rows:
            raise TooManyRows(
                f"{len(rows)} rows is more than the {self.max_rows} allowed per request"
            )
        request_values = check_rows(plan, rows)
        n = len(rows)

        # One HMGET per distinct (entity, view); row_reads[v][i] = index of row i's read of view v.
        commands: list[bytes] = []
        command_views: list[ViewPlan] = []
        row_reads: list[list[int]] = []
        for view in plan.views:
            redis_key, pack = view.codec.redis_key, view.hmget.pack
            seen: dict[bytes, int] = {}
            indices: list[int] = []
            for row in rows:
                key = redis_key(row.entities)
                index = seen.get(key)
                if index is None:
                    index = seen[key] = len(commands)
                    commands.append(pack(key))
                    command_views.append(view)
                indices.append(index)
            row_reads.append(indices)

        replies = await self.store.hmget_many(commands)
        now = time.time()
        reads: list[ViewRead] = []
        tally: dict[tuple[str, str], int] = {}
        memo: dict[bytes, Any] = {}
        for view, reply in zip(command_views, replies):
            read, result = _read(view, reply, now, memo)
            reads.append(read)
            tally[(view.name, result)] = tally.get((view.name, result), 0) + 1

        out_rows = [_assemble(plan, request_values[i], [reads[r[i]] for r in row_reads])
                    for i in range(n)]

        for (view_name, result), count in tally.items():
            self.metrics.view_reads.labels(view_name, result).inc(count)
        self.metrics.rows_encoded.labels(plan.name).inc(n)
        return {
            "feature_service": plan.name,
            "feature_names": plan.feature_names,
            "feature_contract": plan.feature_contract,
            "rows": out_rows,
        }


def _assemble(plan: ServicePlan, request: dict[str, Any],
              views: list[ViewRead]) -> dict[str, list[Any]]:
    """One row's vector from its view reads and request fields, in the service's order."""
    values: list[float | None] = []
    missing: list[bool] = []
    stale: list[bool] = []
    ages: list[float | None] = []
    for read in views:
        values += read.chunk_values
        missing += read.chunk_missing
        stale += read.chunk_stale
        ages += read.chunk_ages
    for od in plan.on_demand:
        inputs = dict(request)
        for v, position, name in od.inputs:
            stored = views[v].values
            inputs[name] = None if stored is None else stored[position]
        outputs = od.transform(inputs)
        for name in od.vector_outputs:
            value = _number(outputs.get(name))
            values.append(value)
            if value is None:
                missing.append(True)
                ages.append(None)
            else:
                missing.append(False)
                ages.append(0.0)
            stale.append(False)
    order = plan.order
    if order is not None:
        values = [values[k] for k in order]
        missing = [missing[k] for k in order]
        stale = [stale[k] for k in order]
        ages = [ages[k] for k in order]
    return {"values": values, "missing": missing, "stale": stale, "age_seconds": ages}
