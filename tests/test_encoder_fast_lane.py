"""The encoder's ``/v1/encode`` answered by the servicekit's fast lane equals FastAPI's answer.

Every request is sent twice to one real app on a real Redis: once as it runs in production (the
lane answers, or defers to FastAPI a body it does not plainly take) and once with a dependency
override in place, which makes the lane step aside so that FastAPI's routing, body reading,
dependency injection and exception middleware answer. Status, headers, body, the access log line
and the request metrics must be the same.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fast_lane_checks import Pair, access_line, assert_same, provider
from vigil import feast_repo
from vigil.redis_server import free_port
from vigil_contracts.encoding import BINARY_HEADER_LENGTH, BINARY_MEDIA_TYPE
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_contracts.request_features import NO_DEVICE_ID
from vigil_encoder import dataplane
from vigil_encoder.app import create_app
from vigil_encoder.deps import get_encoder
from vigil_encoder.rest import encode, encoder_router
from vigil_encoder.settings import EncoderSettings
from vigil_servicekit.fast_lane import declared_route

SERVICE = "fraud_model_v1"
ENCODE = "/v1/encode"
BINARY = {"accept": BINARY_MEDIA_TYPE}


class FrozenClock:
    """The data plane's ``time`` with a fixed ``time()``: both answers see the same ages."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def settings(feature_env, **overrides: Any) -> EncoderSettings:
    values: dict[str, Any] = {
        "redis_url": feature_env.redis.url,
        "spec_path": feast_repo.spec_path(feature_env.repo),
    }
    values.update(overrides)
    return EncoderSettings(**values)


async def _pair(app: FastAPI, monkeypatch) -> AsyncIterator[Pair]:
    monkeypatch.setattr(dataplane, "time", FrozenClock())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://encoder") as client:
        async with app.router.lifespan_context(app):
            yield Pair(
                app,
                client,
                monkeypatch,
                routes=[declared_route(encoder_router, encode)],
                dependency=get_encoder,
                state_attr="encoder",
                logger="vigil_encoder",
            )


@pytest.fixture
async def pair(feature_env, monkeypatch) -> AsyncIterator[Pair]:
    async for p in _pair(create_app(settings(feature_env)), monkeypatch):
        yield p


def rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "entities": {
                "card_id": f"c{i:03d}",
                "merchant_id": "m1",
                "device_id": NO_DEVICE_ID,
                "currency": "EUR",
            },
            "request": {
                "amount": 10.0 + i,
                "txn_epoch": time.time(),
                "txn_hour": 12,
                "channel": "ecom",
                "country": "DE",
                "device_present": 0,
            },
        }
        for i in range(n)
    ]


def columns(n: int) -> dict[str, Any]:
    given = rows(n)
    return {
        part: {name: [row[part][name] for row in given] for name in given[0][part]}
        for part in ("entities", "request")
    }


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert response.headers["x-request-id"] == "lane-1"
    body = response.json()
    assert body["type"].endswith("/" + slug) and body["request_id"] == "lane-1"
    return body


@pytest.mark.parametrize("form", ["rows", "columns"])
@pytest.mark.parametrize(
    "accept",
    [{}, BINARY, {"accept": f"{BINARY_MEDIA_TYPE};q=0"}],
    ids=["json", "binary", "binary-refused"],
)
async def test_answers_are_equal(pair: Pair, form: str, accept: dict[str, str]) -> None:
    body = {"feature_service": SERVICE, form: rows(3) if form == "rows" else columns(3)}
    lane, fastapi, *logs = await pair.send("POST", ENCODE, json=body, headers=accept)
    assert_same(lane, fastapi, *logs)
    assert lane.status_code == 200 and lane.headers["x-request-id"] == "lane-1"
    if accept is BINARY:
        assert lane.headers["content-type"] == BINARY_MEDIA_TYPE
        assert int(lane.headers[BINARY_HEADER_LENGTH]) > 0
    else:
        assert lane.headers["content-type"] == "application/json"
        assert len(lane.json()["rows"]) == 3
    line = access_line(logs[0])
    assert (line["route"], line["feature_service"], line["rows"]) == (ENCODE, SERVICE, 3)


