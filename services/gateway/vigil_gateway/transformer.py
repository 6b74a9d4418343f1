"""The inference pipeline in business terms: preprocess -> predict -> postprocess.

This is the KServe transformer role: it turns transactions into the encoder's keys and
request-time fields (preprocess), has the encoder build the vectors and the predictor score them
(predict), and turns scores and contributions into labels and reasons (postprocess). It never
raises for a dependency's trouble: a transaction it cannot score gets ``uncertain`` with
``degraded: true`` and a reason code saying why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vigil_contracts.api import ModelRef, Reason, ScoreResponse, Transaction
from vigil_contracts.request_features import NO_DEVICE_ID, request_columns
from vigil_contracts.thresholds import label_for_score

from vigil_gateway.encoder_client import EncodedVectors, EncoderClient
from vigil_gateway.errors import DownstreamError, FeatureContractMismatch
from vigil_gateway.model_catalog import ModelCatalog
from vigil_gateway.model_metadata import ModelMetadata
from vigil_gateway.policy import FEATURES_MISSING, FEATURES_STALE, policy_verdict, stored_mask
from vigil_gateway.predictor_client import Features, Inference, PredictorClient
from vigil_gateway.reasons import NO_RISK_REASON, explain

logger = logging.getLogger(__name__)

FEATURES_UNAVAILABLE = "FEATURES_UNAVAILABLE"
MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
FEATURE_CONTRACT_MISMATCH = "FEATURE_CONTRACT_MISMATCH"
TIMEOUT = "TIMEOUT"

DEGRADED_TEXT = {
    FEATURES_UNAVAILABLE: "the transaction's features could not be fetched, so it was not scored",
    FEATURES_STALE: "some of the card, merchant or device history is out of date, so a score would not be reliable",
    FEATURES_MISSING: "too little card, merchant or device history is available to score reliably",
    MODEL_UNAVAILABLE: "the fraud model could not be reached, so the transaction was not scored",
    FEATURE_CONTRACT_MISMATCH: "the model and the feature encoder disagree on the features, so the transaction was not scored",
    TIMEOUT: "scoring did not finish within its time budget",
}


class _Unscorable(Exception):
    """No transaction of the request can be scored: the reason code and the dependency's error."""

    def __init__(self, code: str, error: DownstreamError) -> None:
        super().__init__(code)
        self.code = code
        self.error = error


@dataclass(frozen=True)
class Limits:
    """Time limits of one request, in seconds; None means no limit."""

    budget: float | None
    encoder: float | None
    predictor: float | None


def to_encode_columns(transactions: Sequence[Transaction]) -> dict[str, dict[str, list[Any]]]:
    """Business -> data domain: the entity keys and the request-time fields of transactions, as
    the columns of an ``EncodeColumnsRequest`` (row ``i`` is transaction ``i``)."""
    has_device = [t.device_id is not None for t in transactions]
    return {
        "entities": {
            "card_id": [t.card_id for t in transactions],
            "merchant_id": [t.merchant_id for t in transactions],
            "device_id": [t.device_id if t.device_id is not None else NO_DEVICE_ID for t in transactions],
        },
        # An absent country is sent empty, which the shared transform reads as unknown (the
        # country-mismatch feature is then missing, as in training), never as a mismatch.
        "request": request_columns(
            [t.amount for t in transactions], [t.timestamp for t in transactions],
            [t.channel for t in transactions], [t.country or "" for t in transactions], has_device,
        ),
    }


def to_encode_row(transaction: Transaction) -> dict[str, Any]:
    """One transaction as an ``EncodeRow`` (the row form of :func:`to_encode_columns`)."""
    columns = to_encode_columns([transaction])
    return {part: {name: values[0] for name, values in fields.items()}
            for part, fields in columns.items()}


_new_object = object.__new__
_set_attribute = object.__setattr__
_NOT_FRAUD_FIELDS = frozenset(("transaction_id", "label", "score", "reasons", "model", "degraded",
                               "request_id"))


