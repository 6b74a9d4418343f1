"""The streamer's app factory: health, readiness and metrics over HTTP; the work is the
consumer loop (``consumer.Consumer.run``), started and stopped by the lifespan.

``uvicorn --factory vigil_streamer.app:create_app --host 0.0.0.0 --port 8003`` calls
``create_app()`` with no arguments, which reads ``STREAMER_*`` from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from vigil_servicekit.errors import ServiceError
from vigil_servicekit.logs import configure_logging
from vigil_servicekit.wiring import wire
from vigil_streamer.consumer import Consumer
from vigil_streamer.metrics import StreamerMetrics
from vigil_streamer.settings import StreamerSettings

logger = logging.getLogger(__name__)


class StreamerError(ServiceError):
    """Root of the streamer's HTTP errors (it answers few)."""


router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    consumer: Consumer | None = request.app.state.consumer
    if not _consuming(request):
        detail = consumer.problem if consumer is not None else "starting"
        return JSONResponse({"ready": False, "detail": detail}, status_code=503)
    return JSONResponse({"ready": True})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m: StreamerMetrics = request.app.state.metrics
    _consuming(request)
    return Response(m.render(), media_type=m.content_type)


def _consuming(request: Request) -> bool:
    """Whether the consumer runs (readiness), kept in the ``ready`` gauge."""
    consumer: Consumer | None = request.app.state.consumer
    ready = consumer is not None and consumer.running
    request.app.state.metrics.ready.set(1 if ready else 0)
    return ready


def create_app(settings: StreamerSettings | None = None) -> FastAPI:
    settings = settings or StreamerSettings()
    service_log = configure_logging(
        "vigil_streamer", settings.log_level, silence_uvicorn_access=True
    )
    metrics = StreamerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s + settings.block_ms / 1000,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        if settings.nice:
            os.nice(settings.nice)
        consumer = Consumer(client, settings, metrics)
        app.state.consumer = consumer
        task = asyncio.create_task(consumer.run(), name="streamer-consumer")
        logger.info(
            "streamer started",
            extra={
                "stream": settings.stream,
                "group": settings.group,
                "consumer": settings.consumer,
            },
        )
        try:
            yield
        finally:
            # A batch in progress is abandoned unacknowledged: read again at the next start.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            app.state.consumer = None
            await client.aclose()

    app = FastAPI(
        title="Vigil streamer", description="Decision events -> online features.", lifespan=lifespan
    )
    app.state.settings = settings
    app.state.consumer = None
    wire(app, service="streamer", error_root=StreamerError, metrics=metrics, log=service_log)
    app.include_router(router)
    return app
