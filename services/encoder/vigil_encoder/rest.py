"""HTTP routes: service endpoints (``/healthz``, ``/readyz``, ``/metrics``) and the encoder API
(``/v1/encode``, ``/v1/feature-services``). Routes parse and answer; the work is the data plane's.

``/v1/encode`` is also answered by the servicekit's fast lane (:func:`fast_routes`) when its body
is plainly a JSON object; any other body is left to FastAPI, which decides as it always did.
"""

from __future__ import annotations

import contextlib
from itertools import chain, repeat
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from vigil_contracts.encoding import (
    BINARY_HEADER_LENGTH,
    BINARY_MEDIA_TYPE,
    TIMEOUT_HEADER,
    EncodeColumnsRequest,
    EncodeRequest,
    EncodeResponse,
    budget_s,
)
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE, Problem
from vigil_encoder.dataplane import BatchColumns, Encoder
from vigil_encoder.deps import EncoderDep, get_encoder
from vigil_encoder.errors import EncoderNotReady
from vigil_servicekit.deps import MetricsDep
from vigil_servicekit.fast_lane import Defer, FastRoute, declared_route, json_body_or_defer
from vigil_servicekit.json_body import OrjsonRoute
from vigil_servicekit.request_context import log_fields

service_router = APIRouter(tags=["service"])
# FastAPI reads the body (content type, JSON errors) with orjson; its shape is checked here.
encoder_router = APIRouter(tags=["encoder"], route_class=OrjsonRoute)
# Paths are spelled out in full (no router prefix) because the route's own path is the template
# that labels metrics and log lines.

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
    for status in (404, 413, 422, 503)
}


@service_router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@service_router.get("/readyz", responses={503: _PROBLEMS[503]})
async def readyz(encoder: EncoderDep, metrics: MetricsDep) -> dict[str, Any]:
    return await _readiness(encoder, metrics)


@service_router.get("/metrics")
async def prometheus_metrics(metrics: MetricsDep, encoder: EncoderDep) -> Response:
    with contextlib.suppress(EncoderNotReady):
        await _readiness(encoder, metrics)
    await encoder.refresh_view_ages()
    return Response(metrics.render(), media_type=metrics.content_type)


async def _readiness(encoder: Encoder, metrics: MetricsDep) -> dict[str, Any]:
    """``encoder.readiness()``, its answer kept in the ``ready`` gauge."""
    try:
        report = await encoder.readiness()
    except EncoderNotReady:
        metrics.ready.set(0)
        raise
    metrics.ready.set(1)
    return report


_STRING = frozenset({str})
_REQUEST_VALUE = frozenset({float, int, str, type(None)})
_DICT = frozenset({dict})
_LIST = frozenset({list})


def _plain_rows(body: Any) -> bool:
    """Whether ``body`` is an ``EncodeRequest`` whose values need no conversion (what any
    client that sends numbers as numbers sends): then it is used as parsed. Decided over the
    whole batch at once (the set of the types met at each level), not row by row."""
    if type(body) is not dict:
        return False
    rows = body.get("rows")
    if type(body.get("feature_service")) is not str or type(rows) is not list or not rows:
        return False
    if len(rows) == 1:  # a single transaction: faster checked as a row than as columns
        row = rows[0]
        if type(row) is not dict:
            return False
        entities, request = row.get("entities"), row.get("request")
        return (
            type(entities) is dict
            and type(request) is dict
            and set(map(type, entities.values())) <= _STRING
            and set(map(type, request.values())) <= _REQUEST_VALUE
        )
    if set(map(type, rows)) != _DICT:
        return False
    entity_maps: list[Any] = list(map(dict.get, rows, repeat("entities")))
    request_maps: list[Any] = list(map(dict.get, rows, repeat("request")))
    return (
        set(map(type, entity_maps)) == _DICT
        and set(map(type, request_maps)) == _DICT
        and set(map(type, chain.from_iterable(map(dict.values, entity_maps)))) <= _STRING
        and set(map(type, chain.from_iterable(map(dict.values, request_maps)))) <= _REQUEST_VALUE
    )


def _plain_columns(body: dict[str, Any]) -> int:
    """The number of rows of ``body`` if it is an ``EncodeColumnsRequest`` whose values need no
    conversion (what the gateway sends), else 0: then it is used as parsed. Decided with one C
    loop per level (the set of the types met there), as :func:`_plain_rows` decides."""
    columns = body.get("columns")
    # Exactly the model's fields (it forbids others) ...
    if (
        len(body) != 2
        or type(body.get("feature_service")) is not str
        or type(columns) is not dict
        or len(columns) != 2
    ):
        return 0
    entities, request = columns.get("entities"), columns.get("request")
    if type(entities) is not dict or type(request) is not dict:
        return 0
    # ... lists all of one length, and not empty ...
    lists = [*entities.values(), *request.values()]
    if set(map(type, lists)) != _LIST:
        return 0
    lengths = set(map(len, lists))
    if len(lengths) != 1 or 0 in lengths:
        return 0
    # ... of values of the model's types.
    if not (
        set(map(type, chain.from_iterable(entities.values()))) <= _STRING
        and set(map(type, chain.from_iterable(request.values()))) <= _REQUEST_VALUE
    ):
        return 0
    return lengths.pop()


