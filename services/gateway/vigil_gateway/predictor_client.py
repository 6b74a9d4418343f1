"""Client of the predictor, speaking the Open Inference Protocol V2 over REST (JSON tensors).

A missing feature is JSON ``null`` in the tensor data (NaN to XGBoost). The request carries the
encoder's ``feature_contract`` so the predictor can refuse a vector in the wrong order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from pydantic import ValidationError

from vigil_gateway import downstream
from vigil_gateway.errors import DownstreamError, FeatureContractMismatch
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.model_metadata import ModelMetadata

NAME = "predictor"
INPUT_NAME = "features"
SCORE = "score"
CONTRIBUTIONS = "contributions"
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


@dataclass(frozen=True)
class Inference:
    model_name: str
    model_version: str
    scores: list[float]
    contributions: list[list[float]]  # N rows of F + 1 (the last column is the bias)


def _flatten(data: Any) -> list[Any]:
    """V2 allows tensor data flat (row-major) or nested; the gateway reads it flat."""
    if not isinstance(data, list):
        raise TypeError("tensor data is not a list")
    if data and isinstance(data[0], list):
        return [value for item in data for value in _flatten(item)]
    return data


def model_path(name: str, version: str | None) -> str:
    path = f"/v2/models/{quote(name, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


class PredictorClient:
    def __init__(self, http: httpx.AsyncClient, metrics: GatewayMetrics, connect_timeout_s: float) -> None:
        self.http = http
        self.metrics = metrics
        self.connect_timeout_s = connect_timeout_s

    async def metadata(
        self, name: str, version: str | None, *, timeout: float | None, request_id: str | None = None
    ) -> ModelMetadata:
        response = await downstream.send(
            self.http, NAME, "GET", model_path(name, version), metrics=self.metrics,
            timeout=timeout, connect_timeout_s=self.connect_timeout_s, request_id=request_id,
        )
        if response.status_code != 200:
            raise downstream.rejected(self.metrics, NAME, response)
        try:
            return ModelMetadata.from_v2(response.json())
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise downstream.invalid_response(
                self.metrics, NAME, f"model metadata lacks what the gateway needs ({exc!r:.200})"
            ) from exc

    async def infer(
        self,
        name: str,
        version: str | None,
        rows: list[list[float | None]],
        *,
        feature_contract: str,
        request_id: str,
        timeout: float | None,
    ) -> Inference:
        width = len(rows[0])
        body = {
            "id": request_id,
            "parameters": {"feature_contract": feature_contract},
            "inputs": [{
                "name": INPUT_NAME,
                "datatype": "FP32",
                "shape": [len(rows), width],
                "data": [value for row in rows for value in row],
            }],
            "outputs": [{"name": SCORE}, {"name": CONTRIBUTIONS}],
        }
        response = await downstream.send(
            self.http, NAME, "POST", model_path(name, version) + "/infer", metrics=self.metrics,
            timeout=timeout, connect_timeout_s=self.connect_timeout_s, request_id=request_id,
            content=orjson.dumps(body), headers=JSON_HEADERS,
        )
        if response.status_code != 200:
            if downstream.problem_slug(response) == "feature-contract-mismatch":
                raise downstream.rejected(self.metrics, NAME, response, FeatureContractMismatch)
            raise downstream.rejected(self.metrics, NAME, response)
        return self._decode(response, len(rows), width)

    def _decode(self, response: httpx.Response, n: int, width: int) -> Inference:
        try:
            body = orjson.loads(response.content)
            outputs = {o["name"]: o for o in body["outputs"]}
            scores = [float(s) for s in _flatten(outputs[SCORE]["data"])]
            flat = [float(c) for c in _flatten(outputs[CONTRIBUTIONS]["data"])]
            model_name, model_version = str(body["model_name"]), str(body["model_version"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise downstream.invalid_response(
                self.metrics, NAME, f"not a V2 answer with score and contributions ({exc!r:.200})"
            ) from exc
        step = width + 1
        if len(scores) != n or len(flat) != n * step:
            raise downstream.invalid_response(
                self.metrics, NAME, f"{len(scores)} scores / {len(flat)} contributions for {n} rows"
            )
        if any(not (0.0 <= s <= 1.0) or math.isnan(s) for s in scores):
            raise downstream.invalid_response(self.metrics, NAME, "a score outside [0, 1]")
        return Inference(
            model_name=model_name,
            model_version=model_version,
            scores=scores,
            contributions=[flat[i * step:(i + 1) * step] for i in range(n)],
        )

    async def ready(self, timeout: float) -> tuple[bool, str]:
        try:
            response = await downstream.send(
                self.http, NAME, "GET", "/v2/health/ready", metrics=self.metrics,
                timeout=timeout, connect_timeout_s=self.connect_timeout_s,
            )
        except DownstreamError as exc:
            return False, exc.detail
        if response.status_code != 200:
            return False, f"answered {response.status_code}"
        return True, "ready"
