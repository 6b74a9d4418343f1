"""The predictor on its real ASGI app: V2 metadata, inference, the binary extension, problems.

A tiny booster is trained into ``tmp_path`` and written with training's own artifact writer, so
the predictor is tested against artifacts laid out exactly as training lays them out.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xgboost as xgb

from settings_docs import undocumented_fields
from vigil.artifacts import write_artifact
from vigil_contracts.feature_contract import feature_contract_hash
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_predictor.app import create_app
from vigil_predictor.deps import get_dataplane
from vigil_predictor.settings import PredictorSettings
from vigil_servicekit.logs import JsonFormatter

MODEL = "fraud-test"
N_FEATURES = 10
FEATURE_NAMES = [f"view__f{i}" for i in range(N_FEATURES)]
CONTRACT = feature_contract_hash(FEATURE_NAMES)
THRESHOLDS = {"suspicious": 0.5, "highly_suspicious": 0.8}
SEGMENT_THRESHOLDS = {"channel": {"ecom": {"suspicious": 0.3, "highly_suspicious": 0.6}}}
SERVING_POLICY = {"on_missing_features": "score", "max_feature_age_seconds": 3600}
HEADER_LENGTH = "Inference-Header-Content-Length"


def train_booster(seed: int, rounds: int = 10) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    # Some missing values so that the trees learn default directions worth checking.
    x[rng.random(x.shape) < 0.1] = np.nan
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": seed, "nthread": 1},
        xgb.DMatrix(x, label=y, missing=np.nan, feature_names=FEATURE_NAMES),
        num_boost_round=rounds,
    )


def metadata(version: str, feature_names: list[str] = FEATURE_NAMES) -> dict[str, Any]:
    return {
        "name": MODEL,
        "version": version,
        "feature_service": "fraud_model_v1",
        "feature_names": feature_names,
        "thresholds": THRESHOLDS,
        "serving_policy": SERVING_POLICY,
        "metrics": {"auc": 0.9},
        "seed": 7,
        # Version 2 carries the training set's statistics (the first feature's range is served
        # for the gateway's safeguards; a feature without finite min and max is left out) and
        # per-channel thresholds; version 1 is from before both.
        **(
            {
                "segment_thresholds": SEGMENT_THRESHOLDS,
                "reference_stats": {
                    feature_names[0]: {"min": -3.5, "max": 3.25, "mean": 0.0},
                    feature_names[1]: {"missing_rate": 1.0},
                },
            }
            if version == "2"
            else {}
        ),
    }


def build_model_repository(root: Path) -> dict[str, xgb.Booster]:
    """Versions 1 and 2 are valid; version 3's booster is altered after its checksum was taken."""
    boosters = {"1": train_booster(1), "2": train_booster(2), "3": train_booster(3)}
    for version, booster in boosters.items():
        write_artifact(root / MODEL / version, booster, metadata(version), "# Test model\n")
    corrupt = root / MODEL / "3" / "model.ubj"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    return boosters


def rows(n: int, seed: int = 0, missing: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    if missing:
        x[rng.random(x.shape) < missing] = np.nan
    return x


def xgb_scores(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES))


def json_request(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    data = [[None if np.isnan(v) else float(v) for v in row] for row in x]
    return {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": data}],
        **extra,
    }


def binary_request(
    x: np.ndarray, outputs: list[dict[str, Any]] | None = None, **extra: Any
) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        **extra,
    }
    if outputs is not None:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    return head + raw, {
        HEADER_LENGTH: str(len(head)),
        "content-type": "application/octet-stream",
    }


def decode_binary_response(response: httpx.Response) -> dict[str, np.ndarray]:
    length = int(response.headers[HEADER_LENGTH])
    header = json.loads(response.content[:length])
    buffer = response.content[length:]
    out, offset = {}, 0
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        out[output["name"]] = np.frombuffer(buffer[offset : offset + size], "<f4").reshape(
            output["shape"]
        )
        offset += size
    assert offset == len(buffer)
    return out


def output(body: dict[str, Any], name: str) -> np.ndarray:
    for item in body["outputs"]:
        if item["name"] == name:
            return np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])
    raise AssertionError(f"no output {name!r} in {[o['name'] for o in body['outputs']]}")


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"].startswith("https://")
    assert body["error"] == body["detail"]  # what V2 clients print
    assert "Traceback" not in response.text
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def boosters(models_dir: Path) -> dict[str, xgb.Booster]:
    return build_model_repository(models_dir)


