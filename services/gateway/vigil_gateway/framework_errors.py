"""How the gateway names framework errors (the hooks of ``vigil_servicekit.wiring.wire``);
``vigil_servicekit.handlers`` renders them.

A body that is not JSON is a 415 rather than "not an object", invalid fields are named the way
the business API spells them, and 404/405 say what was asked for.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vigil_gateway.errors import GatewayError, InvalidTransaction
from vigil_gateway.validation import invalid_params, summary
from vigil_servicekit.errors import ServiceError

_HTTP_TITLES = {
    400: ("Bad request", "bad-request"),
    404: ("Not found", "not-found"),
    405: ("Method not allowed", "method-not-allowed"),
    413: ("Request too large", "request-too-large"),
    415: ("Unsupported media type", "unsupported-media-type"),
}


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def from_validation_error(request: Request, exc: RequestValidationError) -> ServiceError:
    errors = exc.errors()
    # FastAPI does not parse a body declared as something else than JSON (a form post, or
    # ``curl -d`` without a header): say what is wrong rather than "not an object".
    if not _is_json(request.headers.get("content-type", "")) and any(
        tuple(e.get("loc", ())) == ("body",) and e.get("type") != "missing" for e in errors
    ):
        return GatewayError(
            "send the body as JSON with Content-Type: application/json",
            status=415,
            title="Unsupported media type",
            slug="unsupported-media-type",
        )
    params = invalid_params(errors, strip_body=True)
    return InvalidTransaction(summary(params), invalid_params=params)


def from_http_error(request: Request, exc: StarletteHTTPException) -> ServiceError:
    title, slug = _HTTP_TITLES.get(exc.status_code, ("HTTP error", "http-error"))
    detail = str(exc.detail)
    if exc.status_code == 404:
        detail = f"no resource at {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return GatewayError(detail, status=exc.status_code, title=title, slug=slug)
