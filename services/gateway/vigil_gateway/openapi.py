"""The gateway's OpenAPI document, exact for the configuration it runs with.

FastAPI writes most of it from the routes; this adds what only the settings know (whether the
scoring routes and ``/metrics`` need a key, the batch size cap) and keeps each error response
to the one media type it is sent with (``application/problem+json``), so that a client, or a
fuzzer, generated from the document meets exactly what the gateway accepts and answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_gateway.settings import GatewaySettings

SCORING = ("/v1/transactions/score", "/v1/transactions/score-batch")
_AUTH_STATUSES = ("401", "403")


def exact_openapi(app: FastAPI, settings: GatewaySettings) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    paths = schema["paths"]
    for path in SCORING:
        operation = paths[path]["post"]
        if not settings.auth_enabled:
            operation.pop("security", None)
            _drop(operation, _AUTH_STATUSES)
        if not settings.rate_limit_enabled:
            _drop(operation, ("429",))
    metrics = paths["/metrics"]["get"]
    if settings.metrics_auth:
        metrics["security"] = [{"apiKey": []}]
    else:
        _drop(metrics, _AUTH_STATUSES)
    batch = schema["components"]["schemas"]["BatchRequest"]["properties"]["transactions"]
    batch["maxItems"] = settings.max_batch
    for item in paths.values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and PROBLEM_MEDIA_TYPE in content:
                    problem = content.pop("application/json", None) or content[PROBLEM_MEDIA_TYPE]
                    content[PROBLEM_MEDIA_TYPE] = problem
    app.openapi_schema = schema
    return schema


def _drop(operation: dict[str, Any], statuses: tuple[str, ...]) -> None:
    for status in statuses:
        operation.get("responses", {}).pop(status, None)