@pytest.mark.parametrize(
    "kwargs,deferred,status,slug,names",
    [
        (
            {"json": {"feature_service": "fraud_model_v9", "rows": rows(1)}},
            False,
            404,
            "feature-service-not-found",
            None,
        ),
        # What the lane does not plainly take, FastAPI answers.
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            True,
            422,
            "validation-failed",
            ["1"],
        ),
        (
            {"content": b"", "headers": {"content-type": "application/json"}},
            True,
            422,
            "validation-failed",
            None,
        ),
        (
            {"json": [{"feature_service": SERVICE, "rows": rows(1)}]},
            True,
            422,
            "validation-failed",
            None,
        ),
        (
            {
                "content": json.dumps({"feature_service": SERVICE, "rows": rows(1)}),
                "headers": {"content-type": "text/plain"},
            },
            True,
            422,
            "validation-failed",
            None,
        ),
        (
            {"content": b"null", "headers": {"content-type": "application/json"}},
            True,
            422,
            "validation-failed",
            None,
        ),
        # NaN: JSON only the standard parser reads (a bare token), then refused by the model.
        (
            {
                "content": json.dumps(
                    {
                        "feature_service": SERVICE,
                        "rows": [
                            {
                                **rows(1)[0],
                                "request": {**rows(1)[0]["request"], "amount": float("nan")},
                            }
                        ],
                    }
                ),
                "headers": {"content-type": "application/json"},
            },
            True,
            422,
            "validation-failed",
            ["rows.0.request.amount"],
        ),
        # A body the lane reads, refused by the encoder's parse.
        ({"json": {"feature_service": SERVICE}}, False, 422, "validation-failed", ["rows"]),
        (
            {
                "json": {
                    "feature_service": SERVICE,
                    "rows": [
                        {**rows(1)[0], "request": {**rows(1)[0]["request"], "amount": "lots"}}
                    ],
                }
            },
            False,
            422,
            "validation-failed",
            ["rows.0.request.amount"],
        ),
        (
            {
                "json": {
                    "feature_service": SERVICE,
                    "columns": {
                        **columns(2),
                        "request": {**columns(2)["request"], "txn_hour": [12, "noon"]},
                    },
                }
            },
            False,
            422,
            "validation-failed",
            None,
        ),
    ],
    ids=[
        "unknown-service",
        "invalid-json",
        "empty",
        "array",
        "wrong-content-type",
        "null",
        "nan",
        "missing-field",
        "bad-row-value",
        "bad-column-value",
    ],
)
async def test_problems_are_equal(
    pair: Pair,
    kwargs: dict[str, Any],
    deferred: bool,
    status: int,
    slug: str,
    names: list[str] | None,
) -> None:
    lane, fastapi, *logs = await pair.send("POST", ENCODE, lane=not deferred, **kwargs)
    assert_same(lane, fastapi, *logs)
    body = assert_problem(lane, status, slug)
    if names is not None:
        assert [p["name"] for p in body["invalid_params"]] == names


async def test_another_spelling_of_json_is_deferred_and_answered(pair: Pair) -> None:
    content = json.dumps({"feature_service": SERVICE, "columns": columns(2)})
    for content_type in (
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.vigil+json",
    ):
        lane, fastapi, *logs = await pair.send(
            "POST",
            ENCODE,
            lane=False,
            content=content,
            headers={"content-type": content_type, **BINARY},
        )
        assert_same(lane, fastapi, *logs)
        assert lane.status_code == 200 and BINARY_HEADER_LENGTH in lane.headers


