"""The encoder's internal API: keys + request-time fields in, ordered feature vectors out."""

from __future__ import annotations

import json
import math
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EncodeRow(BaseModel):
    entities: dict[str, str] = Field(description="join key -> value, e.g. {'card_id': 'c12'}")
    request: dict[str, float | int | str | None] = Field(
        description="Request-time fields of the feature service (see request_features.REQUEST_FIELDS)."
    )


class EncodeRequest(BaseModel):
    feature_service: str
    rows: list[EncodeRow] = Field(min_length=1)


class EncodeColumns(BaseModel):
    """The rows of a batch as columns: row ``i`` is the ``i``-th value of every list."""

    model_config = ConfigDict(extra="forbid")

    entities: dict[str, list[str]] = Field(
        description="join key -> one value per row, e.g. {'card_id': ['c12', 'c7']}"
    )
    request: dict[str, list[float | int | str | None]] = Field(
        description="Request-time field -> one value per row (see request_features.REQUEST_FIELDS)."
    )

    @model_validator(mode="after")
    def _one_length(self) -> EncodeColumns:
        columns: tuple[list[Any], ...] = (*self.entities.values(), *self.request.values())
        lengths = {len(values) for values in columns}
        if len(lengths) > 1:
            raise ValueError("every column must have one value per row (the same length)")
        if lengths == {0}:
            raise ValueError("the columns hold no row")
        return self

    @property
    def n_rows(self) -> int:
        columns: tuple[list[Any], ...] = (*self.entities.values(), *self.request.values())
        for values in columns:
            return len(values)
        return 0


class EncodeColumnsRequest(BaseModel):
    """An ``EncodeRequest`` whose rows come as columns (what the gateway sends: a batch costs
    no object per row to write, send or read). Answered exactly as the same rows would be."""

    model_config = ConfigDict(extra="forbid")

    feature_service: str
    columns: EncodeColumns


class EncodedRow(BaseModel):
    values: list[float | None] = Field(
        description="In model order; None = missing (NaN to XGBoost)."
    )
    missing: list[bool]
    stale: list[bool] = Field(
        description="True where a stored value was older than its view's TTL (then also missing)."
    )
    age_seconds: list[float | None] = Field(
        description="Age of each stored value; 0 for on-demand; None when missing."
    )


class EncodeResponse(BaseModel):
    feature_service: str
    feature_names: list[str]
    feature_contract: str
    rows: list[EncodedRow]


# --- the binary form of an EncodeResponse ---------------------------------------------------
#
# Asked with ``Accept: application/octet-stream``. As in the V2 binary tensor extension: a JSON
# header, then the tensors' raw little-endian bytes back to back; the header's length is in the
# ``Encode-Header-Content-Length`` response header. The header holds ``feature_service``,
# ``feature_names``, ``feature_contract`` and ``tensors``: ``values`` (FP64 [N, F], NaN where
# missing), ``age_seconds`` (FP64 [N, F], NaN where None), ``missing`` and ``stale`` (BOOL
# [N, F], one byte each), in that order, each with its ``binary_data_size``. No float is written
# or parsed as text, and the gateway hands ``values`` to the predictor without a per-value loop.

BINARY_MEDIA_TYPE = "application/octet-stream"
BINARY_HEADER_LENGTH = "Encode-Header-Content-Length"

# --- the caller's time budget -------------------------------------------------------------------
#
# The gateway says how long it will wait for an encode answer, in whole milliseconds (as gRPC's
# ``grpc-timeout``): the encoder's round trip to Redis may then use most of it (a large batch
# on a loaded store takes longer than its default deadline, and the caller waits anyway).
TIMEOUT_HEADER = "x-vigil-timeout-ms"


def budget_s(header: str | None) -> float | None:
    """The caller's budget in seconds from :data:`TIMEOUT_HEADER`; None when absent or not a
    whole number of milliseconds (the callee's own deadline then holds)."""
    if header is None or not header.isdigit():
        return None
    return int(header) / 1000


BINARY_TENSORS = (
    ("values", "FP64", 8),
    ("age_seconds", "FP64", 8),
    ("missing", "BOOL", 1),
    ("stale", "BOOL", 1),
)
_BOOL_BYTES = b"\x00\x01"
_SWAP = sys.byteorder != "little"


def _fp64(values: Iterable[float | None]) -> bytes:
    flat = values if type(values) is list else list(values)
    try:
        packed = array("d", flat)  # NaN already stands for missing (the encoder's own rows)
    except TypeError:  # None for missing, as in a parsed EncodeResponse
        nan = math.nan
        packed = array("d", [nan if v is None else v for v in flat])
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


def _header(
    feature_service: str,
    feature_names: list[str],
    feature_contract: str,
    n_rows: int,
    sizes: Iterable[int],
) -> bytes:
    shape = [n_rows, len(feature_names)]
    return json.dumps(
        {
            "feature_service": feature_service,
            "feature_names": feature_names,
            "feature_contract": feature_contract,
            "tensors": [
                {"name": name, "datatype": datatype, "shape": shape, "binary_data_size": size}
                for (name, datatype, _), size in zip(BINARY_TENSORS, sizes, strict=True)
            ],
        },
        separators=(",", ":"),
    ).encode()


