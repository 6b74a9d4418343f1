"""HTTP routes: parse the request, call the scoring pipeline, answer. No scoring logic here.

Saves: FastAPI's routing and dependency solving on the two scoring routes (~0.3 ms of CPU a
request, the servicekit's fast lane); held equal: whatever is not plainly valid goes to FastAPI,
and tests hold the lane's answers equal to FastAPI's (tests/test_gateway_fast_lane.py).

One router per resource: transactions (``/v1/transactions/...``), service health and metrics
(``/healthz``, ``/readyz``, ``/metrics``) and the demo UI (``/ui``).

The two scoring routes are also answered by the servicekit's fast lane (:func:`fast_routes`)
when the request is plainly valid: a JSON body pydantic validates straight from its bytes, no
query string. Anything else (an invalid or partly invalid body, another spelling of the content
type, ``?rescore=``) is deferred to FastAPI, whose answers (the exact 422s, the per-item errors of a
batch) stay the reference; the lane's answers are tested equal to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import files
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vigil_contracts.api import BatchRequest, BatchResponse, ScoreResponse, Transaction
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE, Problem
from vigil_gateway.authenticate import Caller, Forbidden, Unauthenticated
from vigil_gateway.decisions import answer_json
from vigil_gateway.deps import ScoringDep, Services, ServicesDep, SettingsDep, services_of
from vigil_gateway.errors import GatewayError, NotReady
from vigil_gateway.pipeline import ScoringPipeline
from vigil_gateway.readiness import readiness
from vigil_gateway.settings import GatewaySettings
from vigil_servicekit.deps import MetricsDep, RequestIdDep
from vigil_servicekit.fast_lane import Defer, FastRoute, declared_route, json_body_or_defer
from vigil_servicekit.handlers import problem_response
from vigil_servicekit.json_body import OrjsonRoute
from vigil_servicekit.request_context import arrival_of, log_fields, request_id_of

# Transaction bodies are parsed by orjson (validation and errors are FastAPI's as ever).
transactions_router = APIRouter(tags=["transactions"], route_class=OrjsonRoute)
service_router = APIRouter(tags=["service"])
ui_router = APIRouter(tags=["ui"])
# Paths are spelled out in full (no router prefix): the route's path is the template that labels
# metrics and log lines.
# Answers are serialised straight to JSON by their pydantic models (``response_model`` still
# documents them): FastAPI's response handling would validate and convert them once more.
_score_json = ScoreResponse.__pydantic_serializer__.to_json
_problem_json = Problem.__pydantic_serializer__.to_json


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for status in statuses}


# Declared for the OpenAPI document (the bearer scheme); the key itself is read by
# ``caller_of``, the one function both lanes authenticate with.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key (`vigil keys create`), as `Authorization: Bearer <key>`.",
)
_Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
TIMEOUT_HEADER = "x-request-timeout-ms"


def caller_of(request: Request, scope: str) -> Caller:
    """Stage *authenticate* for this request (both lanes): the caller, or a 401/403 problem.
    Its key id (never the key) goes on the access line."""
    services = services_of(request)
    try:
        caller = services.authenticate(request.headers.get("authorization"), scope)
    except (Unauthenticated, Forbidden) as exc:
        key_id = "none"
        if isinstance(exc, Forbidden) or "revoked" in exc.detail:
            record = services.authenticate.ring.lookup(  # type: ignore[union-attr]
                request.headers.get("authorization", "").partition(" ")[2].strip()
            )
            key_id = record.key_id if record is not None else "none"
        log_fields(request.scope)["key_id"] = key_id
        services.metrics.refused.labels(
            "forbidden" if isinstance(exc, Forbidden) else "unauthenticated", key_id
        ).inc()
        raise
    log_fields(request.scope)["key_id"] = caller.key_id
    return caller


def timeout_of(request: Request) -> float | None:
    """The caller's own time limit (``X-Request-Timeout-Ms``, validated by the route's
    ``TimeoutHeader`` or, in the lane, by ``_plain_body``), in seconds."""
    raw = request.headers.get(TIMEOUT_HEADER)
    return None if raw is None else int(raw) / 1000.0


def _valid_timeout(raw: str | None) -> bool:
    return raw is None or (raw.isascii() and raw.isdigit() and 0 < int(raw) <= 60_000)


async def _score_caller(request: Request, _credentials: _Credentials) -> Caller:
    return caller_of(request, "score")


ScoreCallerDep = Annotated[Caller, Depends(_score_caller)]
# ``int`` (not ``int | None``): the document must not offer `null` as a header value.
TimeoutHeader = Annotated[
    int,
    Header(
        alias=TIMEOUT_HEADER,
        ge=1,
        le=60_000,
        description="The caller's own time limit in milliseconds: the answer comes within it (an "
        "`uncertain` `TIMEOUT` answer at worst); the gateway's budget is never longer.",
    ),
]


RescoreQuery = Annotated[
    bool, Query(description="Score again even if a decision for this transaction_id is stored.")
]
CacheControlHeader = Annotated[
    str | None, Header(description="`no-cache` has the same effect as `rescore=true`.")
]


def wants_rescore(rescore: bool, cache_control: str | None) -> bool:
    if rescore:
        return True
    directives = (cache_control or "").lower().split(",")
    return any(d.strip() == "no-cache" for d in directives)


async def _rescore(rescore: RescoreQuery = False, cache_control: CacheControlHeader = None) -> bool:
    return wants_rescore(rescore, cache_control)


RescoreDep = Annotated[bool, Depends(_rescore)]


@transactions_router.post(
    "/v1/transactions/score",
    response_model=ScoreResponse,
    responses=_problems(400, 401, 403, 409, 413, 415, 422, 429, 503),
    summary="Score one transaction",
)
async def score_transaction(
    caller: ScoreCallerDep,
    transaction: Transaction,
    request: Request,
    scoring: ScoringDep,
    request_id: RequestIdDep,
    rescore: RescoreDep,
    _timeout: TimeoutHeader = None,  # type: ignore[assignment]
) -> Response:
    return await _score_one(transaction, request, scoring, request_id, rescore, caller)


async def _score_one(
    transaction: Transaction,
    request: Request,
    scoring: ScoringPipeline,
    request_id: str,
    rescore: bool,
    caller: Caller,
) -> Response:
    answer = await scoring.score_one(
        transaction,
        caller=caller,
        request_id=request_id,
        rescore=rescore,
        arrival=arrival_of(request.scope),
        timeout_s=timeout_of(request),
    )
    log_fields(request.scope).update(
        label=answer.label,
        degraded=answer.degraded,
        cached=answer.cached,
        model_version=answer.model.version,
        reason=answer.reasons[0].code if answer.degraded else None,
    )
    return Response(_score_json(answer), media_type="application/json")


@transactions_router.post(
    "/v1/transactions/score-batch",
    response_model=BatchResponse,
    responses=_problems(400, 401, 403, 413, 415, 422, 429, 503),
    summary="Score many transactions; one result per item, in order",
    description="Each item is validated on its own: an item that is not a valid transaction "
    "(a missing or malformed field) does not fail the request; its slot in "
    "`results` carries `status: 422` and the problem, and the other items are "
    "scored. The request as a whole is refused only when it is not a batch (422), "
    "too large (413), unauthenticated (401/403), over its key's rate (429; every "
    "item counts as a transaction) or the gateway is overloaded (503).",
)
async def score_batch(
    caller: ScoreCallerDep,
    batch: BatchRequest,
    request: Request,
    scoring: ScoringDep,
    request_id: RequestIdDep,
    rescore: RescoreDep,
    _timeout: TimeoutHeader = None,  # type: ignore[assignment]
) -> Response:
    return await _score_batch(batch.transactions, request, scoring, request_id, rescore, caller)


async def _score_batch(
    items: Sequence[Any],
    request: Request,
    scoring: ScoringPipeline,
    request_id: str,
    rescore: bool,
    caller: Caller,
) -> Response:
    outcomes = await scoring.score_batch(
        items,
        caller=caller,
        request_id=request_id,
        rescore=rescore,
        arrival=arrival_of(request.scope),
        timeout_s=timeout_of(request),
    )
    log_fields(request.scope).update(
        items=len(outcomes),
        item_errors=sum(1 for o in outcomes if isinstance(o, GatewayError)),
        degraded=sum(1 for o in outcomes if not isinstance(o, GatewayError) and o.degraded),
    )
    return Response(
        batch_response_body(outcomes, request_id=request_id, instance=request.url.path),
        media_type="application/json",
    )


def batch_response_body(
    outcomes: Sequence[ScoreResponse | GatewayError], *, request_id: str, instance: str
) -> bytes:
    """A ``BatchResponse`` document as its model would write it, each item serialised once by
    its own pydantic model and embedded as is (building a thousand ``BatchItemResult`` models
    would cost more)."""
    decisions = getattr(outcomes, "decisions", None) or {}
    results = []
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, GatewayError):
            problem = outcome.problem(instance=instance, request_id=request_id)
            results.append(
                b'{"index":%d,"status":%d,"result":null,"error":%s}'
                % (i, outcome.status, _problem_json(problem))
            )
            continue
        decision = decisions.get(id(outcome))
        body = (
            _score_json(outcome)
            if decision is None
            else answer_json(decision, outcome.request_id, outcome.cached)
        )
        results.append(b'{"index":%d,"status":200,"result":%s,"error":null}' % (i, body))
    return b'{"request_id":%s,"results":[%s]}' % (orjson.dumps(request_id), b",".join(results))


class _ValidBatch(BaseModel):
    """A ``BatchRequest`` whose every item is a valid transaction (the lane's case)."""

    model_config = ConfigDict(extra="forbid")

    transactions: list[Transaction] = Field(min_length=1)


async def _plain_body(request: Request) -> bytes:
    """The body of a request the lane takes (see the servicekit's ``json_body_or_defer``) with
    no query string (``rescore`` is parsed by FastAPI) and no invalid timeout header (FastAPI
    answers its 422)."""
    if request.scope.get("query_string") or not _valid_timeout(request.headers.get(TIMEOUT_HEADER)):
        raise Defer
    return await json_body_or_defer(request)


def _rescore_of(request: Request) -> bool:
    return wants_rescore(False, request.headers.get("cache-control"))


_Model = TypeVar("_Model", bound=BaseModel)


async def _valid_body_or_defer(request: Request, model: type[_Model]) -> _Model:
    """The plain body validated as ``model``; anything else goes to FastAPI for its answer."""
    raw = await _plain_body(request)
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        raise Defer from None


def _caller_or_defer(request: Request) -> Caller:
    """The lane's *authenticate*: a caller that is not plainly allowed is FastAPI's to answer
    (a body that is not JSON is a 422 there before any 401), as is its access line."""
    try:
        return services_of(request).authenticate(request.headers.get("authorization"), "score")
    except GatewayError:
        raise Defer from None


async def _fast_score(request: Request) -> Response:
    caller = _caller_or_defer(request)
    transaction = await _valid_body_or_defer(request, Transaction)
    log_fields(request.scope)["key_id"] = caller.key_id
    scoring = services_of(request).scoring
    return await _score_one(
        transaction,
        request,
        scoring,
        request_id_of(request.scope) or "",
        _rescore_of(request),
        caller,
    )


async def _fast_score_batch(request: Request) -> Response:
    caller = _caller_or_defer(request)
    batch = await _valid_body_or_defer(request, _ValidBatch)
    log_fields(request.scope)["key_id"] = caller.key_id
    scoring = services_of(request).scoring
    # Validated items: the pipeline takes them as they are (pydantic does not validate
    # a model instance again).
    return await _score_batch(
        batch.transactions,
        request,
        scoring,
        request_id_of(request.scope) or "",
        _rescore_of(request),
        caller,
    )


def fast_routes() -> list[FastRoute]:
    """The scoring routes for ``vigil_servicekit.fast_lane``: FastAPI's routing, dependency
    solving and body handling cost ~0.3 ms of CPU per request, and validating a body from its
    bytes is cheaper than parsing it to Python objects first."""
    return [
        FastRoute(declared_route(transactions_router, score_transaction), _fast_score, defers=True),
        FastRoute(declared_route(transactions_router, score_batch), _fast_score_batch, defers=True),
    ]


@service_router.get(
    "/healthz",
    summary="Liveness",
    responses={
        200: {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"status": {"type": "string", "enum": ["alive"]}},
                        "required": ["status"],
                    }
                }
            }
        }
    },
)
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@service_router.get(
    "/readyz",
    summary="Readiness: model metadata, encoder and decision store",
    responses=_problems(503),
)
async def readyz(request: Request, services: ServicesDep, settings: SettingsDep) -> Any:
    report = await _readiness(services, settings)
    if not report["ready"]:
        failing = [name for name, check in report["checks"].items() if not check["ok"]]
        return problem_response(
            request,
            NotReady("not ready: " + ", ".join(failing), extensions={"checks": report["checks"]}),
        )
    return JSONResponse(report)


@service_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}}},
        },
        **_problems(401, 403),
    },
    description="Open unless the gateway runs with `GATEWAY_METRICS_AUTH=true`; then it needs "
    "a key with the `admin` scope.",
)
async def prometheus_metrics(
    request: Request, metrics: MetricsDep, settings: SettingsDep, services: ServicesDep
) -> Response:
    if settings.metrics_auth:
        caller_of(request, "admin")
    await _readiness(services, settings)
    return Response(metrics.render(), media_type=metrics.content_type)


async def _readiness(services: Services, settings: GatewaySettings) -> dict[str, Any]:
    """The readiness report, its answer kept in the ``ready`` gauge."""
    report = await readiness(
        services.catalog, services.encoder, services.store, timeout=settings.readiness_timeout_s
    )
    services.metrics.ready.set(1 if report["ready"] else 0)
    return report


@lru_cache(maxsize=1)
def _ui_page() -> str:
    return files("vigil_gateway").joinpath("static/ui.html").read_text(encoding="utf-8")


@ui_router.get("/ui", response_class=HTMLResponse, summary="A small page to try the API")
async def ui() -> HTMLResponse:
    return HTMLResponse(_ui_page(), headers={"cache-control": "no-cache"})
