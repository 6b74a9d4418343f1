"""Client of the encoder: keys + request-time fields in, ordered feature vectors out.

Saves: pydantic models for a thousand rows a batch (orjson into plain objects; the binary form
parses no float as text); held equal: the binary and JSON answers tested equal
(tests/test_encoding_binary.py), and JSON is read when an encoder sends only that.

The wire shapes are ``vigil_contracts.encoding``; rows are sent as plain dicts because the gateway
built them itself, and the answer is checked because it did not. The answer is read with orjson
into :class:`EncodedVectors` (plain objects with the attributes of ``EncodeResponse``): a
thousand rows of pydantic models cost more than the rest of the hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

import httpx
import orjson

from vigil_contracts.encoding import (
    BINARY_HEADER_LENGTH,
    BINARY_MEDIA_TYPE,
    TIMEOUT_HEADER,
    BinaryEncoding,
    decode_binary,
)
from vigil_gateway import downstream
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.predictor_client import Features

logger = logging.getLogger(__name__)

NAME = "encoder"
# The binary answer is asked first; JSON is read too (an older encoder answers only that).
REQUEST_HEADERS = {
    "content-type": "application/json",
    "accept": f"{BINARY_MEDIA_TYPE}, application/json",
}

_NUMBER = frozenset({float, int, type(None)})
_FLAGS = frozenset({True, False})


class EncodedVector(NamedTuple):
    """One row of ``EncodeResponse.rows``."""

    values: list[float | None]
    missing: list[bool]
    stale: list[bool]
    age_seconds: list[float | None]


class BinaryRow:
    """One row of a binary answer, read where it lies: ``missing`` and ``stale`` as 0/1 bytes
    (what the serving policy counts), ``values`` and ``age_seconds`` as lists with None for
    missing, made only when asked (for the few transactions that get reasons)."""

    __slots__ = ("_batch", "_end", "_start")

    def __init__(self, batch: BinaryEncoding, index: int) -> None:
        self._batch = batch
        self._start = index * batch.width
        self._end = self._start + batch.width

    @property
    def missing(self) -> bytes:
        return self._batch.missing[self._start : self._end]

    @property
    def stale(self) -> bytes:
        return self._batch.stale[self._start : self._end]

    @property
    def values(self) -> list[float | None]:
        return [None if v != v else v for v in self._batch.values[self._start : self._end]]

    @property
    def age_seconds(self) -> list[float | None]:
        return [None if v != v else v for v in self._batch.age_seconds[self._start : self._end]]


class EncodedVectors(NamedTuple):
    """An ``EncodeResponse``: the vectors in request order, their feature names and contract;
    ``binary`` is the whole answer as tensors when it came in binary form."""

    feature_service: str
    feature_names: list[str]
    feature_contract: str
    rows: Sequence[EncodedVector | BinaryRow]
    binary: BinaryEncoding | None = None

    def features(self, rows: Sequence[int]) -> Features:
        """The predictor's input for the given rows, in that order."""
        binary = self.binary
        if binary is None:
            return Features.from_rows([self.rows[i].values for i in rows])
        everything = Features.from_fp64(binary.values, binary.n_rows, binary.width)
        if len(rows) == binary.n_rows and all(i == k for k, i in enumerate(rows)):
            return everything
        return everything.take(rows)


def parse_binary_encode_response(
    content: bytes, header_length: str | None, n_rows: int
) -> EncodedVectors:
    """The encoder's binary answer (``vigil_contracts.encoding.decode_binary``) to ``n_rows`` rows."""
    binary = decode_binary(content, header_length, n_rows)
    return EncodedVectors(
        binary.feature_service,
        binary.feature_names,
        binary.feature_contract,
        [BinaryRow(binary, i) for i in range(n_rows)],
        binary,
    )


_row_fields = itemgetter(*EncodedVector._fields)


def parse_encode_response(content: bytes, n_rows: int) -> EncodedVectors:
    """The encoder's answer to ``n_rows`` rows; ValueError (or KeyError, TypeError) when it is
    not an encode response of that many rows, each as wide as the feature names, with numbers
    (or null) for values and ages and booleans (or 0/1) for flags. Stricter than the model in
    one way: numbers sent as text are refused, not converted (the encoder never sends them).

    The checks run field by field over all rows at once (``set(map(...))`` passes in C): per
    row and per value in Python they would cost as much as the parse.
    """
    body = orjson.loads(content)
    service, names, contract = (
        body["feature_service"],
        body["feature_names"],
        body["feature_contract"],
    )
    if not (
        isinstance(service, str)
        and isinstance(contract, str)
        and isinstance(names, list)
        and all(isinstance(n, str) for n in names)
    ):
        raise TypeError("feature_service, feature_names or feature_contract is malformed")
    raw_rows = body["rows"]
    if not isinstance(raw_rows, list) or len(raw_rows) != n_rows:
        raise ValueError(f"{len(raw_rows)} rows for {n_rows} asked")
    rows = list(map(EncodedVector._make, map(_row_fields, raw_rows)))
    lists = list(chain.from_iterable(rows))
    if set(map(type, lists)) != {list} or {len(v) for v in lists if isinstance(v, list)} != {
        len(names)
    }:
        raise ValueError(f"rows that are not lists of {len(names)} values")
    numbers = chain.from_iterable(chain.from_iterable((r.values, r.age_seconds) for r in rows))
    flags = chain.from_iterable(chain.from_iterable((r.missing, r.stale) for r in rows))
    if not set(map(type, numbers)) <= _NUMBER or not set(flags) <= _FLAGS:
        raise TypeError("a value or age is not a number (or null), or a flag is not a boolean")
    return EncodedVectors(service, names, contract, rows)


