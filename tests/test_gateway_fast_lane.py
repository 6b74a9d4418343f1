"""The gateway's scoring routes answered by the servicekit's fast lane equal FastAPI's answers.

Every request is sent twice to one gateway (stand-in encoder and predictor, a real Redis as the
decision store): once as it runs in production (the lane answers a plainly valid request, or
defers it to FastAPI) and once with a dependency override in place, which makes the lane step
aside so that FastAPI's routing, body reading and validation, dependency injection and exception
middleware answer. Status, headers, body, the access line and the log lines must be the same.
The decision store is emptied before each of the two requests unless a test says otherwise, so
that both are decided afresh.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

import test_gateway
from fast_lane_checks import Pair, assert_same
from test_gateway import fraud_txn, gateway, suspicious_txn, txn
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_gateway import deps
from vigil_gateway.rest import score_batch, score_transaction, transactions_router
from vigil_servicekit.fast_lane import declared_route

SCORE = "/v1/transactions/score"
BATCH = "/v1/transactions/score-batch"

# The fixture, assigned rather than imported: the tests' parameters of that name would read as
# redefinitions of an unused import (F811).
redis_url = test_gateway.redis_url


async def _pair(redis_url: str, monkeypatch: Any, **settings: Any) -> AsyncIterator[Pair]:
    async with gateway(redis_url, **settings) as stack:
        await stack.wait_for_metadata()
        pair = Pair(
            stack.app,
            stack.client,
            monkeypatch,
            routes=[
                declared_route(transactions_router, score_transaction),
                declared_route(transactions_router, score_batch),
            ],
            dependency=deps._services,
            state_attr="services",
            logger="vigil_gateway",
        )
        pair.stack = stack  # type: ignore[attr-defined]
        yield pair


@pytest.fixture
async def pair(redis_url: str, monkeypatch: Any) -> AsyncIterator[Pair]:
    async for p in _pair(redis_url, monkeypatch):
        yield p


@pytest.fixture
async def forget(redis_url: str, pair: Pair) -> AsyncIterator[Any]:
    """Empties the gateway's decision store (its own Redis db), once the decisions written
    behind the answers already given have landed."""
    client = aioredis.Redis.from_url(redis_url)

    async def flush() -> None:
        await pair.stack.settled()  # type: ignore[attr-defined]
        # The decisions only: the key table the client's key is in stays.
        keys = [key async for key in client.scan_iter(match="vigil:decision:*", count=1000)]
        if keys:
            await client.delete(*keys)

    yield flush
    await client.aclose()


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["type"].endswith("/" + slug) and body["request_id"] == "lane-1"
    return body


@pytest.mark.parametrize(
    "body",
    [
        txn(),
        fraud_txn(),
        suspicious_txn(),
        txn(ip_address="2001:db8::1", device_id=None),
        txn(country=None, ip_address=None, timestamp="2024-06-01T14:05:00.123456789z"),
        txn(amount=12, card_id="card_ünïcode", merchant_id='m\\"quoted'),
    ],
    ids=["legit", "fraud", "suspicious", "ipv6-no-device", "nanoseconds-no-country", "odd-text"],
)
async def test_single_answers_are_equal(pair: Pair, forget: Any, body: dict[str, Any]) -> None:
    lane, fastapi, *logs = await pair.send("POST", SCORE, json=body, before=forget)
    assert_same(lane, fastapi, *logs)
    assert lane.status_code == 200 and lane.json()["cached"] is False


async def test_batch_answers_are_equal(pair: Pair, forget: Any) -> None:
    repeated = txn()
    items = [txn(), fraud_txn(), suspicious_txn(), repeated, txn(device_id=None), repeated]
    lane, fastapi, *logs = await pair.send(
        "POST", BATCH, json={"transactions": items}, before=forget
    )
    assert_same(lane, fastapi, *logs)
    results = lane.json()["results"]
    assert [r["status"] for r in results] == [200] * 6
    assert {r["result"]["label"] for r in results} >= {"not_fraud", "highly_suspicious"}


async def test_replays_and_conflicts_are_equal(pair: Pair) -> None:
    stored, changed = txn(), txn()
    for body in (stored, changed):
        assert (await pair.client.post(SCORE, json=body)).status_code == 200
    changed = {**changed, "amount": changed["amount"] + 1}
    lane, fastapi, *logs = await pair.send("POST", SCORE, json=stored)
    assert_same(lane, fastapi, *logs)
    assert lane.json()["cached"] is True
    lane, fastapi, *logs = await pair.send("POST", SCORE, json=changed)
    assert_same(lane, fastapi, *logs)
    assert_problem(lane, 409, "transaction-id-conflict")
    lane, fastapi, *logs = await pair.send("POST", BATCH, json={"transactions": [stored, changed]})
    assert_same(lane, fastapi, *logs)
    assert [r["status"] for r in lane.json()["results"]] == [200, 409]


async def test_cache_control_rescores_in_the_lane_too(pair: Pair) -> None:
    body = txn()
    assert (await pair.client.post(SCORE, json=body)).status_code == 200
    await pair.stack.settled()  # type: ignore[attr-defined] - its decision is stored (behind it)
    lane, fastapi, *logs = await pair.send(
        "POST", SCORE, json=body, headers={"cache-control": "max-age=0, No-Cache"}
    )
    assert_same(lane, fastapi, *logs)
    assert lane.json()["cached"] is False


@pytest.mark.parametrize(
    "path,kwargs,status,slug",
    [
        (SCORE, {"json": txn(amount=-1)}, 422, "invalid-transaction"),
        (SCORE, {"json": {**txn(), "extra": 1}}, 422, "invalid-transaction"),
        (SCORE, {"json": [txn()]}, 422, "invalid-transaction"),
        (
            SCORE,
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "invalid-transaction",
        ),
        (
            SCORE,
            {"content": b"", "headers": {"content-type": "application/json"}},
            422,
            "invalid-transaction",
        ),
        (
            SCORE,
            {
                "content": json.dumps(txn(device_id="\ud800")).encode(),
                "headers": {"content-type": "application/json"},
            },
            422,
            "invalid-transaction",
        ),
        (
            SCORE,
            {"content": json.dumps(txn()).encode(), "headers": {"content-type": "text/plain"}},
            415,
            "unsupported-media-type",
        ),
        (SCORE, {"json": txn(), "params": {"rescore": "true"}}, 200, None),
        (BATCH, {"json": {"transactions": []}}, 422, "invalid-transaction"),
        (BATCH, {"json": {"transactions": [txn(), txn(currency="eur")]}}, 200, None),
        (BATCH, {"json": {"transactions": [txn()], "more": True}}, 422, "invalid-transaction"),
        (BATCH, {"json": {"transactions": "all"}}, 422, "invalid-transaction"),
    ],
    ids=[
        "invalid-field",
        "extra-field",
        "array",
        "not-json",
        "empty",
        "lone-surrogate",
        "text-plain",
        "rescore-query",
        "empty-batch",
        "one-bad-item",
        "extra-batch-field",
        "not-a-list",
    ],
)
async def test_what_the_lane_does_not_take_is_deferred_and_equal(
    pair: Pair,
    forget: Any,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    slug: str | None,
) -> None:
    lane, fastapi, *logs = await pair.send("POST", path, lane=False, before=forget, **kwargs)
    assert_same(lane, fastapi, *logs)
    if slug is None:
        assert lane.status_code == status, lane.text
    else:
        assert_problem(lane, status, slug)


async def test_another_spelling_of_json_is_deferred_and_answered(pair: Pair, forget: Any) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        lane, fastapi, *logs = await pair.send(
            "POST",
            SCORE,
            lane=False,
            before=forget,
            content=json.dumps(txn()).encode(),
            headers={"content-type": content_type},
        )
        assert_same(lane, fastapi, *logs)
        assert lane.status_code == 200


async def test_too_many_transactions_is_equal(pair: Pair) -> None:
    lane, fastapi, *logs = await pair.send(
        "POST", BATCH, json={"transactions": [txn() for _ in range(21)]}
    )
    assert_same(lane, fastapi, *logs)
    assert_problem(lane, 413, "batch-too-large")


async def test_a_body_over_the_limit_is_equal(redis_url: str, monkeypatch: Any) -> None:
    data = json.dumps({"transactions": [txn() for _ in range(40)]}).encode()

    class Chunks:  # a new stream for each of the two requests; no Content-Length
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for start in range(0, len(data), 1000):
                yield data[start : start + 1000]

    async for pair in _pair(redis_url, monkeypatch, max_body_bytes=4096):
        lane, fastapi, *logs = await pair.send(
            "POST", BATCH, content=Chunks(), headers={"content-type": "application/json"}
        )
        assert_same(lane, fastapi, *logs)
        assert_problem(lane, 413, "request-too-large")
        assert pair.stack.encoder.calls == []  # type: ignore[attr-defined]


async def test_a_failing_encoder_degrades_alike(pair: Pair, forget: Any) -> None:
    pair.stack.encoder.fail_status = 503  # type: ignore[attr-defined]
    lane, fastapi, *logs = await pair.send(
        "POST", BATCH, json={"transactions": [txn(), txn()]}, before=forget
    )
    assert_same(lane, fastapi, *logs)
    assert {r["result"]["label"] for r in lane.json()["results"]} == {"uncertain"}


async def test_the_lane_says_not_ready_outside_the_lifespan(pair: Pair) -> None:
    services, pair.app.state.services = pair.app.state.services, None
    try:
        response = await pair.client.post(SCORE, json=txn(), headers={"x-request-id": "lane-1"})
    finally:
        pair.app.state.services = services
    assert_problem(response, 503, "not-ready")


async def test_an_unexpected_exception_is_the_same_generic_500(
    pair: Pair, forget: Any, monkeypatch: Any
) -> None:
    async def explode(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pair.app.state.services.scoring, "score_batch", explode)
    lane, fastapi, *logs = await pair.send(
        "POST", BATCH, json={"transactions": [txn()]}, before=forget
    )
    assert_same(lane, fastapi, *logs)
    assert_problem(lane, 500, "internal-error")
    assert "secret" not in lane.text


async def test_metric_labels_are_the_declared_template(pair: Pair, forget: Any) -> None:
    await pair.send("POST", SCORE, json=txn(), before=forget)
    await pair.send("POST", BATCH, json={"transactions": [txn()]}, before=forget)
    await pair.send("POST", SCORE, lane=False, json=txn(amount=0))
    text = (await pair.client.get("/metrics")).text

    def count(route: str, status: int) -> float:
        pattern = (
            r'vigil_gateway_requests_total\{method="POST",(?:outcome="[^"]*",)?route="'
            + re.escape(route)
            + r'",status="'
            + str(status)
            + r'"\} (\S+)'
        )
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    assert count(SCORE, 200) == 2 and count(BATCH, 200) == 2 and count(SCORE, 422) == 2
    assert "unmatched" not in text
