"""Client of the predictor, speaking the Open Inference Protocol V2 over REST.

Tensors travel in the V2 binary tensor extension: the features as little-endian FP32 bytes after
a JSON header (``Inference-Header-Content-Length`` says where it ends), NaN for a missing
feature, and ``score`` and ``contributions`` asked back the same way, so no float is written or
parsed as text on this hop. Plain JSON outputs are read too, from any V2 server that answers so.
The request carries the encoder's ``feature_contract`` so the predictor can refuse a vector in the
wrong order, and ``contributions_min_score`` so it explains only the rows the gateway will give
reasons for.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
import orjson
from pydantic import ValidationError

from vigil_gateway import downstream
from vigil_gateway.errors import FeatureContractMismatch
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.model_metadata import ModelMetadata

NAME = "predictor"
INPUT_NAME = "features"
SCORE = "score"
CONTRIBUTIONS = "contributions"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_HEADERS = {
    "content-type": "application/octet-stream",
    "accept": "application/octet-stream, application/json",
}
_BINARY_OUTPUTS = [
    {"name": SCORE, "parameters": {"binary_data": True}},
    {"name": CONTRIBUTIONS, "parameters": {"binary_data": True}},
]
_NAN = math.nan
_FP32 = 4  # bytes
# V2 binary tensors are little-endian; array("f") is the machine's order.
_SWAP = sys.byteorder != "little"


@dataclass(frozen=True)
class Inference:
    model_name: str
    model_version: str
    scores: list[float]
    # N rows of F + 1 (the last column is the bias); None for a row the predictor did not explain
    # (its score was below the request's contributions_min_score).
    contributions: list[list[float] | None]


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


class Features(NamedTuple):
    """An ``[N, F]`` feature matrix as the V2 binary extension carries it: FP32, little-endian,
    row-major, NaN for a missing feature."""

    raw: bytes
    n_rows: int
    width: int

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float | None]]) -> Features:
        # A value beyond FP32's range becomes inf, which the predictor refuses (400) as it
        # would the same number in JSON.
        values = array("f", [_NAN if v is None else v for row in rows for v in row])
        if _SWAP:
            values.byteswap()
        return cls(values.tobytes(), len(rows), len(rows[0]))

    @classmethod
    def from_fp64(cls, values: array[float], n_rows: int, width: int) -> Features:
        """From a flat FP64 matrix (NaN = missing). Through a list: ``array("f", a_list)`` is
        ~1.5x faster than ``array("f", an_array)``, which converts item by item."""
        packed = array("f", values.tolist())
        if _SWAP:
            packed.byteswap()
        return cls(packed.tobytes(), n_rows, width)

    def take(self, rows: Sequence[int]) -> Features:
        """The given rows, in that order."""
        step = self.width * _FP32
        raw = self.raw
        return Features(
            b"".join([raw[i * step : (i + 1) * step] for i in rows]), len(rows), self.width
        )


def encode_request(
    rows: Sequence[Sequence[float | None]] | Features,
    *,
    request_id: str,
    feature_contract: str,
    contributions_min_score: float | None,
) -> tuple[bytes, dict[str, str]]:
    """A V2 binary request: the JSON header, then the ``[N, F]`` features as FP32 bytes."""
    features = rows if isinstance(rows, Features) else Features.from_rows(rows)
    raw = features.raw
    parameters: dict[str, Any] = {"feature_contract": feature_contract}
    if contributions_min_score is not None:
        parameters["contributions_min_score"] = contributions_min_score
    header = orjson.dumps(
        {
            "id": request_id,
            "parameters": parameters,
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "datatype": "FP32",
                    "shape": [features.n_rows, features.width],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": _BINARY_OUTPUTS,
        }
    )
    return header + raw, {**BINARY_HEADERS, HEADER_LENGTH: str(len(header))}


def _fp32(buffer: bytes | memoryview) -> array[float]:
    values = array("f")
    values.frombytes(buffer)
    if _SWAP:
        values.byteswap()
    return values


def decode_outputs(
    content: bytes, header_length: str | None
) -> tuple[dict[str, Any], dict[str, Sequence[float]]]:
    """The JSON part of a V2 answer and each output's values, flat (NaN for JSON ``null``).

    Raises ValueError, KeyError, TypeError or AttributeError on anything that is not a
    well-formed V2 answer.
    """
    if header_length is None:
        body, binary = orjson.loads(content), memoryview(b"")
    else:
        length = int(header_length)
        if not 0 <= length <= len(content):
            raise ValueError(f"{HEADER_LENGTH} {length} is outside the body")
        view = memoryview(content)
        body, binary = orjson.loads(view[:length]), view[length:]
    values: dict[str, Sequence[float]] = {}
    offset = 0
    for output in body["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values[output["name"]] = [
                _NAN if v is None else float(v) for v in _flatten(output["data"])
            ]
            continue
        if output["datatype"] != "FP32" or not isinstance(size, int) or size % _FP32:
            raise ValueError(f"output {output['name']!r} is not FP32 binary data")
        if offset + size > len(binary):
            raise ValueError(f"output {output['name']!r} runs past the end of the body")
        values[output["name"]] = _fp32(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise ValueError(f"{len(binary) - offset} bytes after the outputs")
    return body, values


def split_rows(flat: Sequence[float], n: int, step: int) -> list[list[float] | None]:
    """``n`` rows of ``step`` values; a row whose bias (last value) is NaN was not explained."""
    out: list[list[float] | None] = []
    for end in range(step, n * step + 1, step):
        bias = flat[end - 1]
        out.append(None if bias != bias else list(flat[end - step : end]))
    return out


class PredictorClient:
    def __init__(
        self, http: httpx.AsyncClient, metrics: GatewayMetrics, connect_timeout_s: float
    ) -> None:
        self.http = http
        self.metrics = metrics
        self.connect_timeout_s = connect_timeout_s

    async def metadata(
        self,
        name: str,
        version: str | None,
        *,
        timeout: float | None,
        request_id: str | None = None,
    ) -> ModelMetadata:
        response = await downstream.send(
            self.http,
            NAME,
            "GET",
            model_path(name, version),
            metrics=self.metrics,
            timeout=timeout,
            connect_timeout_s=self.connect_timeout_s,
            request_id=request_id,
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
        rows: Sequence[Sequence[float | None]] | Features,
        *,
        feature_contract: str,
        request_id: str,
        timeout: float | None,
        contributions_min_score: float | None = None,
    ) -> Inference:
        """Scores for every row; contributions for the rows scoring ``>= contributions_min_score``
        (every row when it is None)."""
        content, headers = encode_request(
            rows,
            request_id=request_id,
            feature_contract=feature_contract,
            contributions_min_score=contributions_min_score,
        )
        response = await downstream.send(
            self.http,
            NAME,
            "POST",
            model_path(name, version) + "/infer",
            metrics=self.metrics,
            timeout=timeout,
            connect_timeout_s=self.connect_timeout_s,
            request_id=request_id,
            content=content,
            headers=headers,
        )
        if response.status_code != 200:
            if downstream.problem_slug(response) == "feature-contract-mismatch":
                raise downstream.rejected(self.metrics, NAME, response, FeatureContractMismatch)
            raise downstream.rejected(self.metrics, NAME, response)
        if isinstance(rows, Features):
            return self._decode(response, rows.n_rows, rows.width)
        return self._decode(response, len(rows), len(rows[0]))

    def _decode(self, response: downstream.Response, n: int, width: int) -> Inference:
        try:
            body, outputs = decode_outputs(response.content, response.headers.get(HEADER_LENGTH))
            scores = list(outputs[SCORE])
            flat = outputs[CONTRIBUTIONS]
            model_name, model_version = str(body["model_name"]), str(body["model_version"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
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
            contributions=split_rows(flat, n, step),
        )

    async def ready(self, timeout: float) -> tuple[bool, str]:
        return await downstream.probe(
            self.http,
            NAME,
            "/v2/health/ready",
            metrics=self.metrics,
            timeout=timeout,
            connect_timeout_s=self.connect_timeout_s,
        )