def _not_fraud(transaction_id: str, score: float, model: ModelRef, request_id: str) -> ScoreResponse:
    """``ScoreResponse(transaction_id=..., label="not_fraud", score=..., reasons=[NO_RISK_REASON],
    model=..., degraded=False, request_id=...)``, the very object (fields, fields set) its
    constructor makes, without validating again what is valid by construction: a batch makes
    one per legitimate transaction, and validation was half the cost of each."""
    answer = _new_object(ScoreResponse)
    _set_attribute(answer, "__dict__", {
        "transaction_id": transaction_id, "label": "not_fraud", "score": float(score),
        "reasons": [NO_RISK_REASON], "model": model, "degraded": False,
        "request_id": request_id, "cached": False,
    })
    _set_attribute(answer, "__pydantic_fields_set__", set(_NOT_FRAUD_FIELDS))
    _set_attribute(answer, "__pydantic_extra__", None)
    _set_attribute(answer, "__pydantic_private__", None)
    return answer


class FraudTransformer:
    def __init__(
        self,
        encoder: EncoderClient,
        predictor: PredictorClient,
        catalog: ModelCatalog,
        *,
        feature_service: str | None,
        max_reasons: int,
    ) -> None:
        self.encoder = encoder
        self.predictor = predictor
        self.catalog = catalog
        self.feature_service = feature_service
        self.max_reasons = max_reasons
        self._model_refs: dict[tuple[str, str], ModelRef] = {}

    async def score(
        self,
        transactions: Sequence[Transaction],
        *,
        request_id: str,
        deadline: float | None,
        limits: Limits,
        wanted: Awaitable[Sequence[int]] | None = None,
    ) -> list[ScoreResponse | None]:
        """One answer per transaction, in order; ``deadline`` is on the event loop's clock.

        ``wanted`` (awaited while the encoder works) says which transactions need an answer;
        the others get None. Without it, all do. Should the vectors come first, every
        transaction is scored while ``wanted`` is awaited: a stall there does not hold the
        predictor's call back.
        """
        try:
            async with asyncio.timeout_at(deadline):
                return await self._pipeline(transactions, request_id, limits, wanted)
        except TimeoutError:
            logger.warning(
                "scoring budget exceeded",
                extra={"request_id": request_id, "transactions": len(transactions), "budget_s": limits.budget},
            )
            return [self.degraded(t, TIMEOUT, request_id) for t in transactions]

    async def _encode(
        self, transactions: Sequence[Transaction], request_id: str, limits: Limits
    ) -> tuple[ModelMetadata, EncodedVectors]:
        try:
            meta = await self.catalog.ensure_current(limits.predictor, request_id)
        except DownstreamError as exc:
            raise _Unscorable(MODEL_UNAVAILABLE, exc) from exc
        try:
            return meta, await self.preprocess(transactions, meta, request_id, limits)
        except DownstreamError as exc:
            raise _Unscorable(FEATURES_UNAVAILABLE, exc) from exc

    async def _pipeline(
        self,
        transactions: Sequence[Transaction],
        request_id: str,
        limits: Limits,
        wanted: Awaitable[Sequence[int]] | None,
    ) -> list[ScoreResponse | None]:
        answers: list[ScoreResponse | None] = [None] * len(transactions)
        asking: asyncio.Future[Sequence[int]] | None = None
        ahead = False  # scoring every transaction before ``wanted`` has said which
        if wanted is None:
            rows: Sequence[int] = range(len(transactions))
            encoding = None
        else:
            # The encoding task is made first, so its request goes out first: the encoder's
            # is the call on the critical path. Its outcome is read below, unless every
            # transaction was settled without it: then an error it ended with is of no
            # interest (and must not be logged as unretrieved).
            encoding = asyncio.ensure_future(self._encode(transactions, request_id, limits))
            encoding.add_done_callback(lambda task: task.cancelled() or task.exception())
            asking = asyncio.ensure_future(wanted)
            try:
                await asyncio.wait((encoding, asking), return_when=asyncio.FIRST_COMPLETED)
                if asking.done() or encoding.exception() is not None:
                    rows = await asking
                else:
                    # The vectors are in before ``wanted`` has answered (the decision store
                    # stalled): every transaction goes on to the predictor meanwhile, and the
                    # answers of those it settles otherwise are dropped once it has answered.
                    rows, ahead = range(len(transactions)), True
            except BaseException:
                encoding.cancel()
                asking.cancel()
                raise
            if not rows:
                encoding.cancel()
                return answers
        try:
            try:
                meta, encoded = await (encoding or self._encode(transactions, request_id, limits))
            except _Unscorable as exc:
                for i, answer in zip(rows, self._all_degraded(
                        [transactions[i] for i in rows], exc.code, request_id, exc.error)):
                    answers[i] = answer
                return answers
            finally:
                if encoding is not None and not encoding.done():
                    encoding.cancel()
            await self._answer_rows(transactions, rows, meta, encoded, answers, request_id, limits)
            if ahead:
                assert asking is not None
                keep = set(await asking)
                for i in rows:
                    if i not in keep:
                        answers[i] = None
        finally:
            if asking is not None and not asking.done():
                asking.cancel()
        return answers

    async def _answer_rows(
        self,
        transactions: Sequence[Transaction],
        rows: Sequence[int],
        meta: ModelMetadata,
        encoded: EncodedVectors,
        answers: list[ScoreResponse | None],
        request_id: str,
        limits: Limits,
    ) -> None:
        """Fill in ``answers`` for ``rows``: degraded by the serving policy, or scored."""
        stored = stored_mask(encoded.feature_names)
        todo: list[int] = []
        for i in rows:
            verdict = policy_verdict(encoded.rows[i], stored, meta.serving_policy)
            if verdict is None:
                todo.append(i)
            else:
                answers[i] = self.degraded(transactions[i], verdict, request_id)
        if todo:
            try:
                inference, scored_by = await self.predict(encoded, todo, request_id, limits)
            except DownstreamError as exc:
                code = MODEL_UNAVAILABLE
                if isinstance(exc, FeatureContractMismatch):
                    code = FEATURE_CONTRACT_MISMATCH
                    self.catalog.refresh_soon()  # most likely the model changed under us
                scored = self._all_degraded([transactions[i] for i in todo], code, request_id, exc)
            else:
                scored = self.postprocess_many(transactions, encoded, todo, inference, scored_by, request_id)
            for i, answer in zip(todo, scored):
                answers[i] = answer
        assert all(answers[i] is not None for i in rows), "a transaction was left without an answer"

    async def preprocess(
        self, transactions: Sequence[Transaction], meta: ModelMetadata, request_id: str, limits: Limits
    ) -> EncodedVectors:
        """Business -> data -> representation: keys and request fields, encoded into vectors."""
        return await self.encoder.encode(
            self.feature_service or meta.feature_service,
            to_encode_columns(transactions),
            len(transactions),
            request_id=request_id,
            timeout=limits.encoder,
        )

    async def predict(
        self, encoded: EncodedVectors, rows: Sequence[int], request_id: str, limits: Limits
    ) -> tuple[Inference, ModelMetadata]:
        """Score the chosen rows; also the metadata of the version that scored them.

        Reasons are given for flagged transactions only, so the predictor explains (computes
        contributions for) only the rows at or above the current version's ``suspicious``
        threshold: most of its cost is in those contributions.
        """
        vectors = encoded.features(rows)
        current = self.catalog.current
        inference = await self.predictor.infer(
            self.catalog.name, self.catalog.pinned_version, vectors,
            feature_contract=encoded.feature_contract,
            request_id=request_id, timeout=limits.predictor,
            contributions_min_score=current.thresholds.suspicious if current else None,
        )
        scored_by = await self.catalog.for_version(inference.model_version, limits.predictor, request_id)
        threshold = scored_by.thresholds.suspicious
        unexplained = [
            k for k, (score, contributions) in enumerate(zip(inference.scores, inference.contributions))
            if contributions is None and score >= threshold
        ]
        if unexplained:
            inference = await self._explain(inference, vectors, unexplained, encoded, request_id, limits)
        return inference, scored_by

    async def _explain(
        self,
        inference: Inference,
        vectors: Features,
        unexplained: list[int],
        encoded: EncodedVectors,
        request_id: str,
        limits: Limits,
    ) -> Inference:
        """Contributions for flagged rows the predictor was not asked to explain.

        Only when the version that scored flags lower than the one the gateway asked with (the
        default moved on, or replicas disagree during a rollout): one more call, to that very
        version. If it fails, those transactions keep their score and label with the baseline
        reason rather than being degraded.
        """
        try:
            extra = await self.predictor.infer(
                self.catalog.name, inference.model_version, vectors.take(unexplained),
                feature_contract=encoded.feature_contract,
                request_id=request_id, timeout=limits.predictor,
            )
        except DownstreamError as exc:
            logger.warning(
                "contributions of flagged transactions not fetched",
                extra={"request_id": request_id, "transactions": len(unexplained),
                       "error": exc.detail, "kind": exc.kind},
            )
            return inference
        contributions = list(inference.contributions)
        for k, row in zip(unexplained, extra.contributions):
            contributions[k] = row
        return replace(inference, contributions=contributions)

    def postprocess(
        self,
        transaction: Transaction,
        encoded: EncodedVectors,
        row: int,
        inference: Inference,
        k: int,
        meta: ModelMetadata,
        request_id: str,
    ) -> ScoreResponse:
        """Prediction -> business answer: label by the scoring version's thresholds, reasons."""
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

    def postprocess_many(
        self,
        transactions: Sequence[Transaction],
        encoded: EncodedVectors,
        rows: Sequence[int],
        inference: Inference,
        meta: ModelMetadata,
        request_id: str,
    ) -> list[ScoreResponse]:
        """:meth:`postprocess` of each scored row (``rows[k]`` was scored ``k``-th), with what
        the rows share read once. A ``not_fraud`` answer, most of them, is made right here: its
        label needs one comparison and its reasons are always the same one."""
        suspicious = meta.thresholds.suspicious  # highly_suspicious is never below it
        model = self._model_ref(inference.model_name, inference.model_version)
        answers = []
        for k, (i, score) in enumerate(zip(rows, inference.scores)):
            if score < suspicious:
                answers.append(_not_fraud(transactions[i].transaction_id, round(score, 6), model,
                                          request_id))
            else:
                answers.append(
                    self.postprocess(transactions[i], encoded, i, inference, k, meta, request_id))
        return answers

    def _model_ref(self, name: str, version: str) -> ModelRef:
        """The answers' ``model``, made once per version (answers only ever read it)."""
        ref = self._model_refs.get((name, version))
        if ref is None:
            ref = ModelRef(name=name, version=version)
            if len(self._model_refs) < 64:
                self._model_refs[(name, version)] = ref
        return ref

    def degraded(self, transaction: Transaction, code: str, request_id: str) -> ScoreResponse:
        return ScoreResponse(
            transaction_id=transaction.transaction_id,
            label="uncertain",
            score=None,
            reasons=[Reason(code=code, text=DEGRADED_TEXT[code])],
            model=self.catalog.model_ref(),
            degraded=True,
            request_id=request_id,
        )

    def _all_degraded(
        self, transactions: Sequence[Transaction], code: str, request_id: str, exc: DownstreamError
    ) -> list[ScoreResponse]:
        logger.warning(
            "transactions not scored",
            extra={"request_id": request_id, "reason": code, "error": exc.detail, "kind": exc.kind},
        )
        return [self.degraded(t, code, request_id) for t in transactions]
