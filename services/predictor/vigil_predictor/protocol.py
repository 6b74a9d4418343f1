"""The Open Inference Protocol V2 on the wire: request decoding and response encoding.

Covers the JSON form (``data`` flat row-major or nested, ``null`` = missing) and the binary
tensor data extension (``Inference-Header-Content-Length`` splits a JSON header from raw
little-endian tensor bytes, in input order; outputs may be asked for the same way). Nothing here
knows about models or HTTP frameworks: it turns bytes into tensors and tensors into bytes.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vigil_predictor.errors import InvalidRequest, InvalidTensor, RequestTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
JSON_MEDIA_TYPE = "application/json"

# V2 datatype -> little-endian numpy dtype, for the types this server emits or accepts.
DATATYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4")}


class RequestInput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequestHeader(BaseModel):
    """The JSON part of a V2 inference request."""

    model_config = ConfigDict(strict=True)

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class RawInferenceRequest:
    """An inference request as it arrived: body bytes and the two headers that shape them."""

    body: bytes
    header_length: str | None = None
    content_encoding: str | None = None


@dataclass
class InputTensor:
    """One input: its declared name, datatype and shape, and either JSON data or raw bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: Any = None
    raw: bytes | None = None


@dataclass
class InferenceRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[InputTensor]
    outputs: list[RequestOutput] | None

    def wants_binary(self, output: RequestOutput | None) -> bool:
        """Whether an output is answered in binary: its own flag, else the request-wide one."""
        if output is not None and "binary_data" in output.parameters:
            return output.parameters["binary_data"] is True
        return self.parameters.get("binary_data_output") is True


@dataclass
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool = False


@dataclass
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    media_type: str
    headers: dict[str, str]


def _undo_content_encoding(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > max_bytes:
            raise RequestTooLarge(f"the request body is larger than {max_bytes} bytes")
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidRequest(f"unsupported Content-Encoding {encoding!r}")
    # gzip framing for gzip, zlib framing for "deflate" (what HTTP clients send under that name).
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the body is not valid {encoding} data") from exc
    if len(out) > max_bytes:
        raise RequestTooLarge(f"the request body inflates beyond {max_bytes} bytes")
    return out


def _load_json(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    # orjson is the fast path; the standard library still decides what orjson refuses, so the
    # same documents are accepted as ever (NaN literals, UTF-16, integers beyond 64 bits) and
    # errors keep its messages.
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the inference header is not valid JSON: {exc}") from None


def decode_request(raw: RawInferenceRequest, *, max_bytes: int) -> InferenceRequest:
    """Split and validate a V2 request; raw input bytes are sliced, not yet interpreted."""
    body = _undo_content_encoding(raw.body, raw.content_encoding, max_bytes)
    if raw.header_length is None:
        json_part, binary_part = body, b""
    else:
        try:
            length = int(raw.header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidRequest(
                f"{HEADER_LENGTH} must be an integer between 0 and the body length ({len(body)})"
            )
        json_part, binary_part = body[:length], body[length:]
    document = _load_json(json_part)
    try:
        header = InferenceRequestHeader.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidRequest(f"not a V2 inference request: {problems}") from None

    inputs: list[InputTensor] = []
    offset = 0
    for item in header.inputs:
        size = item.parameters.get("binary_data_size")
        raw_bytes = None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidRequest(
                    f"input {item.name!r}: binary_data_size must be an integer >= 0"
                )
            if item.data is not None:
                raise InvalidRequest(f"input {item.name!r} has both 'data' and binary_data_size")
            if offset + size > len(binary_part):
                raise InvalidRequest(
                    f"input {item.name!r}: binary_data_size {size} runs past the end of the body"
                )
            raw_bytes = binary_part[offset : offset + size]
            offset += size
        inputs.append(
            InputTensor(
                name=item.name,
                datatype=item.datatype,
                shape=item.shape,
                data=item.data,
                raw=raw_bytes,
            )
        )
    if offset != len(binary_part):
        raise InvalidRequest(
            f"{len(binary_part) - offset} bytes after the inference header belong to no input"
        )
    for output in header.outputs or []:
        flag = output.parameters.get("binary_data")
        if flag is not None and not isinstance(flag, bool):
            raise InvalidRequest(f"output {output.name!r}: binary_data must be a boolean")
    return InferenceRequest(
        id=header.id, parameters=header.parameters, inputs=inputs, outputs=header.outputs
    )


def _leaf(value: Any) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return value
    if value is None:
        return math.nan
    raise InvalidTensor(f"tensor data must hold numbers or null, not {type(value).__name__}")


def _nested(data: Any, shape: list[int], out: list[float]) -> None:
    if not shape:
        out.append(_leaf(data))
        return
    if not isinstance(data, list) or len(data) != shape[0]:
        raise InvalidTensor("nested tensor data does not have the declared shape")
    for item in data:
        _nested(item, shape[1:], out)


def tensor_to_numpy(tensor: InputTensor, dtype: np.dtype) -> np.ndarray:
    """The tensor as an array of its declared shape; JSON ``null`` becomes NaN."""
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidTensor(f"input {tensor.name!r}: shape {tensor.shape} has a negative dimension")
    count = math.prod(tensor.shape)
    if tensor.raw is not None:
        if len(tensor.raw) != count * dtype.itemsize:
            raise InvalidTensor(
                f"input {tensor.name!r}: {len(tensor.raw)} bytes of binary data, "
                f"shape {tensor.shape} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(tensor.raw, dtype=dtype).reshape(tensor.shape)
    data = tensor.data
    if data is None:
        raise InvalidTensor(f"input {tensor.name!r} has neither 'data' nor binary data")
    if not isinstance(data, list):
        raise InvalidTensor(f"input {tensor.name!r}: 'data' must be a list")
    flat: list[float]
    if any(isinstance(item, list) for item in data):
        flat = []
        _nested(data, tensor.shape, flat)
    else:
        flat = [_leaf(item) for item in data]
    if len(flat) != count:
        raise InvalidTensor(
            f"input {tensor.name!r}: {len(flat)} values, shape {tensor.shape} needs {count}"
        )
    try:
        # Values beyond the dtype's range become inf, which the caller refuses with a 400.
        with np.errstate(over="ignore"):
            return np.asarray(flat, dtype=dtype).reshape(tensor.shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidTensor(f"input {tensor.name!r}: {exc}") from None


def _datatype(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"no V2 datatype for {array.dtype}")


def encode_response(response: InferenceResponse) -> EncodedResponse:
    """JSON, or the binary extension as soon as one output is asked for in binary.

    JSON data carries each FP32 value widened to float64, so its text reads back as exactly the
    float32 the model produced; NaN (a row left unexplained) is ``null``.
    """
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in response.outputs:
        datatype = _datatype(output.array)
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": datatype,
            "shape": list(output.array.shape),
        }
        if output.binary:
            raw = np.ascontiguousarray(output.array, dtype=DATATYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = output.array.ravel().astype(np.float64)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return EncodedResponse(body=header, media_type=JSON_MEDIA_TYPE, headers={})
    return EncodedResponse(
        body=b"".join([header, *chunks]),
        media_type=BINARY_MEDIA_TYPE,
        headers={HEADER_LENGTH: str(len(header))},
    )
