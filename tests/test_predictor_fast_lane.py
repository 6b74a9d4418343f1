"""The predictor's inference routes answered by the servicekit's fast lane equal FastAPI's answers.

Every request is sent twice to one real app: once as it runs in production (the lane answers) and
once with a dependency override in place, which makes the lane step aside so that FastAPI's
routing, dependency injection and exception middleware answer. Status, headers, body, the access
log line and the request metrics must be the same.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xgboost as xgb
from fastapi import FastAPI

from fast_lane_checks import Pair, access_line, assert_same
from test_predictor import (
    CONTRACT,
    HEADER_LENGTH,
    MODEL,
    N_FEATURES,
    binary_request,
    build_model_repository,
    decode_binary_response,
    json_request,
    rows,
    xgb_scores,
)
from vigil_predictor.app import create_app
from vigil_predictor.deps import get_dataplane
from vigil_predictor.rest import infer, infer_version, models_router
from vigil_predictor.settings import PredictorSettings
from vigil_servicekit.fast_lane import declared_route

INFER = f"/v2/models/{MODEL}/infer"
INFER_V1 = f"/v2/models/{MODEL}/versions/1/infer"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def boosters(models_dir: Path) -> dict[str, xgb.Booster]:
    return build_model_repository(models_dir)


async def _pair(app: FastAPI, monkeypatch, *, lifespan: bool = True) -> AsyncIterator[Pair]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://predictor") as client:
        if lifespan:
            async with app.router.lifespan_context(app):
                yield Pair(
                    app,
                    client,
                    monkeypatch,
                    routes=[declared_route(models_router, e) for e in (infer, infer_version)],
                    dependency=get_dataplane,
                    state_attr="dataplane",
                    logger="vigil_predictor",
                )
        else:
            yield Pair(
                app,
                client,
                monkeypatch,
                routes=[declared_route(models_router, e) for e in (infer, infer_version)],
                dependency=get_dataplane,
                state_attr="dataplane",
                logger="vigil_predictor",
            )


@pytest.fixture
async def pair(models_dir: Path, boosters, monkeypatch) -> AsyncIterator[Pair]:
    async for p in _pair(create_app(PredictorSettings(models_dir=models_dir)), monkeypatch):
        yield p


ID = {"x-request-id": "lane-1"}


async def test_json_answers_are_equal(pair: Pair, boosters) -> None:
    x = rows(1, seed=3)
    body = json_request(x, id="req-7", parameters={"feature_contract": CONTRACT})
    lane, fastapi, *logs = await pair.send("POST", INFER, json=body, headers=ID)
    assert_same(lane, fastapi, *logs)
    assert lane.status_code == 200 and lane.headers["x-request-id"] == "lane-1"
    assert lane.headers["content-type"] == "application/json"
    score = lane.json()["outputs"][0]["data"]
    np.testing.assert_allclose(score, xgb_scores(boosters["2"], x), atol=1e-6)


async def test_binary_answers_are_equal(pair: Pair, boosters) -> None:
    x = rows(3, seed=4, missing=0.2)
    outputs = [
        {"name": "score", "parameters": {"binary_data": True}},
        {"name": "contributions", "parameters": {"binary_data": True}},
    ]
    content, headers = binary_request(x, outputs=outputs)
    lane, fastapi, *logs = await pair.send("POST", INFER, content=content, headers=headers)
    assert_same(lane, fastapi, *logs)
    assert lane.headers["content-type"] == "application/octet-stream"
    assert HEADER_LENGTH in lane.headers
    np.testing.assert_allclose(
        decode_binary_response(lane)["score"], xgb_scores(boosters["2"], x), atol=1e-6
    )


async def test_a_named_version_and_gzip_are_equal(pair: Pair, boosters) -> None:
    content = gzip.compress(json.dumps(json_request(rows(2, seed=5))).encode())
    lane, fastapi, *logs = await pair.send(
        "POST", INFER_V1, content=content, headers={"content-encoding": "gzip"}
    )
    assert_same(lane, fastapi, *logs)
    assert lane.json()["model_version"] == "1"
    assert access_line(logs[0])["route"] == "/v2/models/{model_name}/versions/{model_version}/infer"


@pytest.mark.parametrize(
    "path,kwargs,status,slug",
    [
        ("/v2/models/nope/infer", {"json": json_request(rows(1))}, 404, "model-not-found"),
        (
            f"/v2/models/{MODEL}/versions/9/infer",
            {"json": json_request(rows(1))},
            404,
            "model-not-found",
        ),
        (
            f"/v2/models/{MODEL}/versions/3/infer",
            {"json": json_request(rows(1))},
            503,
            "model-not-ready",
        ),
        (INFER, {"content": b"{not json"}, 400, "invalid-inference-request"),
        (INFER, {"json": {"inputs": []}}, 400, None),
        (
            INFER,
            {
                "json": {
                    "inputs": [
                        {
                            "name": "features",
                            "datatype": "FP32",
                            "shape": [1, N_FEATURES + 1],
                            "data": [0.0] * (N_FEATURES + 1),
                        }
                    ]
                }
            },
            400,
            "invalid-tensor",
        ),
        (
            INFER,
            {"json": json_request(rows(1), parameters={"feature_contract": "other"})},
            400,
            "feature-contract-mismatch",
        ),
        (INFER, {"content": b'{"inputs": []}', "headers": {HEADER_LENGTH: "999"}}, 400, None),
    ],
)
async def test_problems_are_equal(
    pair: Pair, path: str, kwargs: dict[str, Any], status: int, slug: str | None
) -> None:
    kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **ID}}
    lane, fastapi, *logs = await pair.send("POST", path, **kwargs)
    assert_same(lane, fastapi, *logs)
    assert lane.status_code == status
    assert lane.headers["content-type"] == "application/problem+json"
    assert lane.headers["x-request-id"] == "lane-1" and lane.json()["request_id"] == "lane-1"
    if slug:
        assert lane.json()["type"].endswith("/" + slug)


async def test_too_large_is_equal(models_dir: Path, boosters, monkeypatch) -> None:
    app = create_app(PredictorSettings(models_dir=models_dir, max_request_bytes=2048))
    async for pair in _pair(app, monkeypatch):
        lane, fastapi, *logs = await pair.send(
            "POST", INFER, json=json_request(rows(100)), headers=ID
        )
        assert_same(lane, fastapi, *logs)
        assert lane.status_code == 413
        bomb = gzip.compress(b" " * 100_000)
        lane, fastapi, *logs = await pair.send(
            "POST", INFER, content=bomb, headers={"content-encoding": "gzip", **ID}
        )
        assert_same(lane, fastapi, *logs)
        assert lane.status_code == 413


async def test_not_ready_before_the_lifespan_is_equal(
    models_dir: Path, boosters, monkeypatch
) -> None:
    app = create_app(PredictorSettings(models_dir=models_dir))
    async for pair in _pair(app, monkeypatch, lifespan=False):
        lane, fastapi, *logs = await pair.send("POST", INFER, json=json_request(rows(1)))
        assert_same(lane, fastapi, *logs)
        assert lane.status_code in (404, 503)


async def test_unexpected_exception_is_the_same_generic_500(pair: Pair, monkeypatch) -> None:
    async def explode(*_args: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pair.app.state.dataplane, "infer", explode)
    lane, fastapi, *logs = await pair.send("POST", INFER, json=json_request(rows(1)), headers=ID)
    assert_same(lane, fastapi, *logs)
    assert lane.status_code == 500 and "secret" not in lane.text
    assert lane.headers["content-type"] == "application/problem+json"
    assert lane.json()["type"].endswith("/internal-error")
    assert lane.headers["x-request-id"] == "lane-1" and lane.json()["request_id"] == "lane-1"
    unhandled = [r for r in logs[0] if r.getMessage() == "unhandled exception"]
    assert len(unhandled) == 1 and unhandled[0].exc_info is not None


async def test_what_the_lane_does_not_take_goes_to_fastapi(pair: Pair) -> None:
    for method, path in [
        ("GET", INFER),
        ("POST", INFER + "/"),
        ("PUT", INFER_V1),
        ("POST", f"/v2/models/{MODEL}/versions/1/2/infer"),
    ]:
        lane, fastapi, *_logs = await pair.send(method, path, lane=None, headers=ID)
        assert lane.status_code == fastapi.status_code and lane.content == fastapi.content
        assert lane.headers.multi_items() == fastapi.headers.multi_items()


async def test_metric_labels_are_the_declared_templates(pair: Pair) -> None:
    await pair.send("POST", INFER, json=json_request(rows(1)))
    await pair.send("POST", INFER_V1, json={"inputs": []})
    text = (await pair.client.get("/metrics")).text

    def count(route: str, status: int) -> float:
        pattern = (
            r'vigil_predictor_requests_total\{method="POST",route="'
            + re.escape(route)
            + r'",status="'
            + str(status)
            + r'"\} (\S+)'
        )
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    # One of each through the lane and one through FastAPI, under the same labels.
    assert count("/v2/models/{model_name}/infer", 200) == 2
    assert count("/v2/models/{model_name}/versions/{model_version}/infer", 400) == 2
    assert "unmatched" not in text
