"""Stage *predict*: the predictor scores the vectors (Open Inference Protocol V2) and explains
the flagged ones (per-feature contributions, from which the reasons are worded)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from vigil_gateway.context import ScoringRequest
from vigil_gateway.encoder_client import EncodedVectors
from vigil_gateway.errors import DownstreamError, FeatureContractMismatch
from vigil_gateway.model_catalog import ModelCatalog
from vigil_gateway.model_metadata import ModelMetadata
from vigil_gateway.predictor_client import Features, Inference, PredictorClient
from vigil_gateway.uncertain import FEATURE_CONTRACT_MISMATCH, MODEL_UNAVAILABLE, Unscorable

logger = logging.getLogger(__name__)


class Predict:
    def __init__(self, predictor: PredictorClient, catalog: ModelCatalog) -> None:
        self.predictor = predictor
        self.catalog = catalog

    async def __call__(
        self, encoded: EncodedVectors, rows: Sequence[int], request: ScoringRequest
    ) -> tuple[Inference, ModelMetadata]:
        """Scores of the chosen rows (``rows[k]`` scored ``k``-th), and the metadata of the
        version that scored them; :class:`Unscorable` when the predictor fails.

        Reasons are given for flagged transactions only, so the predictor explains (computes
        contributions for) only the rows at or above the current version's lowest ``suspicious``
        threshold (of the global pair and the segments' own: the lowest that can flag one of
        these rows): most of its cost is in those contributions.
        """
        vectors = encoded.features(rows)
        current = self.catalog.current
        try:
            inference = await self.predictor.infer(
                self.catalog.name,
                self.catalog.pinned_version,
                vectors,
                feature_contract=encoded.feature_contract,
                request_id=request.request_id,
                timeout=request.limits.predictor,
                contributions_min_score=current.labelling.lowest_suspicious if current else None,
            )
            scored_by = await self.catalog.for_version(
                inference.model_version, request.limits.predictor, request.request_id
            )
        except FeatureContractMismatch as exc:
            self.catalog.refresh_soon()  # most likely the model changed under us
            raise Unscorable(FEATURE_CONTRACT_MISMATCH, exc) from exc
        except DownstreamError as exc:
            raise Unscorable(MODEL_UNAVAILABLE, exc) from exc
        threshold = scored_by.labelling.lowest_suspicious
        unexplained = [
            k
            for k, (score, contributions) in enumerate(
                zip(inference.scores, inference.contributions, strict=True)
            )
            if contributions is None and score >= threshold
        ]
        if unexplained:
            inference = await self._explain(inference, vectors, unexplained, encoded, request)
        return inference, scored_by

    async def _explain(
        self,
        inference: Inference,
        vectors: Features,
        unexplained: list[int],
        encoded: EncodedVectors,
        request: ScoringRequest,
    ) -> Inference:
        """Contributions for flagged rows the predictor was not asked to explain.

        Only when the version that scored flags lower than the one the gateway asked with (the
        default moved on, or replicas disagree during a rollout): one more call, to that very
        version. If it fails, those transactions keep their score and label with the baseline
        reason rather than being degraded.
        """
        try:
            extra = await self.predictor.infer(
                self.catalog.name,
                inference.model_version,
                vectors.take(unexplained),
                feature_contract=encoded.feature_contract,
                request_id=request.request_id,
                timeout=request.limits.predictor,
            )
        except DownstreamError as exc:
            logger.warning(
                "contributions of flagged transactions not fetched",
                extra={
                    "request_id": request.request_id,
                    "transactions": len(unexplained),
                    "error": exc.detail,
                    "kind": exc.kind,
                },
            )
            return inference
        contributions = list(inference.contributions)
        for k, row in zip(unexplained, extra.contributions, strict=True):
            contributions[k] = row
        return replace(inference, contributions=contributions)
