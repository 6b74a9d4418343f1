"""Per-request bookkeeping: request id in and out, one JSON access log line, request metrics.

Plain ASGI (not BaseHTTPMiddleware) so that bodies stream through untouched and the route
template is read from the scope after routing, keeping metric labels bounded. Handlers add
fields (rows, label, ...) to the access line through :func:`log_fields`; payloads never go there.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil_servicekit.logs import RESERVED_LOG_KEYS, sole_json_handler
from vigil_servicekit.metrics import ServiceMetrics

REQUEST_ID_HEADER = "x-request-id"
_HEADER = REQUEST_ID_HEADER.encode()
# A caller's id is echoed, logged and forwarded, so only accept something that is plainly an id.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"


def request_id_of(scope: Scope) -> str | None:
    return scope.get("state", {}).get("request_id")


def arrival_of(scope: Scope) -> float:
    """When the request arrived (``time.monotonic()``): stamped by the server's protocol when it
    read the first bytes (``uvicorn_http``), else when this middleware first saw it."""
    return scope["extensions"]["vigil.arrival"]


def log_fields(scope: Scope) -> dict[str, Any]:
    """Extra fields for this request's access log line (never whole payloads).

    Keys must not be ``logging.LogRecord`` attributes (``name``, ``msg``, ...).
    """
    return scope.setdefault("state", {}).setdefault("log_fields", {})


class RequestContextMiddleware:
    """Add it last (outermost) so it sees every answer but the unexpected-error 500, which
    FastAPI's outer error middleware renders; the problem handler sets the id on that one."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics, logger: logging.Logger) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extensions = scope.get("extensions")
        if extensions is None:
            scope["extensions"] = {"vigil.arrival": time.monotonic()}
        elif "vigil.arrival" not in extensions:
            extensions["vigil.arrival"] = time.monotonic()
        request_id = request_id_from(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        fields: dict[str, Any] = {}
        state["log_fields"] = fields
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER]
                headers.append((_HEADER, request_id.encode("latin-1")))
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
            logger = self.logger
            if logger.isEnabledFor(logging.INFO):
                extra = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    **fields,
                }
                log_request(logger, extra, fields)


def request_id_from(headers: Any) -> str:
    """The request's id: the caller's ``X-Request-Id`` when it is plainly an id, else a new one."""
    incoming = None
    for key, value in headers:
        if key == _HEADER:
            incoming = value.decode("latin-1")
            break
    return incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex


def log_request(logger: logging.Logger, extra: dict[str, Any], fields: dict[str, Any]) -> None:
    """Write one request's access line (``extra``: the line's fields, ``fields`` among them)."""
    handler = sole_json_handler(logger, logging.INFO)
    if handler is not None and not (fields and fields.keys() & RESERVED_LOG_KEYS):
        handler.emit_line(logger, logging.INFO, "request", extra)
    else:
        # What ``logger.info("request", extra=extra)`` does, less its walk up the
        # stack to find the caller, which is always this line.
        logger.handle(
            logger.makeRecord(
                logger.name,
                logging.INFO,
                __file__,
                sys._getframe().f_lineno,
                "request",
                (),
                None,
                "log_request",
                extra,
            )
        )
