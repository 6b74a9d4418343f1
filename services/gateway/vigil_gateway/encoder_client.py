"""Client of the encoder: keys + request-time fields in, ordered feature vectors out.

The wire shapes are ``vigil_contracts.encoding``; rows are sent as plain dicts because the gateway
built them itself, and the answer is validated because it did not.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from pydantic import ValidationError
from vigil_contracts.encoding import EncodeResponse

from vigil_gateway import downstream
from vigil_gateway.errors import DownstreamError
from vigil_gateway.metrics import GatewayMetrics

NAME = "encoder"
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}


class EncoderClient:
    def __init__(self, http: httpx.AsyncClient, metrics: GatewayMetrics, connect_timeout_s: float) -> None:
        self.http = http
        self.metrics = metrics
        self.connect_timeout_s = connect_timeout_s

    async def encode(
        self,
        feature_service: str,
        rows: list[dict[str, Any]],
        *,
        request_id: str,
        timeout: float | None,
    ) -> EncodeResponse:
        """Vectors for ``rows`` (each ``{"entities": ..., "request": ...}``), in the same order."""
        response = await downstream.send(
            self.http, NAME, "POST", "/v1/encode",
            metrics=self.metrics, timeout=timeout, connect_timeout_s=self.connect_timeout_s,
            request_id=request_id,
            content=orjson.dumps({"feature_service": feature_service, "rows": rows}),
            headers=JSON_HEADERS,
        )
        if response.status_code != 200:
            raise downstream.rejected(self.metrics, NAME, response)
        try:
            encoded = EncodeResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise downstream.invalid_response(
                self.metrics, NAME, f"not an encode response ({exc.error_count()} errors)"
            ) from exc
        width = len(encoded.feature_names)
        if len(encoded.rows) != len(rows) or any(
            not (len(r.values) == len(r.missing) == len(r.stale) == len(r.age_seconds) == width)
            for r in encoded.rows
        ):
            raise downstream.invalid_response(
                self.metrics, NAME, f"{len(encoded.rows)} rows of the wrong width for {len(rows)} asked"
            )
        return encoded

    async def ready(self, timeout: float) -> tuple[bool, str]:
        try:
            response = await downstream.send(
                self.http, NAME, "GET", "/readyz", metrics=self.metrics,
                timeout=timeout, connect_timeout_s=self.connect_timeout_s,
            )
        except DownstreamError as exc:
            return False, exc.detail
        if response.status_code != 200:
            return False, f"answered {response.status_code}: {downstream.problem_detail(response)}"
        return True, "ready"
