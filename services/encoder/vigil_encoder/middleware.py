"""Per-request bookkeeping: request id in and out, one JSON log line, request metrics.

Plain ASGI (not BaseHTTPMiddleware) so that bodies stream through untouched and the route
template is read from the scope after routing, keeping metric labels bounded. Routes may put
``rows`` and ``feature_service`` on ``request.state``; they are logged, payloads never are.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil_encoder.metrics import EncoderMetrics

logger = logging.getLogger("vigil_encoder.access")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()
# A caller's id is echoed and logged, so only accept something that is plainly an id.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: EncoderMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope["headers"]:
            if key == _REQUEST_ID_HEADER_BYTES:
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != _REQUEST_ID_HEADER_BYTES]
                headers.append((_REQUEST_ID_HEADER_BYTES, request_id.encode("latin-1")))
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
            extra = {
                "request_id": request_id,
                "method": scope["method"],
                "route": template,
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
            }
            for key in ("feature_service", "rows"):
                if key in state:
                    extra[key] = state[key]
            logger.info("request", extra=extra)
