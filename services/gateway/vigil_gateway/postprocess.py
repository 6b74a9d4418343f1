"""Stage *postprocess*: prediction -> business answer. A score is labelled by the thresholds of
the version that produced it (the pair of the transaction's segment where that version has one,
else its global pair), raised where a safeguard asks for more caution, and a flagged
transaction's fired rules and largest contributions are worded as reasons; a transaction that
could not be scored is answered ``uncertain`` with a reason code."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vigil_contracts.api import ModelRef, Reason, SafeguardsRef, ScoreResponse, Transaction
from vigil_gateway.encoder_client import EncodedVectors
from vigil_gateway.errors import DownstreamError
from vigil_gateway.fast_answers import not_fraud
from vigil_gateway.model_catalog import ModelCatalog
from vigil_gateway.model_metadata import ModelMetadata
from vigil_gateway.predictor_client import Inference
from vigil_gateway.reasons import NO_RISK_REASON, explain
from vigil_gateway.safeguards import CAUTION, Checked
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
        checked: Checked,
        request_id: str,
    ) -> list[ScoreResponse]:
        """:meth:`answer` of each scored row (``rows[k]`` was scored ``k``-th). A ``not_fraud``
        answer no rule questions, most of them, needs one comparison (below every pair's
        ``suspicious``; else below its own segment's) and always has the same one reason."""
        labelling = meta.labelling
        lowest = labelling.lowest_suspicious  # a highly_suspicious is never below its suspicious
        model = self._model_ref(inference.model_name, inference.model_version)
        verdicts, clear = checked.verdicts, checked.clear
        answers = []
        for k, (i, score) in enumerate(zip(rows, inference.scores, strict=True)):
            if i not in verdicts and (
                score < lowest or score < labelling.pair_for(transactions[i].__dict__)["suspicious"]
            ):
                answers.append(
                    not_fraud(
                        transactions[i].transaction_id,
                        round(score, 6),
                        NO_RISK_REASON,
                        model,
                        clear,
                        request_id,
                    )
                )
            else:
                answers.append(
                    self.answer(
                        transactions[i], encoded, i, inference, k, meta, checked, request_id
                    )
                )
        return answers

    def answer(
        self,
        transaction: Transaction,
        encoded: EncodedVectors,
        row: int,
        inference: Inference,
        k: int,
        meta: ModelMetadata,
        checked: Checked,
        request_id: str,
    ) -> ScoreResponse:
        """One answer: label by the scoring version's thresholds for the transaction's segment,
        raised to what the fired safeguards ask for; their reasons first, then the model's (if it
        flagged it too)."""
        score = inference.scores[k]
        label = meta.labelling.label(score, transaction.__dict__)
        reasons = explain(
            label,
            encoded.feature_names,
            # A not_fraud answer names no feature: its values are not even read.
            () if label == "not_fraud" else encoded.rows[row].values,
            inference.contributions[k],
            currency=transaction.currency,
            paid=transaction.amount,
            device_present=transaction.device_id is not None,
            max_reasons=self.max_reasons,
        )
        verdict = checked.verdicts.get(row)
        safeguards = checked.clear
        if verdict is not None:
            if CAUTION[verdict.at_least] > CAUTION[label]:
                label = verdict.at_least
            reasons = verdict.reasons + [r for r in reasons if r is not NO_RISK_REASON]
            safeguards = verdict.ref
        return ScoreResponse(
            transaction_id=transaction.transaction_id,
            label=label,
            score=round(score, 6),
            reasons=reasons,
            model=self._model_ref(inference.model_name, inference.model_version),
            degraded=False,
            safeguards=safeguards,
            request_id=request_id,
        )

    def uncertain(
        self,
        transaction: Transaction,
        code: str,
        request_id: str,
        safeguards: SafeguardsRef | None = None,
        rule_reasons: Sequence[Reason] = (),
    ) -> ScoreResponse:
        """The answer of a transaction that was not scored, for the reason ``code`` (with what
        the safeguards said, when its features were there to check)."""
        return ScoreResponse(
            transaction_id=transaction.transaction_id,
            label="uncertain",
            score=None,
            reasons=[Reason(code=code, text=TEXT[code]), *rule_reasons],
            model=self.catalog.model_ref(),
            degraded=is_degraded(code),
            safeguards=safeguards,
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
