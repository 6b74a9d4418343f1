"""The one place errors become responses: RFC 9457 problem details.

Framework errors (validation, unknown route, wrong method) and unexpected exceptions are first
turned into a ``GatewayError`` so that a single function renders every problem.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE

from vigil_gateway.errors import GatewayError, InvalidTransaction
from vigil_gateway.middleware import REQUEST_ID_HEADER, request_id_of
from vigil_gateway.validation import invalid_params, summary

logger = logging.getLogger(__name__)

_HTTP_TITLES = {
    400: ("Bad request", "bad-request"),
    404: ("Not found", "not-found"),
    405: ("Method not allowed", "method-not-allowed"),
    413: ("Request too large", "request-too-large"),
    415: ("Unsupported media type", "unsupported-media-type"),
}


def problem_response(
    request: Request, error: GatewayError, extra: dict[str, Any] | None = None
) -> JSONResponse:
    request_id = request_id_of(request.scope)
    body = error.problem(instance=request.url.path, request_id=request_id).body()
    if extra:
        body.update(extra)  # RFC 9457 extension members
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(body, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return problem_response(request, exc)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # FastAPI does not parse a body declared as something else than JSON (a form post, or
    # ``curl -d`` without a header): say what is wrong rather than "not an object".
    if not _is_json(request.headers.get("content-type", "")) and any(
        tuple(e.get("loc", ())) == ("body",) and e.get("type") != "missing" for e in errors
    ):
        return problem_response(
            request,
            GatewayError(
                "send the body as JSON with Content-Type: application/json",
                status=415, title="Unsupported media type", slug="unsupported-media-type",
            ),
        )
    params = invalid_params(errors, strip_body=True)
    return problem_response(request, InvalidTransaction(summary(params), invalid_params=params))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title, slug = _HTTP_TITLES.get(exc.status_code, ("HTTP error", "http-error"))
    detail = str(exc.detail)
    if exc.status_code == 404:
        detail = f"no resource at {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    response = problem_response(
        request, GatewayError(detail, status=exc.status_code, title=title, slug=slug)
    )
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "unhandled exception",
        exc_info=exc,
        extra={"request_id": request_id_of(request.scope), "path": request.url.path},
    )
    return problem_response(
        request,
        GatewayError("the gateway failed unexpectedly; the request id identifies it in the logs"),
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
