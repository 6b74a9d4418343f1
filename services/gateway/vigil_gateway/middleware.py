"""Per-request bookkeeping: request id in and out, one JSON log line, request metrics; and the
request body size limit.

Plain ASGI (not BaseHTTPMiddleware) so that bodies stream through untouched and the route
template is read from the scope after routing, keeping metric labels bounded. Handlers add
outcome fields (label, degraded, ...) to the log line through :func:`log_fields`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE, Problem, problem_type

from vigil_gateway.metrics import GatewayMetrics

logger = logging.getLogger("vigil_gateway.access")

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is echoed, logged and forwarded, so only accept something that is plainly an id.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def log_fields(scope: Scope) -> dict[str, Any]:
    """Extra fields for this request's access log line (never whole payloads)."""
    return scope.setdefault("state", {}).setdefault("log_fields", {})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log_fields"] = {}
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = 500  # the error handler outside this middleware answers it
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.observe_request(template, scope["method"], status, elapsed)
            logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    **state.get("log_fields", {}),
                },
            )


class BodyLimitMiddleware:
    """Refuses request bodies above ``max_bytes`` with 413, before they are all in memory.

    A declared Content-Length over the limit is answered at once; a body that grows past it
    while streaming fails the read with an HTTPException the error handler renders.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = Problem(
            type=problem_type("request-too-large"),
            title="Request too large",
            status=413,
            detail=self._detail(),
            instance=scope.get("path"),
            request_id=request_id_of(scope),
        ).body()
        response = JSONResponse(body, status_code=413, media_type=PROBLEM_MEDIA_TYPE)
        await response(scope, receive, send)
