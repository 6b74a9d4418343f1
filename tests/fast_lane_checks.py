"""Checks shared by the fast-lane tests: a request answered by the lane and the same request
answered by FastAPI must be indistinguishable (status, headers, body, access line, log lines)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute


def access_line(records: list[logging.LogRecord]) -> dict[str, Any]:
    lines = [r for r in records if r.getMessage() == "request" and r.name.endswith(".access")]
    assert len(lines) == 1
    entry = {
        k: v
        for k, v in vars(lines[0]).items()
        if k
        not in (
            "latency_ms",
            "created",
            "msecs",
            "relativeCreated",
            "thread",
            "threadName",
            "lineno",
        )
    }
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


def provider(value: Any) -> Callable[[], Any]:
    """A dependency override that returns ``value`` (a closure over an argument, not a loop
    variable; FastAPI would read a default argument as a query parameter)."""
    return lambda: value


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Pair:
    """Sends each request through the lane and through FastAPI (forced by overriding
    ``dependency`` with the app's own ``state_attr`` object, which the lane steps aside for), and
    returns both answers and the service logger's records of each."""

    def __init__(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        monkeypatch: Any,
        *,
        routes: Sequence[APIRoute],
        dependency: Callable[..., Any],
        state_attr: str,
        logger: str,
        request_id: str = "lane-1",
    ) -> None:
        self.app, self.client = app, client
        self.dependency, self.state_attr, self.logger = dependency, state_attr, logger
        self.request_id = request_id
        self.routed = 0  # requests FastAPI routed to one of ``routes``
        for route in routes:
            original = route.handle

            async def counting(
                scope: Any, receive: Any, send: Any, _original: Any = original
            ) -> None:
                self.routed += 1
                await _original(scope, receive, send)

            monkeypatch.setattr(route, "handle", counting)

    async def send(
        self,
        method: str,
        path: str,
        *,
        lane: bool | None = True,
        before: Callable[[], Awaitable[Any]] | None = None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, httpx.Response, list[logging.LogRecord], list[logging.LogRecord]]:
        """``lane``: whether the lane answers the request itself (False: it leaves it to
        FastAPI; None: not checked). ``before`` runs before each of the two requests (to put
        back state the first one changed)."""
        # The same request id both times: it is in the headers and in a problem's body.
        kwargs["headers"] = {"x-request-id": self.request_id, **kwargs.get("headers", {})}
        answers, logs = [], []
        for through_fastapi in (False, True):
            if through_fastapi:
                own = getattr(self.app.state, self.state_attr)
                self.app.dependency_overrides[self.dependency] = provider(own)
            if before is not None:
                await before()
            records = Records()
            service_log = logging.getLogger(self.logger)
            service_log.addHandler(records)
            routed = self.routed
            try:
                answers.append(await self.client.request(method, path, **kwargs))
            finally:
                service_log.removeHandler(records)
                self.app.dependency_overrides.clear()
            if lane is not None:
                assert (self.routed - routed) == (1 if through_fastapi or not lane else 0)
            logs.append(records.records)
        return answers[0], answers[1], logs[0], logs[1]