def columns_to_rows(columns: dict[str, dict[str, list[Any]]], n_rows: int) -> list[dict[str, Any]]:
    """The rows of an ``EncodeColumnsRequest``'s columns (``EncodeRow`` shaped)."""
    return [
        {
            part: {name: values[i] for name, values in fields.items()}
            for part, fields in columns.items()
        }
        for i in range(n_rows)
    ]


def _columns_unknown(response: downstream.Response) -> bool:
    """Whether a 422 is an encoder from before the columns form asking for ``rows`` (as a
    problem's ``invalid_params``, or as FastAPI's own ``detail`` list)."""
    if response.status_code != 422:
        return False
    try:
        body = response.json()
        named = [p.get("name") for p in body.get("invalid_params") or [] if isinstance(p, dict)]
        detail = body.get("detail")
        if isinstance(detail, list):
            named += [
                ".".join(map(str, e.get("loc", ())[1:])) for e in detail if isinstance(e, dict)
            ]
    except (ValueError, AttributeError, TypeError):
        return False
    return "rows" in named


class EncoderClient:
    """Batches go as columns (``EncodeColumnsRequest``). An encoder from before that form
    answers 422 asking for ``rows``: the request is sent again as rows, and rows are sent for
    the next :attr:`ROWS_FOR_S` seconds (a rolling upgrade ends; columns are tried again)."""

    ROWS_FOR_S = 60.0

    def __init__(
        self, http: httpx.AsyncClient, metrics: GatewayMetrics, connect_timeout_s: float
    ) -> None:
        self.http = http
        self.metrics = metrics
        self.connect_timeout_s = connect_timeout_s
        self._rows_until = 0.0  # monotonic time before which rows are sent

    async def encode(
        self,
        feature_service: str,
        columns: dict[str, dict[str, list[Any]]],
        n_rows: int,
        *,
        request_id: str,
        timeout: float | None,
    ) -> EncodedVectors:
        """Vectors for the ``n_rows`` rows of ``columns`` (``{"entities": {key: [...]},
        "request": {field: [...]}}``), in the same order."""
        started = time.monotonic()
        as_rows = started < self._rows_until
        response = await self._post(feature_service, columns, n_rows, as_rows, request_id, timeout)
        if not as_rows and _columns_unknown(response):
            logger.warning(
                "the encoder does not read the columns form; sending rows",
                extra={"request_id": request_id, "for_s": self.ROWS_FOR_S},
            )
            self._rows_until = started + self.ROWS_FOR_S
            remaining = (
                None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            )
            response = await self._post(
                feature_service, columns, n_rows, True, request_id, remaining
            )
        if response.status_code != 200:
            raise downstream.rejected(self.metrics, NAME, response)
        try:
            if response.headers.get("content-type", "").startswith(BINARY_MEDIA_TYPE):
                return parse_binary_encode_response(
                    response.content, response.headers.get(BINARY_HEADER_LENGTH), n_rows
                )
            return parse_encode_response(response.content, n_rows)
        except (ValueError, KeyError, TypeError) as exc:
            raise downstream.invalid_response(
                self.metrics, NAME, f"not an encode response for {n_rows} rows ({exc!r:.200})"
            ) from exc

    async def _post(
        self,
        feature_service: str,
        columns: dict[str, dict[str, list[Any]]],
        n_rows: int,
        as_rows: bool,
        request_id: str,
        timeout: float | None,
    ) -> downstream.Response:
        body = (
            {"feature_service": feature_service, "rows": columns_to_rows(columns, n_rows)}
            if as_rows
            else {"feature_service": feature_service, "columns": columns}
        )
        return await downstream.send(
            self.http,
            NAME,
            "POST",
            "/v1/encode",
            metrics=self.metrics,
            timeout=timeout,
            connect_timeout_s=self.connect_timeout_s,
            request_id=request_id,
            content=orjson.dumps(body),
            headers=REQUEST_HEADERS
            if timeout is None
            else {**REQUEST_HEADERS, TIMEOUT_HEADER: str(int(timeout * 1000))},
        )

    async def ready(self, timeout: float) -> tuple[bool, str]:
        return await downstream.probe(
            self.http,
            NAME,
            "/readyz",
            metrics=self.metrics,
            timeout=timeout,
            connect_timeout_s=self.connect_timeout_s,
        )
