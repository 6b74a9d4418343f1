"""The gateway's request path, in one place, top to bottom:

    authenticate (the route, before the body is read) -> admit -> rate limit
             -> validate -> idempotency.begin -> preprocess -> encode -> policy -> safeguards
             -> predict -> postprocess -> idempotency.settle -> record -> answer

Each stage is a module with one entry point that knows nothing of the others; this module only
composes them (it is KServe's preprocess -> predict -> postprocess, in business terms). Routes
hand it what they parsed and get business objects back, or a ``GatewayError``. Single and batch
scoring share the same stages, so a batch item is treated exactly like the same transaction
sent alone. A dependency's trouble is never an error here: a transaction that cannot be scored
is answered ``uncertain`` with a reason code (see ``uncertain.py``).

One concurrency: the decision store is asked which transactions need a fresh decision
(``Claim.wanted``) while the encoder works, its request sent first (the encoder's is the call
on the critical path). Should the vectors come first, every transaction goes on to the predictor
meanwhile, and the answers of those the store then settles are dropped: a stalled store delays
a request only by what it outlasts the predictor's call.

A request's time budget counts from its arrival (when the server read its first bytes), not
from when it reaches this module, and never exceeds the caller's own deadline
(``X-Request-Timeout-Ms``): time spent waiting in front of the gateway is the caller's time too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from vigil_contracts.api import ScoreResponse, Transaction
from vigil_gateway import preprocess, validation
from vigil_gateway.authenticate import Caller
from vigil_gateway.context import DecisionTrace, Limits, ScoringRequest
from vigil_gateway.encode import Encode
from vigil_gateway.errors import GatewayError
from vigil_gateway.idempotency import Idempotency, Outcomes
from vigil_gateway.limits import Admission, RateLimiter
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.policy import screen
from vigil_gateway.postprocess import Postprocess
from vigil_gateway.predict import Predict
from vigil_gateway.record import Record
from vigil_gateway.safeguards import Safeguards
from vigil_gateway.settings import GatewaySettings, seconds_or_none
from vigil_gateway.uncertain import TIMEOUT, Unscorable

logger = logging.getLogger(__name__)

Answers = list[ScoreResponse | None]


class ScoringPipeline:
    def __init__(
        self,
        *,
        admit: Admission,
        rate_limit: RateLimiter,
        idempotency: Idempotency,
        encode: Encode,
        safeguards: Safeguards,
        predict: Predict,
        postprocess: Postprocess,
        record: Record,
        metrics: GatewayMetrics,
        settings: GatewaySettings,
    ) -> None:
        self.admit = admit
        self.rate_limit = rate_limit
        self.idempotency = idempotency
        self.encode = encode
        self.safeguards = safeguards
        self.predict = predict
        self.postprocess = postprocess
        self.record = record
        self.metrics = metrics
        self.horizon_s = seconds_or_none(settings.max_transaction_age_s)
        self.lead_s = seconds_or_none(settings.max_features_lead_s)
        self.max_batch = settings.max_batch
        self.single_limits = single_limits(settings)
        self.batch_limits = batch_limits(settings)

    async def score_one(
        self,
        transaction: Transaction,
        *,
        caller: Caller,
        request_id: str,
        rescore: bool,
        arrival: float | None = None,
        timeout_s: float | None = None,
    ) -> ScoreResponse:
        """The answer to one (validated) transaction, or the ``GatewayError`` it gets.

        ``arrival``: when the request arrived (``time.monotonic()``; None: now); ``timeout_s``:
        the caller's own time limit, which the budget never exceeds."""
        request = self._request(
            request_id,
            rescore,
            self.single_limits,
            write_behind=True,
            arrival=arrival,
            timeout_s=timeout_s,
            key_id=caller.key_id,
        )
        with self.admit(caller, self._remaining(request)):
            await self.rate_limit(caller, 1)
            self.metrics.key_transactions.labels(caller.key_id).inc()
            [outcome] = await self._decide([transaction], request)
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    async def score_batch(
        self,
        items: Sequence[Any],
        *,
        caller: Caller,
        request_id: str,
        rescore: bool,
        arrival: float | None = None,
        timeout_s: float | None = None,
    ) -> Outcomes:
        """One outcome per item, in order: its answer, or the error it alone would have had."""
        request = self._request(
            request_id,
            rescore,
            self.batch_limits,
            write_behind=False,
            arrival=arrival,
            timeout_s=timeout_s,
            key_id=caller.key_id,
        )
        with self.admit(caller, self._remaining(request)):
            if len(items) > self.max_batch:  # refused before it costs the caller's rate
                validation.validate_batch(items, self.max_batch)
            await self.rate_limit(caller, len(items))
            self.metrics.key_transactions.labels(caller.key_id).inc(len(items))
            checked = validation.validate_batch(items, self.max_batch)
            self.metrics.batch_size.observe(len(items))
            return await self._decide(checked, request)

    async def _decide(
        self, items: Sequence[Transaction | GatewayError], request: ScoringRequest
    ) -> Outcomes:
        claim = self.idempotency.begin(items, request)
        trace = DecisionTrace(started=time.perf_counter())
        answers = (
            await self._answers(claim.transactions, request, claim.wanted, trace)
            if claim.transactions
            else []
        )
        outcomes = await claim.settle(answers)
        trace.finished = time.perf_counter()
        self.record(outcomes.fresh, claim.transactions, trace, request.request_id, request.key_id)
        return outcomes

    async def _answers(
        self,
        transactions: Sequence[Transaction],
        request: ScoringRequest,
        wanted: Callable[[], Awaitable[Sequence[int]]],
        trace: DecisionTrace,
    ) -> Answers:
        """preprocess -> encode -> policy -> safeguards -> predict -> postprocess, within the time budget: one
        answer per transaction the claim wants (None for the others)."""
        try:
            async with asyncio.timeout_at(request.deadline):
                return await self._infer(transactions, request, wanted, trace)
        except TimeoutError:
            logger.warning(
                "scoring budget exceeded",
                extra={
                    "request_id": request.request_id,
                    "transactions": len(transactions),
                    "budget_s": request.limits.budget,
                },
            )
            return [
                self.postprocess.uncertain(t, TIMEOUT, request.request_id) for t in transactions
            ]

    async def _infer(
        self,
        transactions: Sequence[Transaction],
        request: ScoringRequest,
        wanted: Callable[[], Awaitable[Sequence[int]]],
        trace: DecisionTrace,
    ) -> Answers:
        answers: Answers = [None] * len(transactions)
        columns = preprocess.to_encode_columns(transactions)
        # The encoding task is made first, so that its request goes out first. Its outcome is
        # read below, unless the store settled every transaction without it: then an error it
        # ended with is of no interest (and must not be logged as unretrieved).
        encoding = asyncio.ensure_future(self.encode(columns, len(transactions), request))
        encoding.add_done_callback(lambda task: task.cancelled() or task.exception())
        asking = asyncio.ensure_future(wanted())
        ahead = False  # scoring every transaction before the store has said which
        try:
            try:
                await asyncio.wait((encoding, asking), return_when=asyncio.FIRST_COMPLETED)
                if asking.done() or encoding.exception() is not None:
                    rows: Sequence[int] = await asking
                else:
                    rows, ahead = range(len(transactions)), True
            except BaseException:
                encoding.cancel()
                raise
            if not rows:
                encoding.cancel()
                return answers
            try:
                meta, encoded = await encoding
                trace.encoded = encoded
                trace.encode_ms = round(1000 * (time.perf_counter() - trace.started), 3)
            except Unscorable as exc:
                for i, answer in zip(
                    rows,
                    self.postprocess.failed(
                        [transactions[i] for i in rows], exc.code, request.request_id, exc.error
                    ),
                    strict=True,
                ):
                    answers[i] = answer
                return answers
            finally:
                if not encoding.done():
                    encoding.cancel()
            now = time.time()
            scorable, held = screen(
                encoded,
                rows,
                meta.serving_policy,
                epochs=columns["request"]["txn_epoch"],
                not_before=None if self.horizon_s is None else now - self.horizon_s,
                now=now,
                max_lead_s=self.lead_s,
            )
            checked = self.safeguards(encoded, rows, meta)
            for i, code in held.items():
                verdict = checked.verdicts.get(i)
                answers[i] = self.postprocess.uncertain(
                    transactions[i],
                    code,
                    request.request_id,
                    checked.ref(i),
                    verdict.reasons if verdict is not None else (),
                )
            if scorable:
                predicting = time.perf_counter()
                try:
                    inference, scored_by = await self.predict(encoded, scorable, request)
                    trace.predict_ms = round(1000 * (time.perf_counter() - predicting), 3)
                except Unscorable as exc:
                    scored = self.postprocess.failed(
                        [transactions[i] for i in scorable], exc.code, request.request_id, exc.error
                    )
                else:
                    scored = self.postprocess.answers(
                        transactions,
                        encoded,
                        scorable,
                        inference,
                        scored_by,
                        checked,
                        request.request_id,
                    )
                for i, answer in zip(scorable, scored, strict=True):
                    answers[i] = answer
            if ahead:
                keep = set(await asking)
                for i in rows:
                    if i not in keep:
                        answers[i] = None
        finally:
            if not asking.done():
                asking.cancel()
        return answers

    @staticmethod
    def _request(
        request_id: str,
        rescore: bool,
        limits: Limits,
        *,
        write_behind: bool,
        arrival: float | None,
        timeout_s: float | None,
        key_id: str,
    ) -> ScoringRequest:
        budget = limits.budget
        if timeout_s is not None:
            budget = timeout_s if budget is None else min(budget, timeout_s)
        deadline = None
        if budget is not None:
            waited = 0.0 if arrival is None else max(0.0, time.monotonic() - arrival)
            deadline = asyncio.get_running_loop().time() + budget - waited
        return ScoringRequest(
            request_id=request_id,
            rescore=rescore,
            limits=limits,
            deadline=deadline,
            write_behind=write_behind,
            key_id=key_id,
        )

    @staticmethod
    def _remaining(request: ScoringRequest) -> float | None:
        if request.deadline is None:
            return None
        return request.deadline - asyncio.get_running_loop().time()


def single_limits(settings: GatewaySettings) -> Limits:
    return Limits(
        budget=seconds_or_none(settings.total_budget_s),
        encoder=seconds_or_none(settings.encoder_timeout_s),
        predictor=seconds_or_none(settings.predictor_timeout_s),
    )


def batch_limits(settings: GatewaySettings) -> Limits:
    return Limits(
        budget=seconds_or_none(settings.batch_total_budget_s),
        encoder=seconds_or_none(settings.batch_hop_timeout_s),
        predictor=seconds_or_none(settings.batch_hop_timeout_s),
    )
