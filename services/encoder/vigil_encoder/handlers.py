"""The one place errors become responses: RFC 9457 problem details.

Framework errors (validation, unknown route) and unexpected exceptions are first turned into an
``EncoderError`` so that a single function renders every problem the encoder answers with.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE, InvalidParam, Problem, problem_type

from vigil_encoder.errors import EncoderError, InvalidEncodeRequest
from vigil_encoder.middleware import REQUEST_ID_HEADER, request_id_of

logger = logging.getLogger(__name__)


def problem_response(request: Request, error: EncoderError) -> JSONResponse:
    request_id = request_id_of(request.scope)
    problem = Problem(
        type=problem_type(error.slug),
        title=error.title,
        status=error.status,
        detail=error.detail,
        instance=request.url.path,
        request_id=request_id,
        invalid_params=error.invalid_params,
    )
    body = {**error.extensions, **problem.body()}
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(body, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE,
                        headers=headers)


async def _encoder_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EncoderError)
    return problem_response(request, exc)


# Pydantic adds the member type it tried to the location of a union's errors
# ("rows.0.request.amount.float"); the client only knows the field.
_UNION_MEMBER_TAGS = {"float", "int", "str", "bool", "none", "bytes", "list", "dict"}


def _param_name(loc: tuple[int | str, ...]) -> str:
    # FastAPI prefixes body fields with "body"; clients know the field as "rows.3.entities".
    parts = list(loc[1:]) if len(loc) > 1 and loc[0] == "body" else list(loc)
    if len(parts) > 1 and isinstance(parts[-1], str) and parts[-1] in _UNION_MEMBER_TAGS:
        parts.pop()
    return ".".join(str(p) for p in parts)


def _invalid_params(errors: list[dict]) -> list[InvalidParam]:
    reasons: dict[str, list[str]] = {}
    for err in errors:
        found = reasons.setdefault(_param_name(tuple(err["loc"])), [])
        if err["msg"] not in found:
            found.append(err["msg"])
    return [InvalidParam(name=name, reason="; ".join(msgs)) for name, msgs in reasons.items()]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    params = _invalid_params(list(exc.errors()))
    names = ", ".join(p.name for p in params) or "the request"
    return problem_response(request, InvalidEncodeRequest(f"invalid: {names}",
                                                          invalid_params=params))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    response = problem_response(
        request, EncoderError(str(exc.detail), status=exc.status_code, title=title, slug=slug)
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
        EncoderError("the encoder failed unexpectedly; the request id identifies it in the logs"),
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EncoderError, _encoder_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