async def _client(app) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://predictor") as client:
            yield client


@pytest.fixture(scope="module")
def app(models_dir: Path, boosters: dict[str, xgb.Booster]):
    return create_app(PredictorSettings(models_dir=models_dir))


@pytest.fixture(scope="module")
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(app):
        yield c


INFER = f"/v2/models/{MODEL}/infer"


# health and readiness
async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    readyz = await client.get("/readyz")
    assert readyz.status_code == 200
    assert "vigil_predictor_ready 1.0" in (await client.get("/metrics")).text
    assert readyz.json()["models"][MODEL] == {
        "default_version": "2",
        "ready_versions": ["1", "2"],
        "refused_versions": ["3"],
    }


async def test_not_ready_until_the_lifespan_has_loaded_models(models_dir: Path, boosters) -> None:
    app = create_app(PredictorSettings(models_dir=models_dir))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://predictor") as client:
        assert_problem(await client.get("/v2/health/ready"), 503, "predictor-not-ready")
        assert_problem(await client.get("/readyz"), 503)
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/v2/health/live")).status_code == 200


async def test_no_loadable_model_means_not_ready(tmp_path: Path) -> None:
    booster = train_booster(5)
    write_artifact(tmp_path / MODEL / "1", booster, metadata("1"), "card")
    (tmp_path / MODEL / "1" / "MODEL_CARD.md").write_text("tampered", encoding="utf-8")
    async for client in _client(create_app(PredictorSettings(models_dir=tmp_path))):
        assert_problem(await client.get("/v2/health/ready"), 503)
        assert_problem(await client.get("/readyz"), 503)
        assert "vigil_predictor_ready 0.0" in (await client.get("/metrics")).text
        assert_problem(await client.get(f"/v2/models/{MODEL}/ready"), 503, "model-not-ready")
        assert_problem(await client.post(INFER, json=json_request(rows(1))), 503)


async def test_missing_models_dir_means_not_ready(tmp_path: Path) -> None:
    async for client in _client(create_app(PredictorSettings(models_dir=tmp_path / "absent"))):
        assert_problem(await client.get("/v2/health/ready"), 503)


