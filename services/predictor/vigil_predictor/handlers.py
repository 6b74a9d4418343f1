"""The one place errors become responses: RFC 9457 problem details.

Framework errors (validation, unknown route) and unexpected exceptions are first turned into a
``PredictorError`` so that a single function renders every problem the predictor answers with.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE, InvalidParam, Problem, problem_type

from vigil_predictor.errors import PredictorError
from vigil_predictor.middleware import REQUEST_ID_HEADER, request_id_of

logger = logging.getLogger(__name__)


def problem_response(request: Request, error: PredictorError) -> JSONResponse:
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
    body = problem.body()
    # V2 clients (tritonclient, KServe's) read the message from "error"; RFC 9457 allows
    # extension members, so both audiences get what they look for.
    body["error"] = error.detail
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(
        body, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


async def _predictor_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PredictorError)
    return problem_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    params = [
        InvalidParam(name=".".join(str(p) for p in err["loc"]), reason=err["msg"])
        for err in exc.errors()
    ]
    names = ", ".join(p.name for p in params) or "the request"
    return problem_response(
        request,
        PredictorError(
            f"invalid: {names}",
            status=422,
            title="Validation failed",
            slug="validation-failed",
            invalid_params=params,
        ),
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    response = problem_response(
        request, PredictorError(str(exc.detail), status=exc.status_code, title=title, slug=slug)
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
        PredictorError(
            "the predictor failed unexpectedly; the request id identifies it in the logs"
        ),
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PredictorError, _predictor_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
