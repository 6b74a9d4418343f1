"""Dependency aliases for what the kit provides: the request id (set by the request-context
middleware) and the app's metrics (which the app factory keeps at ``app.state.metrics``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil_servicekit.metrics import ServiceMetrics
from vigil_servicekit.request_context import request_id_of

# Every dependency is `async def`: FastAPI runs a plain `def` one in its thread pool, a thread
# hand-off per request that measured at about half the cost of a trivial endpoint here.


async def request_id(request: Request) -> str:
    found = request_id_of(request.scope)
    assert found is not None  # RequestContextMiddleware always sets it
    return found


async def service_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


RequestIdDep = Annotated[str, Depends(request_id)]
MetricsDep = Annotated[ServiceMetrics, Depends(service_metrics)]
