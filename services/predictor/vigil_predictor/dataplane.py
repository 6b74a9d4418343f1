"""The V2 data plane: health, metadata and inference, free of any HTTP framework.

Routes in ``rest.py`` hand it path values and raw bodies and return what it gives back; every
failure is a ``PredictorError`` subclass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import anyio.to_thread
import numpy as np

from vigil_predictor.coalescer import Coalescer
from vigil_predictor.errors import FeatureContractMismatch, InvalidRequest, InvalidTensor
from vigil_predictor.metrics import PredictorMetrics
from vigil_predictor.protocol import (
    DATATYPES,
    EncodedResponse,
    InferenceRequest,
    InferenceResponse,
    OutputTensor,
    RawInferenceRequest,
    RequestOutput,
    decode_request,
    encode_response,
    tensor_to_numpy,
)
from vigil_predictor.repository import ModelRepository
from vigil_predictor.runtime import CONTRIBUTIONS, SCORE, XGBoostRuntime
from vigil_predictor.settings import PredictorSettings

SERVER_NAME = "vigil-predictor"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "xgboost"
INPUT_NAME = "features"
INPUT_DATATYPE = "FP32"
OUTPUTS = (SCORE, CONTRIBUTIONS)
# Request parameter: explain only the rows scoring at least this much (the others' contributions
# are NaN), e.g. a client that gives reasons for flagged transactions only.
CONTRIBUTIONS_MIN_SCORE = "contributions_min_score"
# Bodies above this are parsed off the event loop (JSON decoding is the slow part of a request).
INLINE_DECODE_BYTES = 256 * 1024


@cache
def server_version() -> str:
    try:
        return package_version("vigil-predictor")
    except PackageNotFoundError:
        return "0.0.0"


@dataclass
class _Plan:
    """A request checked against its model: what to decode, what to compute, how to answer."""

    runtime: XGBoostRuntime
    request: InferenceRequest
    rows: int
    outputs: list[tuple[str, bool]]  # (name, binary)
    contributions_min_score: float | None = None


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        settings: PredictorSettings,
        metrics: PredictorMetrics,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.coalescer = (
            Coalescer(settings.inline_max_rows, on_batch=self._observe_batch)
            if settings.coalesce_requests
            else None
        )

    def _observe_batch(self, requests: int, rows: int) -> None:
        self.metrics.batch_requests.observe(requests)

    # health
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.ready

    def readiness_report(self) -> dict[str, Any]:
        return {
            "ready": self.ready(),
            "models": {
                name: {
                    "default_version": self.repository.default_version(name),
                    "ready_versions": self.repository.ready_versions(name),
                    "refused_versions": self.repository.refused_versions(name),
                }
                for name in self.repository.model_names()
            },
        }

    # metadata
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        runtime = self.repository.get(name, version)
        info = runtime.info
        assert info is not None  # a ready runtime has its metadata
        width = info.num_features
        return {
            "name": name,
            "versions": self.repository.ready_versions(name),
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": [-1, width]}],
            "outputs": [
                {"name": SCORE, "datatype": "FP32", "shape": [-1]},
                {"name": CONTRIBUTIONS, "datatype": "FP32", "shape": [-1, width + 1]},
            ],
            "parameters": {
                "version": runtime.version,
                "feature_service": info.feature_service,
                "feature_names": info.feature_names,
                "feature_contract": info.feature_contract,
                "thresholds": info.thresholds,
                "segment_thresholds": info.segment_thresholds,
                "serving_policy": info.serving_policy,
                "training_range": info.training_range,
            },
        }

    def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        runtime = self.repository.get(name, version)
        return {"name": name, "version": runtime.version, "ready": True}

    # inference
    async def infer(
        self, name: str, version: str | None, raw: RawInferenceRequest
    ) -> EncodedResponse:
        runtime = self.repository.get(name, version)  # 404/503 before touching the body
        started = time.perf_counter()
        max_bytes = self.settings.max_request_bytes
        if len(raw.body) > INLINE_DECODE_BYTES:
            request = await anyio.to_thread.run_sync(
                lambda: decode_request(raw, max_bytes=max_bytes)
            )
        else:
            request = decode_request(raw, max_bytes=max_bytes)
        plan = self._plan(runtime, request)
        if plan.rows > self.settings.inline_max_rows:
            encoded = await anyio.to_thread.run_sync(self._execute, plan)
        elif self.coalescer is not None:
            features = self._features(plan)
            arrays = await self.coalescer.predict(
                plan.runtime,
                features,
                contributions=self._wants_contributions(plan),
                contributions_min_score=plan.contributions_min_score,
            )
            encoded = self._encode(plan, arrays)
        else:
            encoded = self._execute(plan)
        rows, latency = self._children(name, runtime.version)
        rows.inc(plan.rows)
        latency.observe(time.perf_counter() - started)
        return encoded

    def _children(self, name: str, version: str) -> tuple[Any, Any]:
        """The inference metrics' children of a model version, kept: ``labels()`` takes a lock
        and builds its key on every call, a few per cent of a one-row request's CPU."""
        children = self._metric_children.get((name, version))
        if children is None:
            children = (
                self.metrics.inference_rows.labels(name, version),
                self.metrics.inference_latency.labels(name, version),
            )
            if len(self._metric_children) < 1024:  # names and versions come from the repository
                self._metric_children[(name, version)] = children
        return children

    def _plan(self, runtime: XGBoostRuntime, request: InferenceRequest) -> _Plan:
        info = runtime.info
        assert info is not None
        contract = request.parameters.get("feature_contract")
        if contract is not None:
            if not isinstance(contract, str):
                raise InvalidRequest("parameter feature_contract must be a string")
            if contract != info.feature_contract:
                raise FeatureContractMismatch(
                    f"the request's feature_contract {contract!r} is not model "
                    f"{runtime.name!r} version {runtime.version!r}'s {info.feature_contract!r}"
                )
        min_score = request.parameters.get(CONTRIBUTIONS_MIN_SCORE)
        if min_score is not None and (
            isinstance(min_score, bool)
            or not isinstance(min_score, (int, float))
            or not 0 <= min_score <= 1
        ):
            raise InvalidRequest(f"parameter {CONTRIBUTIONS_MIN_SCORE} must be a number in [0, 1]")
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
            names = [tensor.name for tensor in request.inputs]
            raise InvalidTensor(f"expected exactly one input named {INPUT_NAME!r}, got {names}")
        tensor = request.inputs[0]
        if tensor.datatype != INPUT_DATATYPE:
            raise InvalidTensor(
                f"input {INPUT_NAME!r} must be {INPUT_DATATYPE}, not {tensor.datatype!r}"
            )
        shape = tensor.shape
        if len(shape) != 2 or shape[1] != info.num_features or shape[0] < 1:
            raise InvalidTensor(
                f"input {INPUT_NAME!r} must have shape [N, {info.num_features}] with N >= 1, "
                f"not {shape}"
            )
        if shape[0] > self.settings.max_batch_rows:
            raise InvalidTensor(
                f"{shape[0]} rows is more than the {self.settings.max_batch_rows} "
                "allowed per request"
            )
        # No outputs named: the score alone; contributions cost a second pass and are opt-in.
        requested: list[RequestOutput | None] = [*request.outputs] if request.outputs else [None]
        outputs: list[tuple[str, bool]] = []
        for output in requested:
            out_name = SCORE if output is None else output.name
            if out_name not in OUTPUTS:
                raise InvalidRequest(f"unknown output {out_name!r}; this model has {list(OUTPUTS)}")
            if any(out_name == seen for seen, _ in outputs):
                raise InvalidRequest(f"output {out_name!r} is requested twice")
            outputs.append((out_name, request.wants_binary(output)))
        return _Plan(
            runtime=runtime,
            request=request,
            rows=shape[0],
            outputs=outputs,
            contributions_min_score=None if min_score is None else float(min_score),
        )

    def _execute(self, plan: _Plan) -> EncodedResponse:
        """Decode the tensor, predict and encode: plain CPU work, safe to run in a thread."""
        arrays = plan.runtime.predict(
            self._features(plan),
            contributions=self._wants_contributions(plan),
            contributions_min_score=plan.contributions_min_score,
        )
        return self._encode(plan, arrays)

    @staticmethod
    def _features(plan: _Plan) -> np.ndarray:
        features = tensor_to_numpy(plan.request.inputs[0], DATATYPES[INPUT_DATATYPE])
        if np.isinf(features).any():
            # XGBoost refuses infinities; missing values are NaN (JSON null), never inf.
            raise InvalidTensor(f"input {INPUT_NAME!r} contains infinite values")
        return features

    @staticmethod
    def _wants_contributions(plan: _Plan) -> bool:
        return any(name == CONTRIBUTIONS for name, _ in plan.outputs)

    @staticmethod
    def _encode(plan: _Plan, arrays: dict[str, np.ndarray]) -> EncodedResponse:
        return encode_response(
            InferenceResponse(
                model_name=plan.runtime.name,
                model_version=plan.runtime.version,
                id=plan.request.id,
                outputs=[
                    OutputTensor(name=name, array=arrays[name], binary=binary)
                    for name, binary in plan.outputs
                ],
            )
        )
