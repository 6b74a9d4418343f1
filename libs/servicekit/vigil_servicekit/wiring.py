"""One call that gives an app the kit's plumbing: problem handlers, the request-context
middleware and ``app.state.metrics`` (which ``deps.MetricsDep`` reads)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from vigil_servicekit.errors import ServiceError
from vigil_servicekit.handlers import HttpErrorHook, ValidationErrorHook, install_problem_handlers
from vigil_servicekit.metrics import ServiceMetrics
from vigil_servicekit.request_context import RequestContextMiddleware


def wire(
    app: FastAPI,
    *,
    service: str,
    error_root: type[ServiceError],
    metrics: ServiceMetrics,
    log: logging.Logger,
    validation_error: ValidationErrorHook | None = None,
    http_error: HttpErrorHook | None = None,
) -> None:
    """Call it after adding the service's own middleware: the request-context middleware must be
    the outermost, so that it sees every answer.

    ``log`` is the service's logger (``configure_logging``'s result); the access lines go to its
    ``access`` child and unexpected exceptions to its ``handlers`` child.
    """
    app.state.metrics = metrics
    install_problem_handlers(
        app,
        error_root,
        service=service,
        logger=log.getChild("handlers"),
        validation_error=validation_error,
        http_error=http_error,
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, logger=log.getChild("access"))