def encode_binary(body: dict[str, Any]) -> tuple[bytes, int]:
    """An ``EncodeResponse`` as plain data (``rows`` of dicts) -> (binary body, header length)."""
    rows = body["rows"]
    names = body["feature_names"]
    parts = [
        _fp64(chain.from_iterable(row["values"] for row in rows)),
        _fp64(chain.from_iterable(row["age_seconds"] for row in rows)),
        bytes(chain.from_iterable(row["missing"] for row in rows)),
        bytes(chain.from_iterable(row["stale"] for row in rows)),
    ]
    header = _header(
        body["feature_service"], names, body["feature_contract"], len(rows), map(len, parts)
    )
    return header + b"".join(parts), len(header)


def binary_header(
    feature_service: str, feature_names: list[str], feature_contract: str, n_rows: int
) -> bytes:
    """The JSON header of the binary answer to ``n_rows`` rows: the same for every answer of
    that many rows of one feature service, so a caller may keep it."""
    size = n_rows * len(feature_names)
    return _header(
        feature_service,
        feature_names,
        feature_contract,
        n_rows,
        [size * itemsize for _, _, itemsize in BINARY_TENSORS],
    )


def encode_binary_flat(
    header: bytes,
    values: list[float],
    age_seconds: list[float],
    missing: list[bool] | bytes,
    stale: list[bool] | bytes,
) -> tuple[bytes, int]:
    """(binary body, header length) of an answer given as flat row-major lists (``n_rows`` x
    ``width``, NaN where missing; the flags may also come as their bytes, one per flag) and its
    :func:`binary_header`: the bytes :func:`encode_binary` makes of the same answer as rows of
    dicts."""
    return (
        b"".join((header, _fp64(values), _fp64(age_seconds), bytes(missing), bytes(stale))),
        len(header),
    )


@dataclass(frozen=True)
class BinaryEncoding:
    """A decoded binary ``EncodeResponse``: flat row-major tensors of ``n_rows`` x ``width``."""

    feature_service: str
    feature_names: list[str]
    feature_contract: str
    n_rows: int
    width: int
    values: array  # FP64, NaN = missing
    age_seconds: array  # FP64, NaN = None
    missing: bytes  # 0 / 1
    stale: bytes  # 0 / 1


def decode_binary(content: bytes, header_length: str | None, n_rows: int) -> BinaryEncoding:
    """The binary answer to ``n_rows`` rows; ValueError (or KeyError, TypeError) for anything
    else: a header that is not one, tensors of another name, type or shape, sizes that do not
    add up to the body, flags that are not 0 or 1."""
    if header_length is None or not header_length.isdigit():
        raise ValueError(f"no valid {BINARY_HEADER_LENGTH}")
    length = int(header_length)
    if length > len(content):
        raise ValueError(f"{BINARY_HEADER_LENGTH} {length} is beyond the body")
    view = memoryview(content)
    header = json.loads(bytes(view[:length]))
    service, names, contract = (
        header["feature_service"],
        header["feature_names"],
        header["feature_contract"],
    )
    if not (
        isinstance(service, str)
        and isinstance(contract, str)
        and isinstance(names, list)
        and all(isinstance(n, str) for n in names)
    ):
        raise TypeError("feature_service, feature_names or feature_contract is malformed")
    width = len(names)
    tensors = header["tensors"]
    if not isinstance(tensors, list) or len(tensors) != len(BINARY_TENSORS):
        raise ValueError("tensors are not values, age_seconds, missing and stale")
    parts: list[memoryview] = []
    offset = length
    for tensor, (name, datatype, itemsize) in zip(tensors, BINARY_TENSORS, strict=True):
        size = n_rows * width * itemsize
        if (
            tensor.get("name"),
            tensor.get("datatype"),
            tensor.get("shape"),
            tensor.get("binary_data_size"),
        ) != (name, datatype, [n_rows, width], size):
            raise ValueError(
                f"tensor {tensor.get('name')!r} is not {name} {datatype} "
                f"[{n_rows}, {width}] of {size} bytes"
            )
        parts.append(view[offset : offset + size])
        offset += size
    if offset != len(content):
        raise ValueError(f"the body is {len(content)} bytes, the tensors end at {offset}")
    values, ages = array("d"), array("d")
    values.frombytes(parts[0])
    ages.frombytes(parts[1])
    if _SWAP:
        values.byteswap()
        ages.byteswap()
    missing, stale = bytes(parts[2]), bytes(parts[3])
    if missing.translate(None, _BOOL_BYTES) or stale.translate(None, _BOOL_BYTES):
        raise ValueError("a missing or stale flag is neither 0 nor 1")
    return BinaryEncoding(service, names, contract, n_rows, width, values, ages, missing, stale)