# metadata
async def test_server_metadata(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v2")).json()
    assert body["name"] == "vigil-predictor"
    assert body["version"]
    assert "binary_tensor_data" in body["extensions"]


def check_model_metadata(body: dict[str, Any], version: str) -> None:
    assert body["name"] == MODEL
    assert body["versions"] == ["1", "2"]
    assert body["platform"] == "xgboost"
    assert body["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, N_FEATURES]}]
    assert body["outputs"] == [
        {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "contributions", "datatype": "FP32", "shape": [-1, N_FEATURES + 1]},
    ]
    assert body["parameters"] == {
        "version": version,
        "feature_service": "fraud_model_v1",
        "feature_names": FEATURE_NAMES,
        "feature_contract": CONTRACT,
        "thresholds": THRESHOLDS,
        "segment_thresholds": SEGMENT_THRESHOLDS if version == "2" else {},
        "serving_policy": SERVING_POLICY,
        "training_range": {FEATURE_NAMES[0]: [-3.5, 3.25]} if version == "2" else {},
    }


async def test_model_metadata_default_version(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v2/models/{MODEL}")
    assert response.status_code == 200
    check_model_metadata(response.json(), version="2")


async def test_model_metadata_named_version(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v2/models/{MODEL}/versions/1")
    assert response.status_code == 200
    check_model_metadata(response.json(), version="1")


async def test_model_ready_routes(client: httpx.AsyncClient) -> None:
    ready = await client.get(f"/v2/models/{MODEL}/ready")
    assert ready.json() == {"name": MODEL, "version": "2", "ready": True}
    for version in ("1", "2"):
        assert (await client.get(f"/v2/models/{MODEL}/versions/{version}/ready")).status_code == 200


# versions
async def test_corrupt_version_is_refused_while_others_serve(client: httpx.AsyncClient) -> None:
    base = f"/v2/models/{MODEL}/versions/3"
    assert_problem(await client.get(base), 503, "model-not-ready")
    assert_problem(await client.get(base + "/ready"), 503, "model-not-ready")
    assert_problem(await client.post(base + "/infer", json=json_request(rows(2))), 503)
    for version in ("1", "2"):
        response = await client.post(
            f"/v2/models/{MODEL}/versions/{version}/infer", json=json_request(rows(2))
        )
        assert response.status_code == 200
        assert response.json()["model_version"] == version


async def test_default_version_is_the_highest_valid(client, boosters) -> None:
    x = rows(20, seed=3)
    body = (await client.post(INFER, json=json_request(x))).json()
    assert body["model_name"] == MODEL
    assert body["model_version"] == "2"
    np.testing.assert_allclose(output(body, "score"), xgb_scores(boosters["2"], x), atol=1e-6)


async def test_pinned_default_version(models_dir: Path, boosters) -> None:
    settings = PredictorSettings(models_dir=models_dir, default_versions={MODEL: "1"})
    async for client in _client(create_app(settings)):
        body = (await client.post(INFER, json=json_request(rows(3)))).json()
        assert body["model_version"] == "1"
        meta = (await client.get(f"/v2/models/{MODEL}")).json()
        assert meta["parameters"]["version"] == "1"


async def test_pinned_default_that_cannot_serve_is_not_replaced(models_dir: Path, boosters) -> None:
    settings = PredictorSettings(models_dir=models_dir, default_versions={MODEL: "3"})
    async for client in _client(create_app(settings)):
        assert_problem(await client.post(INFER, json=json_request(rows(1))), 503)
        assert_problem(await client.get("/v2/health/ready"), 503)
        ok = await client.post(f"/v2/models/{MODEL}/versions/2/infer", json=json_request(rows(1)))
        assert ok.status_code == 200


def test_default_versions_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTOR_DEFAULT_VERSIONS", json.dumps({MODEL: "1"}))
    monkeypatch.setenv("PREDICTOR_MODELS_DIR", "/models")
    monkeypatch.setenv("PREDICTOR_NTHREAD", "2")
    settings = PredictorSettings()
    assert settings.default_versions == {MODEL: "1"}
    assert settings.models_dir == Path("/models")
    assert settings.nthread == 2
    assert settings.port == 8002


# scores
@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
async def test_scores_equal_xgboost(client, boosters, nested: bool) -> None:
    x = rows(64, seed=11)
    request = json_request(x)
    if not nested:
        request["inputs"][0]["data"] = [v for row in request["inputs"][0]["data"] for v in row]
    response = await client.post(f"/v2/models/{MODEL}/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert [o["name"] for o in body["outputs"]] == ["score"]
    score = output(body, "score")
    assert score.shape == (64,)
    np.testing.assert_allclose(score, xgb_scores(boosters["1"], x), rtol=0, atol=1e-6)


async def test_missing_values_match_xgboost(client, boosters) -> None:
    x = rows(50, seed=12, missing=0.3)
    assert np.isnan(x).any()
    body = (await client.post(INFER, json=json_request(x))).json()
    np.testing.assert_allclose(output(body, "score"), xgb_scores(boosters["2"], x), atol=1e-6)
    # The same matrix as binary: NaN in the bytes is missing too.
    content, headers = binary_request(x)
    binary = await client.post(INFER, content=content, headers=headers)
    assert binary.status_code == 200, binary.text
    np.testing.assert_allclose(output(binary.json(), "score"), output(body, "score"), atol=0)


async def test_contributions_sum_to_the_margin(client, boosters) -> None:
    x = rows(30, seed=13, missing=0.2)
    request = json_request(x, outputs=[{"name": "score"}, {"name": "contributions"}])
    body = (await client.post(INFER, json=request)).json()
    contributions = output(body, "contributions")
    assert contributions.shape == (30, N_FEATURES + 1)
    matrix = xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES)
    margin = boosters["2"].predict(matrix, output_margin=True)
    np.testing.assert_allclose(contributions.sum(axis=1), margin, atol=1e-4)
    np.testing.assert_allclose(
        contributions, boosters["2"].predict(matrix, pred_contribs=True), atol=1e-6
    )
    np.testing.assert_allclose(output(body, "score"), xgb_scores(boosters["2"], x), atol=1e-6)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_contributions_only_for_rows_scoring_at_least_the_min_score(
    client, boosters, binary: bool
) -> None:
    x = rows(40, seed=16, missing=0.2)
    matrix = xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES)
    expected_scores = boosters["2"].predict(matrix)
    expected_contribs = boosters["2"].predict(matrix, pred_contribs=True)
    # A threshold equal to one row's own score: ">=" must keep that row.
    threshold = float(np.sort(expected_scores)[25])
    parameters = {"contributions_min_score": threshold}
    if binary:
        flag = {"parameters": {"binary_data": True}}
        content, headers = binary_request(
            x,
            outputs=[{"name": "score", **flag}, {"name": "contributions", **flag}],
            parameters=parameters,
        )
        response = await client.post(INFER, content=content, headers=headers)
        assert response.status_code == 200, response.text
        out = decode_binary_response(response)
        score, contributions = out["score"], out["contributions"]
    else:
        request = json_request(
            x, outputs=[{"name": "score"}, {"name": "contributions"}], parameters=parameters
        )
        response = await client.post(INFER, json=request)
        assert response.status_code == 200, response.text
        body = response.json()
        score, contributions = output(body, "score"), output(body, "contributions")
        data = next(o["data"] for o in body["outputs"] if o["name"] == "contributions")
        assert (None in data) and all(v is None or isinstance(v, float) for v in data)
    np.testing.assert_allclose(score, expected_scores, atol=1e-6)
    explained = score.astype(np.float64) >= threshold
    assert explained.sum() == 15
    assert contributions.shape == (40, N_FEATURES + 1)
    np.testing.assert_allclose(contributions[explained], expected_contribs[explained], atol=1e-6)
    assert np.isnan(contributions[~explained]).all()


async def test_min_score_bounds_explain_every_row_or_none(client, boosters) -> None:
    x = rows(6, seed=17)
    both = [{"name": "score"}, {"name": "contributions"}]
    body = (
        await client.post(
            INFER, json=json_request(x, outputs=both, parameters={"contributions_min_score": 0})
        )
    ).json()
    matrix = xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES)
    np.testing.assert_allclose(
        output(body, "contributions"), boosters["2"].predict(matrix, pred_contribs=True), atol=1e-6
    )
    body = (
        await client.post(
            INFER, json=json_request(x, outputs=both, parameters={"contributions_min_score": 1.0})
        )
    ).json()
    assert np.isnan(output(body, "contributions")).all()
    np.testing.assert_allclose(output(body, "score"), xgb_scores(boosters["2"], x), atol=1e-6)
    # Without contributions asked for, the parameter changes nothing.
    body = (
        await client.post(INFER, json=json_request(x, parameters={"contributions_min_score": 0.5}))
    ).json()
    assert [o["name"] for o in body["outputs"]] == ["score"]


async def test_json_data_is_each_float32_value_exactly(client, boosters) -> None:
    x = rows(20, seed=18, missing=0.1)
    body = (await client.post(INFER, json=json_request(x))).json()
    expected = np.asarray(xgb_scores(boosters["2"], x), dtype=np.float32)
    [score] = body["outputs"]
    assert score["data"] == [float(v) for v in expected]


async def test_only_contributions_when_only_they_are_asked(client) -> None:
    body = (
        await client.post(INFER, json=json_request(rows(2), outputs=[{"name": "contributions"}]))
    ).json()
    assert [o["name"] for o in body["outputs"]] == ["contributions"]


async def test_large_batch_is_scored_off_the_event_loop_and_identically(client, boosters) -> None:
    x = rows(1000, seed=14, missing=0.1)
    content, headers = binary_request(
        x, outputs=[{"name": "score", "parameters": {"binary_data": True}}]
    )
    response = await client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    scores = decode_binary_response(response)["score"]
    np.testing.assert_allclose(scores, xgb_scores(boosters["2"], x), atol=1e-6)


async def test_request_id_and_inference_id_are_echoed(client) -> None:
    response = await client.post(
        INFER, json=json_request(rows(1), id="req-42"), headers={"x-request-id": "abc-123"}
    )
    assert response.json()["id"] == "req-42"
    assert response.headers["x-request-id"] == "abc-123"
    generated = await client.get("/v2/health/live")
    assert len(generated.headers["x-request-id"]) >= 16
    hostile = await client.get("/v2/health/live", headers={"x-request-id": "a b\tc" * 50})
    assert hostile.headers["x-request-id"] != "a b\tc" * 50


async def test_gzip_request_body(client, boosters) -> None:
    x = rows(5, seed=15)
    response = await client.post(
        INFER,
        content=gzip.compress(json.dumps(json_request(x)).encode()),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        output(response.json(), "score"), xgb_scores(boosters["2"], x), atol=1e-6
    )


async def test_json_that_only_the_standard_library_reads_is_still_accepted(
    client, boosters
) -> None:
    # NaN literals (what Python's json.dumps writes for a NaN) mean missing, as they always did.
    x = rows(1, seed=19)
    x[0, 3] = np.nan
    content = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, N_FEATURES],
                    "data": [float(v) for v in x[0]],
                }
            ]
        }
    ).encode()
    assert b"NaN" in content
    response = await client.post(
        INFER, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        output(response.json(), "score"), xgb_scores(boosters["2"], x), atol=1e-6
    )


