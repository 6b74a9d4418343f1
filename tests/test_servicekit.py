"""vigil_servicekit on a tiny FastAPI app: request ids, the access log line, problem documents,
request metrics. The services' own tests check the same behaviour through their real routes."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_servicekit.deps import MetricsDep, RequestIdDep
from vigil_servicekit.errors import ServiceError
from vigil_servicekit.logs import JsonFormatter, configure_logging
from vigil_servicekit.metrics import ServiceMetrics
from vigil_servicekit.request_context import log_fields
from vigil_servicekit.wiring import wire

LOGGER = "vigil_kit_test"


class KitError(ServiceError):
    def problem_body(self, **kwargs: Any) -> dict[str, Any]:
        body = super().problem_body(**kwargs)
        body["service"] = "kit"  # a member every answer of this service carries
        return body


class WidgetNotFound(KitError):
    status = 404
    title = "Widget not found"
    slug = "widget-not-found"


class Order(BaseModel):
    card_number: str
    quantity: int


def make_app() -> FastAPI:
    log = configure_logging(LOGGER, "INFO")
    metrics = ServiceMetrics("kit", buckets=(0.01, 0.1, 1.0))
    app = FastAPI()

    @app.get("/widgets/{name}")
    async def widget(name: str, request_id: RequestIdDep) -> dict[str, str]:
        if name == "missing":
            raise WidgetNotFound(f"no widget {name!r}", extensions={"status": 999, "hint": "list"})
        return {"name": name, "request_id": request_id}

    @app.post("/orders")
    async def order(body: Order, request: Request) -> dict[str, int]:
        log_fields(request.scope).update(quantity=body.quantity)
        return {"quantity": body.quantity}

    @app.get("/own-id")
    async def own_id() -> Any:
        return JSONResponse({}, headers={"x-request-id": "spoofed"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/metrics")
    async def prometheus(metrics: MetricsDep) -> Any:
        return Response(metrics.render(), media_type=metrics.content_type)

    wire(app, service="kit", error_root=KitError, metrics=metrics, log=log)
    return app


@pytest.fixture
async def client():
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as c:
        yield c


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["status"] == status and body["type"].endswith("/" + slug)
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["service"] == "kit"  # the root's problem_body applies to framework errors too
    return body


async def test_request_id_is_echoed_or_generated(client):
    echoed = await client.get("/widgets/a", headers={"x-request-id": "req-1.a:b"})
    assert echoed.headers["x-request-id"] == "req-1.a:b" == echoed.json()["request_id"]
    for headers in ({}, {"x-request-id": "not an id; <script>"}, {"x-request-id": "a" * 129}):
        generated = (await client.get("/widgets/a", headers=headers)).headers["x-request-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0
    # The middleware's id wins over one a route set.
    own = await client.get("/own-id", headers={"x-request-id": "mine"})
    assert own.headers.get_list("x-request-id") == ["mine"]


async def test_one_access_line_per_request_with_fields_and_no_payload(client, capsys):
    capsys.readouterr()
    await client.post(
        "/orders",
        json={"card_number": "4111-secret", "quantity": 3},
        headers={"x-request-id": "log-1"},
    )
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if "log-1" in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["logger"] == f"{LOGGER}.access" and line["msg"] == "request"
    assert line["method"] == "POST" and line["route"] == "/orders" and line["status"] == 200
    assert line["quantity"] == 3 and line["latency_ms"] >= 0
    assert "4111-secret" not in err


async def test_service_errors_render_as_problems(client):
    response = await client.get("/widgets/missing", headers={"x-request-id": "p-1"})
    body = assert_problem(response, 404, "widget-not-found")
    assert body["title"] == "Widget not found" and body["detail"] == "no widget 'missing'"
    assert body["instance"] == "/widgets/missing" and body["request_id"] == "p-1"
    assert body["hint"] == "list"  # an extension member ...
    assert body["status"] == 404  # ... that never replaces a standard one


async def test_framework_errors_render_as_problems(client):
    assert_problem(await client.get("/nowhere"), 404, "not-found")
    assert_problem(await client.delete("/orders"), 405, "method-not-allowed")
    body = assert_problem(
        await client.post("/orders", json={"quantity": "many"}), 422, "validation-failed"
    )
    names = [p["name"] for p in body["invalid_params"]]
    assert names == ["card_number", "quantity"]  # FastAPI's "body." prefix dropped


async def test_unexpected_exception_is_a_generic_500_that_is_logged(client, capsys):
    capsys.readouterr()
    response = await client.get("/boom", headers={"x-request-id": "boom-1"})
    body = assert_problem(response, 500, "internal-error")
    assert body["detail"] == "the kit failed unexpectedly; the request id identifies it in the logs"
    assert "secret" not in response.text
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    failure = next(e for e in logged if e["msg"] == "unhandled exception")
    assert failure["request_id"] == "boom-1" and "RuntimeError: <withheld>" in failure["exc"]
    # The message withheld (the code line of the raise, in the frame, is code, not data).
    assert failure["exc"].splitlines()[-1] == "RuntimeError: <withheld>"
    assert "in boom" in failure["exc"]
    access = next(e for e in logged if e["msg"] == "request")
    assert access["status"] == 500 and access["route"] == "/boom"


def test_uvicorns_own_lines_are_json_with_the_exceptions_message_withheld(
    capsys, monkeypatch
) -> None:
    """Starlette re-raises an exception after the app's 500, and uvicorn logs its traceback on
    ``uvicorn.error``: in the service's JSON, its message withheld as the service's own."""
    configure_logging("vigil_kit_test", "INFO")
    server = logging.getLogger("uvicorn.error")
    level = server.level  # in-process servers of other tests set their own
    monkeypatch.setattr(server, "disabled", False)
    server.setLevel(logging.INFO)
    card = "c4111"
    try:
        raise KeyError(card)
    except KeyError:
        server.exception("Exception in ASGI application")
    finally:
        server.setLevel(level)
    (line,) = [json.loads(x) for x in capsys.readouterr().err.splitlines() if "ASGI" in x]
    assert line["logger"] == "uvicorn.error" and line["exc"].endswith("KeyError: <withheld>")
    assert card not in json.dumps(line)


def test_a_logged_exception_keeps_its_traceback_and_withholds_what_may_be_data() -> None:
    """No log line holds a card, device or IP (README, *Privacy*): an exception's message may
    quote one (a KeyError of a card id, a validation error of its input), so only the
    infrastructure's messages (OSError, redis-py's, httpx's) are logged; every type and frame is."""
    import redis.exceptions

    from vigil_servicekit.logs import exception_text

    def text_of(raise_it) -> str:
        try:
            raise_it()
        except Exception:  # noqa: BLE001 - any exception, as a handler logs it
            return exception_text(sys.exc_info())
        raise AssertionError("nothing raised")

    card, ip = "c0042", "192.0.2.7"  # not on the lines the traceback shows

    def chained() -> None:
        try:
            {}[card]
        except KeyError as exc:
            raise ValueError(f"card {card} at {ip}") from exc

    text = text_of(chained)
    assert "c0042" not in text and "192.0.2.7" not in text
    assert "KeyError: <withheld>" in text and "ValueError: <withheld>" in text
    assert "direct cause" in text and "in chained" in text
    refused = text_of(lambda: (_ for _ in ()).throw(ConnectionRefusedError(111, "refused")))
    assert "ConnectionRefusedError: [Errno 111] refused" in refused

    def grouped() -> None:
        raise ExceptionGroup("two", [KeyError(card), ConnectionRefusedError(111, "refused")])

    text = text_of(grouped)
    assert "ExceptionGroup: <withheld>" in text and "  | KeyError: <withheld>" in text
    assert "  | ConnectionRefusedError: [Errno 111] refused" in text and card not in text

    def redis_down() -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to redis:6379")

    assert "redis.exceptions.ConnectionError: Error 111 connecting to redis:6379" in text_of(
        redis_down
    )


