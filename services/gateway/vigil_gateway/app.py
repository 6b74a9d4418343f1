"""The gateway's app factory.

``uvicorn --factory vigil_gateway.app:create_app --host 0.0.0.0 --port 8000`` calls
``create_app()`` with no arguments, which reads ``GATEWAY_*`` from the environment; tests pass
explicit settings and, to wire the gateway to in-process apps, httpx transports. Clients and the
decision store are opened in the lifespan, never at import or construction time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import httpx
from fastapi import FastAPI

from vigil_gateway.api_keys import KeyRing
from vigil_gateway.authenticate import Authenticate
from vigil_gateway.body_limit import BodyLimitMiddleware
from vigil_gateway.decisions import DecisionStore, connect
from vigil_gateway.deps import Services
from vigil_gateway.downstream import build_http_client
from vigil_gateway.encode import Encode
from vigil_gateway.encoder_client import EncoderClient
from vigil_gateway.errors import GatewayError
from vigil_gateway.events import EventSpool
from vigil_gateway.events import stop as stop_events
from vigil_gateway.framework_errors import from_http_error, from_validation_error
from vigil_gateway.idempotency import Idempotency
from vigil_gateway.limits import Admission, RateLimiter, Rates
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.model_catalog import ModelCatalog
from vigil_gateway.openapi import exact_openapi
from vigil_gateway.pipeline import ScoringPipeline, batch_limits, single_limits
from vigil_gateway.postprocess import Postprocess
from vigil_gateway.predict import Predict
from vigil_gateway.predictor_client import PredictorClient
from vigil_gateway.record import Record
from vigil_gateway.rest import fast_routes, service_router, transactions_router, ui_router
from vigil_gateway.safeguards import Safeguards, load_rules
from vigil_gateway.samples import samples_router
from vigil_gateway.settings import GatewaySettings
from vigil_gateway.shed import DoorShed
from vigil_servicekit.fast_lane import install_fast_lane
from vigil_servicekit.gc_tuning import frozen_startup_heap
from vigil_servicekit.logs import configure_logging
from vigil_servicekit.redis_url import is_cluster
from vigil_servicekit.uvicorn_http import answer_early, stop_answering_early
from vigil_servicekit.wiring import wire

logger = logging.getLogger(__name__)


def _version() -> str:
    try:
        return package_version("vigil-gateway")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(
    settings: GatewaySettings | None = None,
    *,
    encoder_transport: httpx.AsyncBaseTransport | None = None,
    predictor_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    settings = settings or GatewaySettings()
    service_log = configure_logging(
        "vigil_gateway", settings.log_level, silence_uvicorn_access=True
    )
    metrics = GatewayMetrics()
    rules = load_rules(settings.safeguards_path)  # a broken rule file fails the start, loudly
    if not settings.auth_enabled:
        logger.warning(
            "authentication is OFF (GATEWAY_AUTH_ENABLED=false): anyone who can reach "
            "this gateway can score transactions"
        )
    internal = settings.internal_token.get_secret_value() if settings.internal_token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(
                    build_http_client(
                        url,
                        connect_timeout_s=settings.connect_timeout_s,
                        max_connections=settings.max_connections,
                        transport=transport,
                        internal_token=internal,
                    )
                )
                for name, url, transport in (
                    ("encoder", settings.encoder_url, encoder_transport),
                    ("predictor", settings.predictor_url, predictor_transport),
                )
            }
            redis = connect(
                settings.redis_url,
                timeout_s=settings.decision_store_timeout_s,
                max_connections=settings.max_connections,
            )
            stack.push_async_callback(redis.aclose)
            encoder = EncoderClient(clients["encoder"], metrics, settings.connect_timeout_s)
            predictor = PredictorClient(clients["predictor"], metrics, settings.connect_timeout_s)
            catalog = ModelCatalog(
                predictor,
                metrics,
                name=settings.model_name,
                pinned_version=settings.model_version,
                refresh_s=settings.metadata_refresh_s,
                fetch_timeout_s=settings.readiness_timeout_s,
            )
            stack.push_async_callback(catalog.close)
            store = DecisionStore(
                redis,
                metrics,
                ttl_s=settings.decision_ttl_s,
                timeout_s=settings.decision_store_timeout_s,
            )
            events: EventSpool | None = None
            if settings.events_enabled and is_cluster(settings.redis_url):
                # The event script reads and writes keys of several slots: one Redis only, for
                # now (partitioned streams on a cluster are still to come).
                logger.warning("decision events are off: the gateway's Redis is a cluster")
            elif settings.events_enabled:
                # Its own connections, with room for a batch's round trip: never the decision
                # store's fail-fast pool, which the request path waits on.
                events_redis = connect(settings.redis_url, timeout_s=1.0, max_connections=2)
                stack.push_async_callback(events_redis.aclose)
                events = EventSpool(
                    events_redis,  # type: ignore[arg-type]  # a single Redis here (see above)
                    metrics,
                    stream=settings.events_stream,
                    spool_max=settings.events_spool_max,
                    batch_max=settings.events_batch_max,
                    maxlen=settings.events_stream_maxlen,
                    dedupe_ttl_s=settings.events_dedupe_ttl_s,
                )
                sender = asyncio.create_task(events.run(), name="decision-events")
                # Drained at shutdown after the decision store's writes (the stack unwinds last
                # first), before these connections close.
                stack.push_async_callback(
                    stop_events, sender, events, settings.events_drain_timeout_s
                )
            stack.push_async_callback(store.drain)  # decisions written behind answers, first
            ring = None
            if settings.auth_enabled:
                ring = KeyRing(
                    redis,
                    settings.auth_secret.get_secret_value(),
                    refresh_s=settings.auth_refresh_s,
                )
                with contextlib.suppress(Exception):  # unreadable now: the refresher retries
                    await ring.refresh()
            admit = Admission(
                metrics,
                max_in_flight=settings.max_in_flight,
                max_in_flight_overloaded=settings.max_in_flight_overloaded,
                max_in_flight_per_key=settings.max_in_flight_per_key,
                min_budget_s=settings.min_budget_s,
            )
            scoring = ScoringPipeline(
                admit=admit,
                rate_limit=RateLimiter(
                    redis if settings.rate_limit_enabled else None,
                    Rates(
                        settings.rate_requests_per_s,
                        settings.rate_request_burst,
                        settings.rate_transactions_per_s,
                        settings.rate_transaction_burst,
                    ),
                    metrics,
                ),
                idempotency=Idempotency(
                    store,
                    metrics,
                    longest_budgets=[single_limits(settings).budget, batch_limits(settings).budget],
                ),
                encode=Encode(encoder, catalog, feature_service=settings.feature_service),
                safeguards=Safeguards(rules),
                predict=Predict(predictor, catalog),
                postprocess=Postprocess(catalog, max_reasons=settings.max_reasons),
                record=Record(metrics, events),
                metrics=metrics,
                settings=settings,
            )
            refresher = asyncio.create_task(catalog.run(), name="model-metadata-refresh")
            keys_refresher = (
                asyncio.create_task(ring.run(), name="api-key-refresh")
                if ring is not None
                else None
            )
            authenticate = Authenticate(ring)
            app.state.services = Services(
                scoring=scoring,
                catalog=catalog,
                encoder=encoder,
                store=store,
                authenticate=authenticate,
                metrics=metrics,
            )
            # Under uvicorn with the servicekit's protocol, over-bound requests are refused at
            # the door (see ``shed``); elsewhere (ASGI transports in tests) by the app.
            door = DoorShed(admit, authenticate, metrics, service_log.getChild("access"))
            answer_early(door)
            logger.info(
                "gateway started",
                extra={
                    "environment": settings.environment,
                    "encoder_url": settings.encoder_url,
                    "predictor_url": settings.predictor_url,
                    "model": settings.model_name,
                    "pinned_version": settings.model_version,
                    "auth_enabled": settings.auth_enabled,
                    "rate_limit_enabled": settings.rate_limit_enabled,
                    "tls": settings.tls_certfile is not None,
                },
            )
            try:
                with frozen_startup_heap():  # start-up objects: out of every later GC pass
                    yield
            finally:
                stop_answering_early(door)
                app.state.services = None
                for task in (refresher, keys_refresher):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task

    app = FastAPI(
        title="Vigil gateway",
        version=_version(),
        description="Real-time fraud scoring of payment transactions (Vigil's business API).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = None
    # The lane first: inside the body limit, which holds for its requests as for FastAPI's.
    install_fast_lane(app, fast_routes())
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # After the body limit: the request-context middleware is outermost and sees its 413 too.
    wire(
        app,
        service="gateway",
        error_root=GatewayError,
        metrics=metrics,
        log=service_log,
        validation_error=from_validation_error,
        http_error=from_http_error,
    )
    app.include_router(transactions_router)
    app.include_router(service_router)
    app.include_router(ui_router)
    app.include_router(samples_router)
    app.openapi = lambda: exact_openapi(app, settings)  # type: ignore[method-assign]
    return app