# the feature contract
async def test_wrong_feature_contract_is_rejected(client) -> None:
    wrong = feature_contract_hash(list(reversed(FEATURE_NAMES)))
    response = await client.post(
        INFER, json=json_request(rows(2), parameters={"feature_contract": wrong})
    )
    body = assert_problem(response, 400, "feature-contract-mismatch")
    assert wrong in body["detail"] and CONTRACT in body["detail"]


async def test_matching_feature_contract_is_accepted(client) -> None:
    response = await client.post(
        INFER, json=json_request(rows(2), parameters={"feature_contract": CONTRACT})
    )
    assert response.status_code == 200


# bad tensors and requests
def _tensor(**changes: Any) -> dict[str, Any]:
    request = json_request(rows(2))
    request["inputs"][0].update(changes)
    return request


BAD_REQUESTS = {
    "wrong-name": _tensor(name="input__0"),
    "wrong-datatype": _tensor(datatype="FP64"),
    "too-few-features": _tensor(shape=[2, N_FEATURES - 1]),
    "one-dimensional": _tensor(shape=[2 * N_FEATURES], data=[0.0] * 2 * N_FEATURES),
    "zero-rows": _tensor(shape=[0, N_FEATURES], data=[]),
    "negative-rows": _tensor(shape=[-2, N_FEATURES]),
    "count-mismatch": _tensor(shape=[3, N_FEATURES]),
    "ragged": _tensor(data=[[0.0] * N_FEATURES, [0.0] * (N_FEATURES - 1) + [[0.0]]]),
    "string-value": _tensor(data=["1.0"] * 2 * N_FEATURES),
    "bool-value": _tensor(data=[True] * 2 * N_FEATURES),
    "no-data": _tensor(data=None),
    "infinite": _tensor(data=[1e39] * 2 * N_FEATURES),
    "two-inputs": {"inputs": [_tensor()["inputs"][0], _tensor(name="other")["inputs"][0]]},
    "no-inputs": {"inputs": []},
    "not-v2": {"instances": [[0.0] * N_FEATURES]},
    "shape-not-ints": _tensor(shape=["2", "10"]),
    "unknown-output": json_request(rows(2), outputs=[{"name": "probability"}]),
    "duplicate-output": json_request(rows(2), outputs=[{"name": "score"}, {"name": "score"}]),
    "contract-not-string": json_request(rows(2), parameters={"feature_contract": 1}),
    "min-score-string": json_request(rows(2), parameters={"contributions_min_score": "0.5"}),
    "min-score-bool": json_request(rows(2), parameters={"contributions_min_score": True}),
    "min-score-above-one": json_request(rows(2), parameters={"contributions_min_score": 1.5}),
    "min-score-negative": json_request(rows(2), parameters={"contributions_min_score": -0.1}),
}


