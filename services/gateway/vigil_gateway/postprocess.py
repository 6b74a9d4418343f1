"""Stage *postprocess*: prediction -> business answer. A score is labelled by the thresholds of
the version that produced it, and a flagged transaction's largest contributions are worded as
reasons; a transaction that could not be scored is answered ``uncertain`` with a reason code."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vigil_contracts.api import ModelRef, Reason, ScoreResponse, Transaction
from vigil_contracts.thresholds import label_for_score

from vigil_gateway.encoder_client import EncodedVectors
from vigil_gateway.errors import DownstreamError
from vigil_gateway.fast_answers import not_fraud
from vigil_gateway.model_catalog import ModelCatalog
from vigil_gateway.model_metadata import ModelMetadata
from vigil_gateway.predictor_client import Inference
from vigil_gateway.reasons import NO_RISK_REASON, explain
from vigil_gateway.uncertain import TEXT, is_degraded

logger = logging.getLogger(__name__)


class Postprocess:
    def __init__(self, catalog: ModelCatalog, *, max_reasons: int) -> None:
        self.catalog = catalog
        self.max_reasons = max_reasons
        self._model_refs: dict[tuple[str, str], ModelRef] = {}

    def answers(
        self,
        transactions: Sequence[Transaction],
        encoded: EncodedVectors,
        rows: Sequence[int],
        inference: Inference,
        meta: ModelMetadata,
        request_id: str,
    ) -> list[ScoreResponse]:
        """:meth:`answer` of each scored row (``rows[k]`` was scored ``k``-th). A ``not_fraud``
        answer, most of them, needs one comparison and always has the same one reason."""
        suspicious = meta.thresholds.suspicious  # highly_suspicious is never below it
        model = self._model_ref(inference.model_name, inference.model_version)
        answers = []
        for k, (i, score) in enumerate(zip(rows, inference.scores, strict=True)):
            if score < suspicious:
                answers.append(not_fraud(transactions[i].transaction_id, round(score, 6),
                                         NO_RISK_REASON, model, request_id))
            else:
                answers.append(self.answer(transactions[i], encoded, i, inference, k, meta, request_id))
        return answers

    def answer(
        self,
        transaction: Transaction,
        encoded: EncodedVectors,
        row: int,
        inference: Inference,
        k: int,
        meta: ModelMetadata,
        request_id: str,
    ) -> ScoreResponse:
        """One answer: label by the scoring version's thresholds, reasons."""
        score = inference.scores[k]
        label = label_for_score(score, meta.thresholds.as_mapping())
        reasons = explain(
            label, encoded.feature_names,
            # A not_fraud answer names no feature: its values are not even read.
            () if label == "not_fraud" else encoded.rows[row].values,
            inference.contributions[k],
            currency=transaction.currency, device_present=transaction.device_id is not None,
            max_reasons=self.max_reasons,
        )
        return ScoreResponse(
            transaction_id=transaction.transaction_id,
            label=label,
            score=round(score, 6),
            reasons=reasons,
            model=self._model_ref(inference.model_name, inference.model_version),
            degraded=False,
            request_id=request_id,
        )

    def uncertain(self, transaction: Transaction, code: str, request_id: str) -> ScoreResponse:
        """The answer of a transaction that was not scored, for the reason ``code``."""
        return ScoreResponse(
            transaction_id=transaction.transaction_id,
            label="uncertain",
            score=None,
            reasons=[Reason(code=code, text=TEXT[code])],
            model=self.catalog.model_ref(),
            degraded=is_degraded(code),
            request_id=request_id,
        )

    def failed(
        self, transactions: Sequence[Transaction], code: str, request_id: str, exc: DownstreamError
    ) -> list[ScoreResponse]:
        """:meth:`uncertain` answers of transactions a dependency's failure left unscored."""
        logger.warning(
            "transactions not scored",
            extra={"request_id": request_id, "reason": code, "error": exc.detail, "kind": exc.kind},
        )
        return [self.uncertain(t, code, request_id) for t in transactions]

    def _model_ref(self, name: str, version: str) -> ModelRef:
        """The answers' ``model``, made once per version (answers only ever read it)."""
        ref = self._model_refs.get((name, version))
        if ref is None:
            ref = ModelRef(name=name, version=version)
            if len(self._model_refs) < 64:
                self._model_refs[(name, version)] = ref
        return ref