def _validated(model: type[EncodeRequest | EncodeColumnsRequest], body: Any) -> Any:
    try:
        return model.model_validate(body, from_attributes=True)  # as FastAPI does
    except ValidationError as exc:
        # As FastAPI reports a body that fails its declared model.
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


def parse_encode_request(body: Any) -> tuple[str, list[dict[str, Any]] | BatchColumns]:
    """``(feature_service, batch)`` of an encode request body: an ``EncodeRequest``'s rows, each
    a plain dict (``{"entities": ..., "request": ...}``), or an ``EncodeColumnsRequest``'s
    columns as :class:`BatchColumns` (a body with ``columns`` is one; with ``rows`` as well it
    is refused, as that model refuses any other field).

    A body that is not plainly one is validated by its model itself, so that what it accepts,
    converts and refuses (and how a refusal names the fields) is exactly pydantic's; pydantic
    models for a thousand rows would cost more than their encoding.
    """
    if type(body) is dict and "columns" in body:
        n_rows = _plain_columns(body)
        if n_rows:
            columns = body["columns"]
            return body["feature_service"], BatchColumns(
                columns["entities"], columns["request"], n_rows
            )
        parsed: EncodeColumnsRequest = _validated(EncodeColumnsRequest, body)
        given = parsed.columns
        return parsed.feature_service, BatchColumns(given.entities, given.request, given.n_rows)
    if _plain_rows(body):
        return body["feature_service"], body["rows"]
    request: EncodeRequest = _validated(EncodeRequest, body)
    return request.feature_service, [
        {"entities": row.entities, "request": row.request} for row in request.rows
    ]


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined (it is embedded in the OpenAPI
    document, where ``#/$defs/...`` would not resolve)."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


_ENCODE_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The rows to encode, as rows or as columns (row `i` is the `i`-th value "
        "of every column); both forms get the same answer.",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _inline_refs(EncodeRequest.model_json_schema()),
                        _inline_refs(EncodeColumnsRequest.model_json_schema()),
                    ]
                }
            }
        },
    }
}


@encoder_router.post(
    "/v1/encode",
    response_model=EncodeResponse,
    openapi_extra=_ENCODE_BODY_DOC,
    responses={
        **_PROBLEMS,
        200: {
            "content": {
                BINARY_MEDIA_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "With `Accept: application/octet-stream`: the same answer as a JSON header "
                        f"(its length in `{BINARY_HEADER_LENGTH}`) followed by the tensors' bytes; "
                        "see vigil_contracts.encoding.",
                    }
                }
            }
        },
    },
)
async def encode(body: Annotated[Any, Body()], request: Request, encoder: EncoderDep) -> Response:
    return await _encode(body, request, encoder)


async def _encode(body: Any, request: Request, encoder: Encoder) -> Response:
    feature_service, given = parse_encode_request(body)
    log_fields(request.scope).update(feature_service=feature_service, rows=len(given))
    budget = budget_s(request.headers.get(TIMEOUT_HEADER))
    batch = await encoder.encode_batch(feature_service, given, budget)
    if wants_binary(request.headers.get("accept")):
        # The data plane's flat lists are packed as they are, without rows of dicts between.
        body, header_length = batch.binary()
        return Response(
            body, media_type=BINARY_MEDIA_TYPE, headers={BINARY_HEADER_LENGTH: str(header_length)}
        )
    # Built as plain lists by the data plane and serialised directly: validating thousands of
    # floats back through EncodeResponse would cost more than the Redis round trip.
    return Response(orjson.dumps(batch.response()), media_type="application/json")


async def _fast_encode(request: Request) -> Response:
    # What FastAPI (OrjsonRoute) surely reads as this very object: the content type the gateway
    # sends, a body orjson parses, an object. Anything else (another spelling of a JSON content
    # type, no body, JSON only the standard parser reads, not an object) FastAPI answers itself,
    # and so a body that could not be read (the client gone): what made it fail is replayed.
    raw = await json_body_or_defer(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Defer from None
    if type(body) is not dict:
        raise Defer
    return await _encode(body, request, await get_encoder(request))


def fast_routes() -> list[FastRoute]:
    """``/v1/encode`` for ``vigil_servicekit.fast_lane``: FastAPI's routing, body reading and
    dependency solving cost about as much CPU as encoding one row."""
    return [FastRoute(declared_route(encoder_router, encode), _fast_encode, defers=True)]


def wants_binary(accept: str | None) -> bool:
    """Whether ``Accept`` asks for the binary form (``application/octet-stream`` named, not
    refused with ``q=0``); JSON otherwise, also for ``*/*``."""
    if not accept:
        return False
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        if media.strip().lower() != BINARY_MEDIA_TYPE:
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


@encoder_router.get("/v1/feature-services")
async def feature_services(encoder: EncoderDep) -> dict[str, Any]:
    return encoder.feature_services()


@encoder_router.get("/v1/feature-services/{name}", responses={404: _PROBLEMS[404]})
async def feature_service(name: str, encoder: EncoderDep) -> dict[str, Any]:
    return encoder.feature_service(name)