@pytest.mark.parametrize("request_body", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_tensor_is_400(client, request_body: dict[str, Any]) -> None:
    assert_problem(await client.post(INFER, json=request_body), 400)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"\xff\xfe", b""],
    ids=["broken", "array", "not-utf8", "empty"],
)
async def test_malformed_json_is_400(client, content: bytes) -> None:
    response = await client.post(
        INFER, content=content, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "invalid-inference-request")


async def test_malformed_binary_is_400(client) -> None:
    x = rows(2)
    content, headers = binary_request(x)
    cases = [
        (content[:-4], headers),  # binary part shorter than binary_data_size
        (content + b"\0\0\0\0", headers),  # bytes that belong to no input
        (content, {**headers, HEADER_LENGTH: "nope"}),
        (content, {**headers, HEADER_LENGTH: str(len(content) + 1)}),
        (content, {**headers, HEADER_LENGTH: "5"}),  # cuts the JSON header
    ]
    for body, hdrs in cases:
        assert_problem(await client.post(INFER, content=body, headers=hdrs), 400)
    # binary_data_size that is consistent with the body but not with the shape
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [2, N_FEATURES],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    response = await client.post(
        INFER, content=head + b"\0" * 8, headers={HEADER_LENGTH: str(len(head))}
    )
    assert_problem(response, 400, "invalid-tensor")