async def test_a_body_in_chunks_is_equal(pair: Pair) -> None:
    content = json.dumps({"feature_service": SERVICE, "rows": rows(40)}).encode()

    class Chunks:  # a new stream of 500-byte chunks for each of the two requests
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for start in range(0, len(content), 500):
                yield content[start : start + 500]

    for deferred, content_type in ((False, "application/json"), (True, "application/x+json")):
        lane, fastapi, *logs = await pair.send(
            "POST",
            ENCODE,
            lane=not deferred,
            content=Chunks(),
            headers={"content-type": content_type},
        )
        assert_same(lane, fastapi, *logs)
        assert lane.status_code == 200 and len(lane.json()["rows"]) == 40


async def test_a_client_gone_while_sending_is_equal(pair: Pair) -> None:
    content = json.dumps({"feature_service": SERVICE, "rows": rows(2)}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": ENCODE,
        "raw_path": ENCODE.encode(),
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "server": ("encoder", 80),
        "headers": [
            (b"host", b"encoder"),
            (b"content-type", b"application/json"),
            (b"x-request-id", b"lane-1"),
        ],
    }

    async def answer(through_fastapi: bool) -> list[dict[str, Any]]:
        if through_fastapi:
            pair.app.dependency_overrides[get_encoder] = provider(pair.app.state.encoder)
        messages = [
            {"type": "http.request", "body": content[:10], "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        routed = pair.routed
        try:
            await pair.app({**scope}, receive, send)
        finally:
            pair.app.dependency_overrides.clear()
        assert pair.routed - routed == 1  # the lane deferred it
        return sent

    answers = [await answer(through_fastapi=False), await answer(through_fastapi=True)]
    assert answers[0] == answers[1]
    assert answers[0][0]["status"] == 400


async def test_too_many_rows_is_equal(feature_env, monkeypatch) -> None:
    async for pair in _pair(create_app(settings(feature_env, max_rows=2)), monkeypatch):
        for body in (
            {"feature_service": SERVICE, "rows": rows(3)},
            {"feature_service": SERVICE, "columns": columns(3)},
        ):
            lane, fastapi, *logs = await pair.send("POST", ENCODE, json=body)
            assert_same(lane, fastapi, *logs)
            assert_problem(lane, 413, "too-many-rows")


async def test_redis_down_is_equal(feature_env, monkeypatch) -> None:
    app = create_app(settings(feature_env, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    async for pair in _pair(app, monkeypatch):
        lane, fastapi, *logs = await pair.send(
            "POST", ENCODE, json={"feature_service": SERVICE, "columns": columns(1)}
        )
        assert_same(lane, fastapi, *logs)
        assert_problem(lane, 503, "feature-store-unavailable")


async def test_unexpected_exception_is_the_same_generic_500(pair: Pair, monkeypatch) -> None:
    async def explode(*_args: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pair.app.state.encoder, "encode_batch", explode)
    lane, fastapi, *logs = await pair.send(
        "POST", ENCODE, json={"feature_service": SERVICE, "rows": rows(1)}
    )
    assert_same(lane, fastapi, *logs)
    assert_problem(lane, 500, "internal-error")
    assert "secret" not in lane.text
    unhandled = [r for r in logs[0] if r.getMessage() == "unhandled exception"]
    assert len(unhandled) == 1 and unhandled[0].exc_info is not None


async def test_metric_labels_are_the_declared_template(pair: Pair) -> None:
    await pair.send("POST", ENCODE, json={"feature_service": SERVICE, "rows": rows(1)})
    await pair.send("POST", ENCODE, json={"feature_service": SERVICE})
    await pair.send(
        "POST", ENCODE, lane=False, content=b"[]", headers={"content-type": "application/json"}
    )
    text = (await pair.client.get("/metrics")).text

    def count(status: int) -> float:
        pattern = (
            r'vigil_encoder_requests_total\{method="POST",(?:outcome="[^"]*",)?route="'
            + re.escape(ENCODE)
            + r'",status="'
            + str(status)
            + r'"\} (\S+)'
        )
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    # Each through the lane (or deferred by it) and through FastAPI, under the same labels.
    assert count(200) == 2
    assert count(422) == 4
    assert "unmatched" not in text