async def test_metrics_count_by_route_template_and_outcome(client):
    await client.get("/widgets/a")
    await client.get("/widgets/b")
    await client.get("/widgets/missing")
    await client.get("/nowhere")
    text = (await client.get("/metrics")).text
    assert (
        'kit_requests_total{method="GET",outcome="success",route="/widgets/{name}",status="200"} 2.0'
        in text
    )
    assert (
        'kit_requests_total{method="GET",outcome="client_error",route="/widgets/{name}",status="404"} 1.0'
        in text
    )
    assert (
        'kit_requests_total{method="GET",outcome="client_error",route="unmatched",status="404"} 1.0'
        in text
    )
    assert (
        'kit_request_duration_seconds_bucket{le="0.1",method="GET",outcome="success",route="/widgets/{name}"}'
        in text
    )
    assert "/widgets/a" not in text  # raw paths never become labels


def test_metric_labels_are_chosen_and_registries_are_per_app():
    narrow = ServiceMetrics(
        "kit", buckets=(1.0,), request_labels=("route", "status"), latency_labels=("route",)
    )
    narrow.observe_request("/r", "GET", 503, 0.5)
    text = narrow.render().decode()
    assert "# HELP kit_requests_total HTTP requests by route template and status code." in text
    assert 'kit_requests_total{route="/r",status="503"} 1.0' in text
    assert 'kit_request_duration_seconds_count{route="/r"} 1.0' in text
    # A second app registers the same names without colliding, and counts only its own.
    other = ServiceMetrics("kit", buckets=(1.0,))
    assert "kit_requests_total{" not in other.render().decode()
    with pytest.raises(ValueError, match="path"):
        ServiceMetrics("kit", buckets=(1.0,), request_labels=("path",))


def test_json_formatter_keeps_extras_and_exceptions():
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.getLogger(LOGGER).makeRecord(
            LOGGER,
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("once",),
            sys.exc_info(),
            extra={"request_id": "r-1"},
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "failed once" and entry["level"] == "ERROR"
    assert entry["request_id"] == "r-1" and "ValueError: <withheld>" in entry["exc"]
    assert "args" not in entry and "lineno" not in entry


def test_the_collector_is_paused_for_the_block_and_resumed_as_it_was():
    import gc

    from vigil_servicekit.gc_tuning import collector_paused

    assert gc.isenabled()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(ValueError), collector_paused():
            raise ValueError("resumed all the same")
        assert gc.isenabled()
        gc.disable()  # paused by someone else (serve's start-up): left paused
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_startup_heap_is_frozen_for_the_life_of_the_block():
    import gc

    from vigil_servicekit.gc_tuning import frozen_startup_heap

    before = gc.get_freeze_count()
    with frozen_startup_heap():
        assert gc.get_freeze_count() > before
        cycle: list = []
        cycle.append(cycle)  # made while serving: still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