async def test_too_large_request_is_413(models_dir: Path, boosters) -> None:
    settings = PredictorSettings(models_dir=models_dir, max_request_bytes=2048)
    async for client in _client(create_app(settings)):
        assert_problem(await client.post(INFER, json=json_request(rows(100))), 413)
        bomb = gzip.compress(b" " * 100_000)
        response = await client.post(INFER, content=bomb, headers={"content-encoding": "gzip"})
        assert_problem(response, 413)


# unknown models and versions
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("GET", f"/v2/models/{MODEL}/versions/9"),
        ("GET", f"/v2/models/{MODEL}/versions/9/ready"),
        ("POST", f"/v2/models/{MODEL}/versions/9/infer"),
    ],
)
async def test_unknown_model_or_version_is_404(client, method: str, path: str) -> None:
    body = json_request(rows(1)) if method == "POST" else None
    response = await client.request(method, path, json=body)
    assert_problem(response, 404, "model-not-found")


async def test_unknown_route_and_method_are_problems(client) -> None:
    assert_problem(await client.get("/v3/anything"), 404)
    assert_problem(await client.get(INFER), 405)


# the binary tensor extension
async def test_binary_round_trip(client, boosters) -> None:
    x = rows(16, seed=21, missing=0.2)
    content, headers = binary_request(
        x,
        outputs=[
            {"name": "score", "parameters": {"binary_data": True}},
            {"name": "contributions", "parameters": {"binary_data": True}},
        ],
        id="bin-1",
    )
    response = await client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header = json.loads(response.content[: int(response.headers[HEADER_LENGTH])])
    assert header["id"] == "bin-1" and header["model_version"] == "2"
    out = decode_binary_response(response)
    matrix = xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES)
    np.testing.assert_allclose(out["score"], boosters["2"].predict(matrix), atol=1e-6)
    np.testing.assert_allclose(
        out["contributions"], boosters["2"].predict(matrix, pred_contribs=True), atol=1e-6
    )


async def test_binary_input_json_output(client, boosters) -> None:
    x = rows(4, seed=22)
    content, headers = binary_request(x)
    response = await client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200
    assert HEADER_LENGTH not in response.headers
    np.testing.assert_allclose(
        output(response.json(), "score"), xgb_scores(boosters["2"], x), atol=1e-6
    )


async def test_request_level_binary_data_output(client, boosters) -> None:
    x = rows(4, seed=23)
    content, headers = binary_request(x, parameters={"binary_data_output": True})
    response = await client.post(INFER, content=content, headers=headers)
    np.testing.assert_allclose(
        decode_binary_response(response)["score"], xgb_scores(boosters["2"], x), atol=1e-6
    )
    # An output's own flag wins over the request-wide one.
    mixed = json_request(
        x,
        parameters={"binary_data_output": True},
        outputs=[{"name": "score", "parameters": {"binary_data": False}}],
    )
    response = await client.post(INFER, json=mixed)
    assert response.headers["content-type"].startswith("application/json")
    np.testing.assert_allclose(
        output(response.json(), "score"), xgb_scores(boosters["2"], x), atol=1e-6
    )


# errors that are not the client's
async def test_unexpected_exception_is_a_generic_500_problem(app) -> None:
    class Exploding:
        def server_metadata(self) -> dict[str, Any]:
            raise RuntimeError("secret internals")

    app.dependency_overrides[get_dataplane] = lambda: Exploding()
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            response = await client.get("/v2", headers={"x-request-id": "boom-1"})
    finally:
        app.dependency_overrides.clear()
    body = assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text
    assert body["request_id"] == "boom-1"
    assert response.headers["x-request-id"] == "boom-1"


async def test_request_validation_error_is_422_problem(models_dir: Path, boosters) -> None:
    app = create_app(PredictorSettings(models_dir=models_dir))

    @app.get("/probe")
    async def probe(limit: int) -> dict[str, int]:  # a typed parameter FastAPI validates
        return {"limit": limit}

    async for client in _client(app):
        body = assert_problem(await client.get("/probe?limit=many"), 422, "validation-failed")
        assert body["invalid_params"][0]["name"] == "query.limit"


