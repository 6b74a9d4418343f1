"""HTTP routes: service endpoints (``/healthz``, ``/readyz``, ``/metrics``) and the encoder API
(``/v1/encode``, ``/v1/feature-services``). Routes parse and answer; the work is the data plane's.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from vigil_contracts.encoding import EncodeRequest, EncodeResponse
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE, Problem
from vigil_servicekit.deps import MetricsDep
from vigil_servicekit.request_context import log_fields

from vigil_encoder.deps import EncoderDep

service_router = APIRouter(tags=["service"])
encoder_router = APIRouter(tags=["encoder"])
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
async def readyz(encoder: EncoderDep) -> dict[str, Any]:
    return await encoder.readiness()


@service_router.get("/metrics")
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)


@encoder_router.post("/v1/encode", response_model=EncodeResponse, responses=_PROBLEMS)
async def encode(body: EncodeRequest, request: Request, encoder: EncoderDep) -> Response:
    log_fields(request.scope).update(feature_service=body.feature_service, rows=len(body.rows))
    result = await encoder.encode(body)
    # Built as plain lists by the data plane and serialised directly: validating thousands of
    # floats back through EncodeResponse would cost more than the Redis round trip.
    return Response(orjson.dumps(result), media_type="application/json")


@encoder_router.get("/v1/feature-services")
async def feature_services(encoder: EncoderDep) -> dict[str, Any]:
    return encoder.feature_services()


@encoder_router.get("/v1/feature-services/{name}", responses={404: _PROBLEMS[404]})
async def feature_service(name: str, encoder: EncoderDep) -> dict[str, Any]:
    return encoder.feature_service(name)
