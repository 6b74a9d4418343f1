"""A standard V2 client (``tritonclient.http``) against the predictor running under uvicorn.

The server is started exactly as in production (``uvicorn --factory``), configured only through
``PREDICTOR_*`` environment variables, on a free local port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import xgboost as xgb
from tritonclient.utils import InferenceServerException

from test_predictor import (
    CONTRACT,
    FEATURE_NAMES,
    MODEL,
    N_FEATURES,
    build_model_repository,
    rows,
)

STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, xgb.Booster]]:
    root = tmp_path_factory.mktemp("triton-models")
    return root, build_model_repository(root)


@pytest.fixture(scope="module")
def server_url(artifacts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models_dir, _ = artifacts
    port = free_port()
    log_path = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = {
        **os.environ,
        "PREDICTOR_MODELS_DIR": str(models_dir),
        "PREDICTOR_NTHREAD": "1",
        "PREDICTOR_LOG_LEVEL": "INFO",
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "vigil_predictor.app:create_app",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"predictor not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}"
                )
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server_url, network_timeout=30.0)
    yield c
    c.close()


def features_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("features", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def expected(booster: xgb.Booster, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    matrix = xgb.DMatrix(x, missing=np.nan, feature_names=FEATURE_NAMES)
    return booster.predict(matrix), booster.predict(matrix, pred_contribs=True)


def test_server_and_model_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "3")  # the corrupt version
    assert not client.is_model_ready("nope")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL)
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"][0] == {"name": "features", "datatype": "FP32", "shape": [-1, N_FEATURES]}
    assert meta["parameters"]["feature_contract"] == CONTRACT
    assert meta["parameters"]["version"] == "2"
    assert client.get_model_metadata(MODEL, "1")["parameters"]["version"] == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_with_score_and_contributions(client, artifacts, binary: bool) -> None:
    _, boosters = artifacts
    x = rows(25, seed=31, missing=0.2)
    result = client.infer(
        MODEL,
        [features_input(x, binary)],
        outputs=[
            triton.InferRequestedOutput("score", binary_data=binary),
            triton.InferRequestedOutput("contributions", binary_data=binary),
        ],
        request_id="triton-1",
        parameters={"feature_contract": CONTRACT},
    )
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["model_version"] == "2"
    assert response["id"] == "triton-1"
    score, contributions = expected(boosters["2"], x)
    assert result.as_numpy("score").dtype == np.float32
    np.testing.assert_allclose(result.as_numpy("score"), score, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("contributions"), contributions, atol=1e-6)


def test_infer_default_outputs_named_version(client, artifacts) -> None:
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    _, boosters = artifacts
    x = rows(3, seed=32)
    result = client.infer(MODEL, [features_input(x, binary=True)], model_version="1")
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("score"), expected(boosters["1"], x)[0], atol=1e-6)
    assert result.as_numpy("contributions") is None


def test_infer_with_compressed_request(client, artifacts) -> None:
    _, boosters = artifacts
    x = rows(8, seed=33)
    result = client.infer(
        MODEL, [features_input(x, binary=True)], request_compression_algorithm="gzip"
    )
    np.testing.assert_allclose(result.as_numpy("score"), expected(boosters["2"], x)[0], atol=1e-6)


def test_errors_reach_the_client_with_status_and_message(client) -> None:
    x = rows(2)
    with pytest.raises(InferenceServerException) as mismatch:
        client.infer(MODEL, [features_input(x, True)], parameters={"feature_contract": "sha256:0"})
    assert mismatch.value.status() == "400"
    assert "feature_contract" in mismatch.value.message()

    with pytest.raises(InferenceServerException) as wrong_shape:
        client.infer(MODEL, [features_input(rows(2)[:, :-1].copy(), True)])
    assert wrong_shape.value.status() == "400"

    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [features_input(x, True)])
    assert unknown.value.status() == "404"

    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [features_input(x, True)], model_version="3")
    assert refused.value.status() == "503"


def test_metrics_after_triton_traffic(client, server_url: str) -> None:
    client.infer(MODEL, [features_input(rows(4), True)])
    text = httpx.get(f"http://{server_url}/metrics").text
    assert 'vigil_predictor_inference_rows_total{model="fraud-test",version="2"}' in text
    assert 'route="/v2/models/{model_name}/infer"' in text