# observability
async def test_metrics_count_requests_and_rows(client) -> None:
    await client.post(INFER, json=json_request(rows(7)))
    await client.post(INFER, json={"inputs": []})
    text = (await client.get("/metrics")).text
    assert (
        'vigil_predictor_requests_total{method="POST",route="/v2/models/{model_name}/infer",'
        'status="200"}' in text
    )
    assert 'route="/v2/models/{model_name}/infer",status="400"' in text
    assert (
        'vigil_predictor_request_duration_seconds_count{method="POST",outcome="success",'
        'route="/v2/models/{model_name}/infer"}' in text
    )
    assert f'vigil_predictor_inference_rows_total{{model="{MODEL}",version="2"}}' in text
    assert f'vigil_predictor_model_version_ready{{model="{MODEL}",version="3"}} 0.0' in text
    assert f'vigil_predictor_model_version_ready{{model="{MODEL}",version="2"}} 1.0' in text


async def test_one_json_log_line_per_request_without_payload(client, caplog) -> None:
    logger = logging.getLogger("vigil_predictor")
    logger.addHandler(caplog.handler)
    try:
        x = np.full((1, N_FEATURES), 0.123456, dtype=np.float32)
        await client.post(INFER, json=json_request(x), headers={"x-request-id": "log-1"})
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r for r in caplog.records if r.getMessage() == "request"]
    assert len(lines) == 1
    record = lines[0]
    assert record.request_id == "log-1"
    assert record.route == "/v2/models/{model_name}/infer"
    assert record.status == 200
    assert record.latency_ms >= 0
    formatted = [JsonFormatter().format(r) for r in caplog.records]
    entry = json.loads(formatted[-1])
    assert entry["request_id"] == "log-1" and entry["msg"] == "request"
    assert not any("0.123456" in line for line in formatted)


# artifact checks at load time
@pytest.mark.parametrize(
    "damage",
    [
        "feature_count",
        "contract",
        "name",
        "thresholds",
        "segment_order",
        "segment_column",
        "segment_value",
        "missing_booster",
        "objective",
    ],
)
async def test_inconsistent_artifacts_are_refused(tmp_path: Path, damage: str) -> None:
    booster = train_booster(6)
    good = tmp_path / MODEL / "1"
    bad = tmp_path / MODEL / "2"
    write_artifact(good, booster, metadata("1"), "card")
    meta = metadata("2")
    if damage == "objective":  # a regression model scores, but not a probability
        x = rows(50)
        booster = xgb.train(
            {"objective": "reg:squarederror"}, xgb.DMatrix(x, label=x[:, 0]), num_boost_round=2
        )
    if damage == "feature_count":
        meta["feature_names"] = FEATURE_NAMES[:-1]
    if damage == "name":
        meta["name"] = "another-model"
    if damage == "thresholds":
        meta["thresholds"] = {"suspicious": 0.9, "highly_suspicious": 0.5}
    if damage == "segment_order":
        meta["segment_thresholds"] = {
            "channel": {"pos": {"suspicious": 0.9, "highly_suspicious": 0.5}}
        }
    if damage == "segment_column":  # a field the gateway does not segment by
        meta["segment_thresholds"] = {"country": {"DE": THRESHOLDS}}
    if damage == "segment_value":  # a pair no transaction would ever be labelled by
        meta["segment_thresholds"] = {"channel": {"POS": THRESHOLDS}}
    write_artifact(bad, booster, meta, "card")
    meta_path = bad / "metadata.json"
    if damage == "contract":
        written = json.loads(meta_path.read_text())
        written["feature_names"] = list(reversed(written["feature_names"]))
        meta_path.write_text(json.dumps(written))
    if damage == "missing_booster":
        (bad / "model.ubj").unlink()
    async for client in _client(create_app(PredictorSettings(models_dir=tmp_path))):
        assert_problem(await client.get(f"/v2/models/{MODEL}/versions/2/ready"), 503)
        meta_body = (await client.get(f"/v2/models/{MODEL}")).json()
        assert meta_body["versions"] == ["1"]
        assert meta_body["parameters"]["version"] == "1"


