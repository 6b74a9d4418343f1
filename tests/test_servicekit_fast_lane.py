"""vigil_servicekit.fast_lane on a tiny wired FastAPI app: the lane answers its routes as FastAPI
would (handlers' problems, HTTP errors with their headers, log fields, route labels), steps aside
for everything else and while dependency overrides are set, and must sit inside the request
context; a handler that defers leaves the request to FastAPI with the body it read played
again. The predictor's and the encoder's tests compare it with FastAPI on their real routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response

from vigil_servicekit.deps import MetricsDep
from vigil_servicekit.errors import ServiceError
from vigil_servicekit.fast_lane import Defer, FastRoute, declared_route, install_fast_lane
from vigil_servicekit.logs import configure_logging
from vigil_servicekit.metrics import ServiceMetrics
from vigil_servicekit.request_context import log_fields
from vigil_servicekit.wiring import wire

LOGGER = "vigil_lane_test"


class LaneError(ServiceError):
    pass


class Gone(LaneError):
    status = 410
    title = "Gone"
    slug = "gone"


router = APIRouter()


async def _echo(request: Request, item: str) -> Response:
    if item == "gone":
        raise Gone(f"{item} is gone")
    if item == "teapot":
        raise HTTPException(418, "short and stout", headers={"x-brew": "no"})
    if item == "boom":
        raise RuntimeError("secret internals")
    log_fields(request.scope)["item"] = item
    body = await request.body()
    return Response(item.encode() + b":" + body, media_type="text/plain")


@router.post("/items/{item}/echo")
async def echo(item: str, request: Request) -> Response:
    return await _echo(request, item)


@router.post("/items/{item}/maybe")
async def maybe(item: str, request: Request) -> Response:
    chunks = [chunk async for chunk in request.stream()]
    log_fields(request.scope)["chunks"] = len(chunks)
    return Response(
        f"fastapi:{item}:{len(chunks)}:".encode() + b"".join(chunks), media_type="text/plain"
    )


async def _maybe_lane(request: Request, item: str) -> Response:
    """Defers after reading all of the body, its first chunk or nothing; answers ``take``."""
    if item == "all":
        await request.body()
    elif item == "first":
        async for _chunk in request.stream():
            break
    if item != "take":
        raise Defer
    return Response(b"lane:" + await request.body(), media_type="text/plain")


@router.get("/metrics")
async def metrics_route(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)


def make_app(calls: list[str]) -> FastAPI:
    log = configure_logging(LOGGER, "INFO")
    app = FastAPI()

    async def lane(request: Request, item: str) -> Response:
        calls.append(item)
        return await _echo(request, item)

    async def maybe_lane(request: Request, item: str) -> Response:
        calls.append(item)
        return await _maybe_lane(request, item)

    install_fast_lane(
        app,
        [
            FastRoute(declared_route(router, echo), lane),
            FastRoute(declared_route(router, maybe), maybe_lane, defers=True),
        ],
    )
    wire(
        app,
        service="lane test",
        error_root=LaneError,
        metrics=ServiceMetrics("lane", buckets=(0.1, 1.0)),
        log=log,
    )
    app.include_router(router)
    return app


async def _both(path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response, list[str]]:
    calls: list[str] = []
    app = make_app(calls)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    answers = []
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as client:
        for override in (False, True):
            if override:  # any override makes the lane step aside
                app.dependency_overrides[lambda: None] = lambda: None
            answers.append(await client.post(path, headers={"x-request-id": "r-1"}, **kwargs))
    return answers[0], answers[1], calls


@pytest.mark.parametrize("item,status", [("a", 200), ("gone", 410), ("teapot", 418), ("boom", 500)])
async def test_the_lane_answers_as_fastapi_does(item: str, status: int) -> None:
    lane, fastapi, calls = await _both(f"/items/{item}/echo", content=b"xyz")
    assert calls == [item]  # the lane answered the first, FastAPI the second
    assert lane.status_code == fastapi.status_code == status
    assert lane.headers.multi_items() == fastapi.headers.multi_items()
    assert lane.content == fastapi.content
    assert lane.headers["x-request-id"] == "r-1"
    if item == "teapot":
        assert lane.headers["x-brew"] == "no"
    if status >= 400:
        assert lane.headers["content-type"] == "application/problem+json"
        assert "secret" not in lane.text


async def test_log_fields_and_route_label(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    app = make_app(calls)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(caplog.handler)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kit") as client:
            assert (await client.post("/items/a%20b/echo", content=b"1")).text == "a b:1"
            metrics = (await client.get("/metrics")).text
    finally:
        logger.removeHandler(caplog.handler)
    assert calls == ["a b"]
    [line] = [r for r in caplog.records if r.getMessage() == "request" and r.route != "/metrics"]
    assert (line.route, line.status, line.item) == ("/items/{item}/echo", 200, "a b")
    assert (
        'lane_requests_total{method="POST",outcome="success",route="/items/{item}/echo",'
        'status="200"} 1.0'
    ) in metrics


async def test_what_the_lane_does_not_match_goes_on() -> None:
    for path in ("/items/a/echo/", "/items/a/b/echo", "/items/echo"):
        lane, fastapi, calls = await _both(path)
        assert calls == [] and lane.status_code == fastapi.status_code
        assert lane.content == fastapi.content


def test_the_lane_goes_in_before_wire() -> None:
    app = FastAPI()
    wire(
        app,
        service="t",
        error_root=LaneError,
        metrics=ServiceMetrics("late", buckets=(1.0,)),
        log=configure_logging(LOGGER, "INFO"),
    )
    with pytest.raises(RuntimeError, match="before wire"):
        install_fast_lane(app, [FastRoute(declared_route(router, echo), echo)])
    with pytest.raises(LookupError):
        declared_route(router, make_app)


class Chunks:
    """A request body sent as several ``http.request`` messages (a new stream per request)."""

    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size = body, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start : start + self.size]


BIG = bytes(range(256)) * 20_000  # 5 MB


@pytest.mark.parametrize("item", ["all", "first", "none"])
@pytest.mark.parametrize(
    "content,chunks",
    [
        (b"xyz", 2),
        (b"", 1),
        (BIG, 2),
        (Chunks(b"abcdefgh", 3), 4),
        (Chunks(BIG, 65_536), 80),
    ],
    ids=["small", "empty", "large", "chunked", "large-chunked"],
)
async def test_a_deferred_request_reaches_fastapi_whole(
    item: str, content: Any, chunks: int
) -> None:
    lane, fastapi, calls = await _both(f"/items/{item}/maybe", content=content)
    assert calls == [item]  # the lane saw the first request, and deferred it
    assert lane.status_code == fastapi.status_code == 200
    assert lane.headers.multi_items() == fastapi.headers.multi_items()
    assert lane.content == fastapi.content
    body = content.body if isinstance(content, Chunks) else content
    # The same messages (httpx ends a body with an empty one), in the same chunks.
    assert lane.content == f"fastapi:{item}:{chunks}:".encode() + body


async def test_a_route_that_may_defer_is_answered_by_the_lane() -> None:
    lane, fastapi, calls = await _both("/items/take/maybe", content=Chunks(b"abcdefgh", 3))
    assert calls == ["take"]
    assert (lane.status_code, lane.content) == (200, b"lane:abcdefgh")
    assert fastapi.content == b"fastapi:take:4:abcdefgh"


async def test_a_deferred_request_is_logged_and_labelled_as_fastapi_routes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    app = make_app(calls)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(caplog.handler)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kit") as client:
            assert (await client.post("/items/all/maybe", content=b"12")).text == "fastapi:all:2:12"
            metrics = (await client.get("/metrics")).text
    finally:
        logger.removeHandler(caplog.handler)
    assert calls == ["all"]
    [line] = [r for r in caplog.records if r.getMessage() == "request" and r.route != "/metrics"]
    assert (line.route, line.status, line.chunks) == ("/items/{item}/maybe", 200, 2)
    assert (
        'lane_requests_total{method="POST",outcome="success",route="/items/{item}/maybe",'
        'status="200"} 1.0'
    ) in metrics


async def test_a_route_with_a_body_limit_is_refused() -> None:
    app = FastAPI(max_body_size=1024)
    install_fast_lane(app, [FastRoute(declared_route(router, echo), echo)])
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as client:
        with pytest.raises(RuntimeError, match="body-size limit"):
            await client.post("/items/a/echo", content=b"1")
