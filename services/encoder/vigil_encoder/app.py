"""The encoder's app factory.

``uvicorn --factory vigil_encoder.app:create_app --host 0.0.0.0 --port 8001`` calls
``create_app()`` with no arguments, which reads ``ENCODER_*`` from the environment; tests pass
explicit settings. The serving spec is loaded and the Redis client opened in the lifespan, never
at import or construction time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from fastapi import FastAPI

from vigil_encoder.cluster_store import ClusterOnlineStore
from vigil_encoder.dataplane import Encoder
from vigil_encoder.errors import EncoderError
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.rest import encoder_router, fast_routes, service_router
from vigil_encoder.settings import EncoderSettings
from vigil_encoder.store import OnlineStore
from vigil_servicekit.fast_lane import install_fast_lane
from vigil_servicekit.gc_tuning import frozen_startup_heap
from vigil_servicekit.internal_token import InternalTokenMiddleware
from vigil_servicekit.logs import configure_logging
from vigil_servicekit.redis_url import is_cluster
from vigil_servicekit.wiring import wire

logger = logging.getLogger(__name__)


def _version() -> str:
    try:
        return package_version("vigil-encoder")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: EncoderSettings | None = None) -> FastAPI:
    settings = settings or EncoderSettings()
    service_log = configure_logging(
        "vigil_encoder", settings.log_level, silence_uvicorn_access=True
    )
    metrics = EncoderMetrics()
    store_class = ClusterOnlineStore if is_cluster(settings.redis_url) else OnlineStore
    store: OnlineStore = store_class(settings.redis_url, settings.redis_timeout_s, metrics)  # type: ignore[assignment]  # the same interface
    encoder = Encoder(settings.spec_path, store, metrics, max_rows=settings.max_rows)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        encoder.load_spec()  # a failure leaves the encoder not ready, not crashed
        store.open()
        problem = await store.ping()
        if problem is not None:
            logger.warning("online store not reachable at startup", extra={"reason": problem})
        try:
            with frozen_startup_heap():  # start-up objects: out of every later GC pass
                yield
        finally:
            await store.close()

    app = FastAPI(
        title="Vigil encoder",
        version=_version(),
        description="Ordered feature vectors for a Feast feature service, read from Feast's "
        "Redis online store, with per-feature age, missing and stale flags.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.encoder = encoder
    # Inside the request-context middleware (request id, access line, metrics), so before wire().
    install_fast_lane(app, fast_routes())
    if settings.internal_token is not None:  # outside the lane: it holds both ways
        app.add_middleware(
            InternalTokenMiddleware,
            token=settings.internal_token.get_secret_value(),
            error_root=EncoderError,
            open_paths=("/healthz", "/readyz", "/metrics"),
        )
    wire(app, service="encoder", error_root=EncoderError, metrics=metrics, log=service_log)
    app.include_router(service_router)
    app.include_router(encoder_router)
    return app
