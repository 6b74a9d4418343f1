"""Checks shared by the fast-lane tests: a request answered by the lane and the same request
answered by FastAPI must be indistinguishable (status, headers, body, access line, log lines)."""

from __future__ import annotations

import logging
from typing import Any

import httpx


def access_line(records: list[logging.LogRecord]) -> dict[str, Any]:
    lines = [r for r in records if r.getMessage() == "request" and r.name.endswith(".access")]
    assert len(lines) == 1
    entry = {k: v for k, v in vars(lines[0]).items() if k not in ("latency_ms", "created",
             "msecs", "relativeCreated", "thread", "threadName", "lineno")}
    assert lines[0].latency_ms >= 0
    return entry


def assert_same(
    lane: httpx.Response,
    fastapi: httpx.Response,
    lane_logs: list[logging.LogRecord],
    fastapi_logs: list[logging.LogRecord],
) -> None:
    assert lane.status_code == fastapi.status_code, (lane.text, fastapi.text)
    assert lane.headers.multi_items() == fastapi.headers.multi_items()
    assert lane.content == fastapi.content
    assert access_line(lane_logs) == access_line(fastapi_logs)
    assert [(r.name, r.getMessage()) for r in lane_logs] == [
        (r.name, r.getMessage()) for r in fastapi_logs
    ]
