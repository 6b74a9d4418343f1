"""HTTP routes: read the path, headers and body, call the data plane, return what it answers.

One router per resource: service health (``/healthz``, ``/readyz``, ``/metrics``), the V2 server
(``/v2``, ``/v2/health/*``) and V2 models (``/v2/models/...``). The two inference routes are
also answered by the servicekit's fast lane (:func:`fast_routes`), with the same code.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from vigil_predictor.deps import DataPlaneDep, get_dataplane
from vigil_predictor.errors import RequestTooLarge, ServerNotReady
from vigil_predictor.protocol import HEADER_LENGTH, RawInferenceRequest
from vigil_servicekit.deps import MetricsDep
from vigil_servicekit.fast_lane import FastRoute, declared_route

service_router = APIRouter(tags=["service"])
server_router = APIRouter(tags=["v2 server"])
models_router = APIRouter(tags=["v2 models"])
# Paths are spelled out in full (no router prefix) because the route's own path is the template
# that labels metrics and log lines.


def _require_ready(dataplane: DataPlaneDep) -> None:
    if not dataplane.ready():
        raise ServerNotReady("no model has a default version that can serve yet")


@service_router.get("/healthz")
async def healthz(dataplane: DataPlaneDep) -> dict[str, str]:
    return {"status": "alive" if dataplane.live() else "dead"}


@service_router.get("/readyz")
async def readyz(dataplane: DataPlaneDep) -> dict[str, Any]:
    _require_ready(dataplane)
    return dataplane.readiness_report()


@service_router.get("/metrics")
async def prometheus_metrics(metrics: MetricsDep, dataplane: DataPlaneDep) -> Response:
    metrics.ready.set(1 if dataplane.ready() else 0)
    return Response(metrics.render(), media_type=metrics.content_type)


@server_router.get("/v2")
async def server_metadata(dataplane: DataPlaneDep) -> dict[str, Any]:
    return dataplane.server_metadata()


@server_router.get("/v2/health/live")
async def server_live(dataplane: DataPlaneDep) -> dict[str, bool]:
    return {"live": dataplane.live()}


@server_router.get("/v2/health/ready")
async def server_ready(dataplane: DataPlaneDep) -> dict[str, bool]:
    _require_ready(dataplane)
    return {"ready": True}


@models_router.get("/v2/models/{model_name}")
async def model_metadata(model_name: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    return dataplane.model_metadata(model_name)


@models_router.get("/v2/models/{model_name}/versions/{model_version}")
async def model_version_metadata(
    model_name: str, model_version: str, dataplane: DataPlaneDep
) -> dict[str, Any]:
    return dataplane.model_metadata(model_name, model_version)


@models_router.get("/v2/models/{model_name}/ready")
async def model_ready(model_name: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    return dataplane.model_ready(model_name)


@models_router.get("/v2/models/{model_name}/versions/{model_version}/ready")
async def model_version_ready(
    model_name: str, model_version: str, dataplane: DataPlaneDep
) -> dict[str, Any]:
    return dataplane.model_ready(model_name, model_version)


_INFER_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "A V2 inference request: JSON, or JSON followed by raw little-endian tensor bytes "
            f"when the {HEADER_LENGTH} header gives the JSON length (binary tensor extension)."
        ),
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it outgrows ``limit`` rather than after it is all in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _infer(
    request: Request, dataplane: DataPlaneDep, model_name: str, model_version: str | None
) -> Response:
    raw = RawInferenceRequest(
        body=await _read_body(request, dataplane.settings.max_request_bytes),
        header_length=request.headers.get(HEADER_LENGTH),
        content_encoding=request.headers.get("content-encoding"),
    )
    encoded = await dataplane.infer(model_name, model_version, raw)
    return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)


@models_router.post("/v2/models/{model_name}/infer", openapi_extra=_INFER_BODY_DOC)
async def infer(model_name: str, request: Request, dataplane: DataPlaneDep) -> Response:
    return await _infer(request, dataplane, model_name, None)


@models_router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer", openapi_extra=_INFER_BODY_DOC
)
async def infer_version(
    model_name: str, model_version: str, request: Request, dataplane: DataPlaneDep
) -> Response:
    return await _infer(request, dataplane, model_name, model_version)


async def _fast_infer(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    return await _infer(request, await get_dataplane(request), model_name, model_version)


def fast_routes() -> list[FastRoute]:
    """The inference routes, for ``vigil_servicekit.fast_lane``: what FastAPI's routing and
    dependency solving cost per request was more than a one-row prediction."""
    return [
        FastRoute(declared_route(models_router, infer), _fast_infer),
        FastRoute(declared_route(models_router, infer_version), _fast_infer),
    ]
