"""Stage *encode*: data domain -> representation. The encoder reads the entities' features
from the online store, adds the request-time ones and answers the vectors in the order the
current model was trained on (with each feature's age and missing/stale flags)."""

from __future__ import annotations

from typing import Any

from vigil_gateway.context import ScoringRequest
from vigil_gateway.encoder_client import EncodedVectors, EncoderClient
from vigil_gateway.errors import DownstreamError
from vigil_gateway.model_catalog import ModelCatalog
from vigil_gateway.model_metadata import ModelMetadata
from vigil_gateway.uncertain import FEATURES_UNAVAILABLE, MODEL_UNAVAILABLE, Unscorable


class Encode:
    def __init__(
        self, encoder: EncoderClient, catalog: ModelCatalog, *, feature_service: str | None
    ) -> None:
        self.encoder = encoder
        self.catalog = catalog
        self.feature_service = feature_service
        """The Feast feature service; None takes the one the current model was trained on."""

    async def __call__(
        self, columns: dict[str, dict[str, list[Any]]], n_rows: int, request: ScoringRequest
    ) -> tuple[ModelMetadata, EncodedVectors]:
        """The current model's metadata and the vectors of ``columns``; :class:`Unscorable`
        when either cannot be had."""
        try:
            meta = await self.catalog.ensure_current(request.limits.predictor, request.request_id)
        except DownstreamError as exc:
            raise Unscorable(MODEL_UNAVAILABLE, exc) from exc
        try:
            encoded = await self.encoder.encode(
                self.feature_service or meta.feature_service,
                columns,
                n_rows,
                request_id=request.request_id,
                timeout=request.limits.encoder,
            )
        except DownstreamError as exc:
            raise Unscorable(FEATURES_UNAVAILABLE, exc) from exc
        return meta, encoded
