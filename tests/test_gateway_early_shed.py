"""The gateway's refusals at the server's door (``vigil_gateway.shed`` through
``vigil_servicekit.uvicorn_http``): the same bytes and bookkeeping as the app's own 503.

The gateway is served by a real uvicorn with the servicekit's protocol; one request is held in
flight (a slow encoder stand-in) so that the process is over its bound of 1, and the same raw
request is answered once at the door and once, the hook removed, by the app.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn

import test_gateway
from test_gateway import EncoderStandIn, gateway, txn
from vigil.redis_server import free_port
from vigil_servicekit import uvicorn_http
from vigil_servicekit.uvicorn_http import HttpToolsProtocol

redis_url = test_gateway.redis_url  # the session fixture, shared
_DATE = re.compile(rb"date: [^\r]*\r\n")
SCORE = "/v1/transactions/score"


@asynccontextmanager
async def _served(app: Any) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=HttpToolsProtocol,
        lifespan="off",  # the test's own lifespan runs the app
        access_log=False,
        log_level="critical",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def _exchange(port: int, *requests: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            await asyncio.sleep(0.02)
        return _DATE.sub(b"", await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()


def _post(path: str, body: bytes, authorization: str, *, close: bool = True) -> bytes:
    head = (
        b"POST %s HTTP/1.1\r\nhost: gateway.test\r\nauthorization: %s\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: shed-1\r\n"
        % (path.encode(), authorization.encode(), len(body))
    )
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


def _refused(stack: Any) -> float:
    key_ids = [
        s.labels["key_id"]
        for m in stack.app.state.services.metrics.refused.collect()
        for s in m.samples
        if s.labels.get("reason") == "overloaded" and s.name.endswith("_total")
    ]
    metric = stack.app.state.services.metrics.refused
    return sum(metric.labels("overloaded", k)._value.get() for k in key_ids)


async def test_a_refusal_at_the_door_is_the_apps_refusal(redis_url: str) -> None:
    encoder = EncoderStandIn(delay_s=0.5)
    async with gateway(
        redis_url,
        encoder,
        max_in_flight=1,
        max_in_flight_overloaded=1,
        total_budget_s=2.0,
        encoder_timeout_s=2.0,
    ) as stack:
        await stack.wait_for_metadata()
        authorization = stack.client.headers["authorization"]
        door = uvicorn_http._early
        assert door is not None
        calls: list[Any] = []

        def recording(scope: dict[str, Any]) -> Any:
            answer = door(scope)
            calls.append(answer)
            return answer

        async with _served(stack.app) as port:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers={"authorization": authorization}
            ) as client:
                held = asyncio.ensure_future(client.post(SCORE, json=txn()))
                for _ in range(200):
                    if stack.app.state.services.scoring.admit.in_flight >= 1 or held.done():
                        break
                    await asyncio.sleep(0.005)
                assert stack.app.state.services.scoring.admit.in_flight == 1, (
                    held.done() and held.result().text
                )
                body = txn()
                raw = httpx.Request("POST", "http://x", json=body).content
                before = _refused(stack)

                uvicorn_http.answer_early(recording)
                at_door = await _exchange(port, _post(SCORE, raw, authorization))
                batch_raw = b'{"transactions":[%s]}' % raw
                at_door_batch = await _exchange(
                    port, _post(SCORE + "-batch", batch_raw, authorization)
                )
                # Kept alive: the body was read and dropped, the next request is answered too.
                kept = await _exchange(
                    port,
                    _post(SCORE, raw, authorization, close=False),
                    _post(SCORE, raw, authorization),
                )
                # Health, readiness and metrics are never refused.
                health = await client.get("/healthz")
                metrics = await client.get("/metrics")
                answered = [c for c in calls if c is not None]
                assert len(answered) == 4 and len(calls) == 6  # 4 refusals; health and metrics
                assert _refused(stack) == before + 4

                uvicorn_http.stop_answering_early(recording)
                by_app = await _exchange(port, _post(SCORE, raw, authorization))
                by_app_batch = await _exchange(
                    port, _post(SCORE + "-batch", batch_raw, authorization)
                )
                assert len(calls) == 6
                assert _refused(stack) == before + 6
                uvicorn_http.answer_early(door)

                assert at_door.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
                assert b"retry-after: 1\r\n" in at_door and b"x-request-id: shed-1\r\n" in at_door
                assert b"content-type: application/problem+json\r\n" in at_door
                assert at_door == by_app
                assert at_door_batch == by_app_batch
                assert kept.count(b"HTTP/1.1 503 ") == 2
                assert health.status_code == 200 and metrics.status_code == 200
                text = metrics.text
                assert 'route="/v1/transactions/score",status="503"' in text or (
                    "/v1/transactions/score" in text and '"503"' in text
                )
                assert (await held).status_code == 200
