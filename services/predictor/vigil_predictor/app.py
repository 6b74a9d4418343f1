"""The predictor's app factory.

``uvicorn --factory vigil_predictor.app:create_app --host 0.0.0.0 --port 8002`` calls
``create_app()`` with no arguments, which reads ``PREDICTOR_*`` from the environment; tests pass
explicit settings. Models are loaded in the lifespan, never at import or construction time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from vigil_predictor.dataplane import DataPlane, server_version
from vigil_predictor.errors import PredictorError
from vigil_predictor.metrics import PredictorMetrics
from vigil_predictor.repository import ModelRepository
from vigil_predictor.rest import fast_routes, models_router, server_router, service_router
from vigil_predictor.settings import PredictorSettings
from vigil_servicekit.fast_lane import install_fast_lane
from vigil_servicekit.gc_tuning import frozen_startup_heap
from vigil_servicekit.internal_token import InternalTokenMiddleware
from vigil_servicekit.logs import configure_logging
from vigil_servicekit.wiring import wire

logger = logging.getLogger(__name__)


def create_app(settings: PredictorSettings | None = None) -> FastAPI:
    settings = settings or PredictorSettings()
    service_log = configure_logging(
        "vigil_predictor", settings.log_level, silence_uvicorn_access=True
    )
    metrics = PredictorMetrics()
    repository = ModelRepository(
        settings.models_dir,
        default_versions=settings.default_versions,
        nthread=settings.nthread,
    )
    dataplane = DataPlane(repository, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Verifying checksums and loading boosters is file and CPU work: keep it off the loop.
        await anyio.to_thread.run_sync(repository.load_all)
        for name in repository.model_names():
            for version in repository.ready_versions(name):
                metrics.version_ready.labels(name, version).set(1)
            for version in repository.refused_versions(name):
                metrics.version_ready.labels(name, version).set(0)
        if not repository.ready:
            logger.error(
                "no model can serve; readiness stays 503",
                extra={"models_dir": str(settings.models_dir)},
            )
        try:
            with frozen_startup_heap():  # start-up objects: out of every later GC pass
                yield
        finally:
            repository.unload_all()

    app = FastAPI(
        title="Vigil predictor",
        version=server_version(),
        description="XGBoost fraud models over the Open Inference Protocol V2 (REST).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.dataplane = dataplane
    # Inside the request-context middleware (request id, access line, metrics), so before wire().
    install_fast_lane(app, fast_routes())
    if settings.internal_token is not None:  # outside the lane: it holds both ways
        app.add_middleware(
            InternalTokenMiddleware,
            token=settings.internal_token.get_secret_value(),
            error_root=PredictorError,
            open_paths=("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"),
        )
    wire(app, service="predictor", error_root=PredictorError, metrics=metrics, log=service_log)
    # Routes are matched in order, one regex at a time: inference, the hot path, goes first.
    app.include_router(models_router)
    app.include_router(service_router)
    app.include_router(server_router)
    return app
