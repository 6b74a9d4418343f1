"""The one place errors become responses: RFC 9457 problem details.

Framework errors (validation, unknown route, wrong method) and unexpected exceptions are first
turned into the service's error root so that :func:`problem_response` renders every problem.
A service may replace how validation and HTTP errors are turned into errors (``validation_error``,
``http_error``); the rendering stays here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vigil_contracts.problems import PROBLEM_MEDIA_TYPE, InvalidParam
from vigil_servicekit.errors import ServiceError
from vigil_servicekit.request_context import REQUEST_ID_HEADER, request_id_of

ValidationErrorHook = Callable[[Request, RequestValidationError], ServiceError]
HttpErrorHook = Callable[[Request, StarletteHTTPException], ServiceError]

_HTTP_TITLES = {404: ("Not found", "not-found"), 405: ("Method not allowed", "method-not-allowed")}
# Pydantic adds the member type it tried to the location of a union's errors
# ("rows.0.request.amount.float"); the client only knows the field.
_UNION_MEMBER_TAGS = {"float", "int", "str", "bool", "none", "bytes", "list", "dict"}


def problem_response(request: Request, error: ServiceError) -> JSONResponse:
    request_id = request_id_of(request.scope)
    body = error.problem_body(instance=request.url.path, request_id=request_id)
    # Also set here: the unexpected-error answer is sent outside the request-id middleware.
    headers = (
        {**error.headers, REQUEST_ID_HEADER: request_id} if request_id else error.headers or None
    )
    return JSONResponse(
        body, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _param_name(loc: tuple[int | str, ...]) -> str:
    # FastAPI prefixes body fields with "body"; clients know the field as "rows.3.entities".
    parts = list(loc[1:]) if len(loc) > 1 and loc[0] == "body" else list(loc)
    if len(parts) > 1 and isinstance(parts[-1], str) and parts[-1] in _UNION_MEMBER_TAGS:
        parts.pop()
    return ".".join(str(p) for p in parts)


def invalid_params(errors: list[dict]) -> list[InvalidParam]:
    """One entry per field, its distinct messages joined."""
    reasons: dict[str, list[str]] = {}
    for err in errors:
        found = reasons.setdefault(_param_name(tuple(err["loc"])), [])
        if err["msg"] not in found:
            found.append(err["msg"])
    return [InvalidParam(name=name, reason="; ".join(msgs)) for name, msgs in reasons.items()]


def install_problem_handlers(
    app: FastAPI,
    root: type[ServiceError],
    *,
    service: str,
    logger: logging.Logger,
    validation_error: ValidationErrorHook | None = None,
    http_error: HttpErrorHook | None = None,
) -> None:
    """Answer every error of ``app`` with a problem document.

    ``root`` is the service's error root: framework errors become one, so that what the service
    adds to every problem (see :meth:`ServiceError.problem_body`) is on those too. ``service``
    names it in the generic 500; ``logger`` gets the traceback of unexpected exceptions.
    """

    def default_validation_error(_request: Request, exc: RequestValidationError) -> ServiceError:
        params = invalid_params(list(exc.errors()))
        names = ", ".join(p.name for p in params) or "the request"
        return root(
            f"invalid: {names}",
            status=422,
            title="Validation failed",
            slug="validation-failed",
            invalid_params=params,
        )

    def default_http_error(_request: Request, exc: StarletteHTTPException) -> ServiceError:
        title, slug = _HTTP_TITLES.get(exc.status_code, ("HTTP error", "http-error"))
        return root(str(exc.detail), status=exc.status_code, title=title, slug=slug)

    to_validation_error = validation_error or default_validation_error
    to_http_error = http_error or default_http_error

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return problem_response(request, exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(request, to_validation_error(request, exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        response = problem_response(request, to_http_error(request, exc))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "unhandled exception",
            exc_info=exc,
            extra={"request_id": request_id_of(request.scope), "path": request.url.path},
        )
        return problem_response(
            request,
            root(f"the {service} failed unexpectedly; the request id identifies it in the logs"),
        )

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