# request coalescing
async def test_concurrent_requests_are_scored_together_with_their_own_answers(
    client, app, boosters
) -> None:
    """Requests waiting together share one XGBoost call per (version, outputs, min score), and
    each gets exactly the answer it would get alone, whatever it shares the call with."""
    batches = app.state.dataplane.metrics.batch_requests
    before = _histogram_count(batches)
    xs = [rows(1 + i % 3, seed=100 + i, missing=0.2) for i in range(24)]
    kinds = []
    bodies = []
    for i, x in enumerate(xs):
        if i % 3 == 0:
            kinds.append("score")
            bodies.append(json_request(x))
        else:  # two different min scores: they must not share a call
            threshold = 0.3 if i % 3 == 1 else 0.7
            kinds.append(threshold)
            bodies.append(
                json_request(
                    x,
                    outputs=[{"name": "score"}, {"name": "contributions"}],
                    parameters={"contributions_min_score": threshold},
                )
            )
    answers = await asyncio.gather(*(client.post(INFER, json=body) for body in bodies))
    for x, kind, response in zip(xs, kinds, answers, strict=True):
        assert response.status_code == 200, response.text
        matrix = xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES)
        body = response.json()
        np.testing.assert_allclose(output(body, "score"), boosters["2"].predict(matrix), atol=1e-6)
        if kind != "score":
            contributions = output(body, "contributions")
            expected = boosters["2"].predict(matrix, pred_contribs=True)
            explained = output(body, "score").astype(np.float64) >= kind
            np.testing.assert_allclose(contributions[explained], expected[explained], atol=1e-6)
            assert np.isnan(contributions[~explained]).all()
    calls = _histogram_count(batches) - before
    assert calls < len(bodies)  # some requests really shared a call
    # A request for another version never joins their batch (version 1 scores differ).
    x = rows(2, seed=99)
    one, two = await asyncio.gather(
        client.post(f"/v2/models/{MODEL}/versions/1/infer", json=json_request(x)),
        client.post(f"/v2/models/{MODEL}/versions/2/infer", json=json_request(x)),
    )
    matrix = xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES)
    np.testing.assert_allclose(
        output(one.json(), "score"), boosters["1"].predict(matrix), atol=1e-6
    )
    np.testing.assert_allclose(
        output(two.json(), "score"), boosters["2"].predict(matrix), atol=1e-6
    )


async def test_a_bad_request_does_not_spoil_the_batch_it_would_have_joined(
    client, boosters
) -> None:
    good = rows(2, seed=123)
    bad = rows(1, seed=124)
    bad_body = json_request(bad)
    bad_body["inputs"][0]["data"][0][0] = 1e39  # beyond FP32: inf, refused
    answers = await asyncio.gather(
        client.post(INFER, json=json_request(good)),
        client.post(INFER, json=bad_body),
        client.post(INFER, json=json_request(good)),
    )
    assert [a.status_code for a in answers] == [200, 400, 200]
    matrix = xgb.DMatrix(good, missing=np.nan, feature_names=FEATURE_NAMES)
    for a in (answers[0], answers[2]):
        np.testing.assert_allclose(
            output(a.json(), "score"), boosters["2"].predict(matrix), atol=1e-6
        )


def _histogram_count(histogram) -> float:
    return next(
        s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count")
    )


@pytest.mark.parametrize("n_rows", [1, 2, 7, 100, 1000])
def test_the_c_prediction_call_equals_inplace_predict(boosters, n_rows: int) -> None:
    """The predictor scores through XGBoost's C call (``scoring_call``), skipping the Python
    wrapper; every score equals ``inplace_predict``'s, bit for bit, missing values, extremes and
    a non-contiguous input included, and the call is not a silent fallback."""
    from vigil_predictor import scoring_call

    assert scoring_call.available()
    booster = boosters["2"]
    x = rows(n_rows, seed=n_rows, missing=0.3) * 50
    x[0, 1] = np.float32(3.4e38)
    x[-1, :] = np.nan
    expected = booster.inplace_predict(x, missing=np.nan)
    got = scoring_call.predict_dense(booster, x)
    assert got.dtype == np.float32 and got.shape == (n_rows,)
    assert np.array_equal(got, expected)
    wide = np.repeat(x, 2, axis=1)[:, ::2]  # the same values, not C-contiguous
    assert np.array_equal(scoring_call.predict_dense(booster, wide), expected)
    assert np.array_equal(scoring_call.predict_dense(booster, x), got)  # its buffer is copied out


def test_every_setting_is_documented() -> None:
    assert undocumented_fields(PredictorSettings) == []
