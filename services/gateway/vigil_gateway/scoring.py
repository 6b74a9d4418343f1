"""Scoring requests: per-item validation, idempotent replays, the time budget, decision metrics.

Routes hand this module what they parsed; it answers with business objects or raises a
``GatewayError``. Single and batch scoring share one path, so a batch item is treated exactly
like the same transaction sent alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeAlias

from pydantic import TypeAdapter, ValidationError
from vigil_contracts.api import ScoreResponse, Transaction

from vigil_gateway.decisions import (
    DecisionStore, StoredDecision, decisions_json, encode_entries, payload_hash,
)
from vigil_gateway.errors import BatchTooLarge, DecisionConflict, GatewayError, InvalidTransaction
from vigil_gateway.metrics import UNKNOWN_VERSION, GatewayMetrics
from vigil_gateway.settings import GatewaySettings, seconds_or_none
from vigil_gateway.transformer import FraudTransformer, Limits
from vigil_gateway.validation import invalid_params, summary

logger = logging.getLogger(__name__)

Outcome: TypeAlias = ScoreResponse | GatewayError


class Outcomes(list):  # type: ignore[type-arg]
    """Outcomes in order, and the stored part of each fresh answer already serialised (by
    ``id`` of the answer; see ``decisions.answer_json``): serialised once for the store and
    the response."""

    def __init__(self, outcomes: Sequence[Outcome], decisions: dict[int, bytes]) -> None:
        super().__init__(outcomes)
        self.decisions = decisions


# All the items of a batch in one call; built once (a TypeAdapter compiles its validator).
_TRANSACTIONS = TypeAdapter(list[Transaction])


def _conflict(transaction_id: str) -> DecisionConflict:
    return DecisionConflict(
        f"transaction_id {transaction_id!r} was already scored with a different payload; "
        "a changed transaction needs a new transaction_id"
    )


def validate_items(items: Sequence[Any]) -> list[Transaction | InvalidTransaction]:
    """Each item as a Transaction, or the problem with it, named as in a batch
    (``transactions.3.amount``): exactly what validating each item on its own gives."""
    try:
        return list(_TRANSACTIONS.validate_python(items))
    except ValidationError as exc:
        bad = {error["loc"][0] for error in exc.errors(include_url=False, include_input=False)}
    out: list[Transaction | InvalidTransaction] = []
    good = [item for i, item in enumerate(items) if i not in bad]
    valid = iter(_TRANSACTIONS.validate_python(good))
    for i, item in enumerate(items):
        if i not in bad:
            out.append(next(valid))
            continue
        try:
            out.append(Transaction.model_validate(item))  # not expected to pass; kept exact
        except ValidationError as exc:
            params = invalid_params(exc.errors(), ("transactions", i))
            out.append(InvalidTransaction(summary(params), invalid_params=params))
    return out


class ScoringService:
    def __init__(
        self,
        transformer: FraudTransformer,
        store: DecisionStore,
        metrics: GatewayMetrics,
        settings: GatewaySettings,
    ) -> None:
        self.transformer = transformer
        self.store = store
        self.metrics = metrics
        self.max_batch = settings.max_batch
        self.single_limits = Limits(
            budget=seconds_or_none(settings.total_budget_s),
            encoder=seconds_or_none(settings.encoder_timeout_s),
            predictor=seconds_or_none(settings.predictor_timeout_s),
        )
        self.batch_limits = Limits(
            budget=seconds_or_none(settings.batch_total_budget_s),
            encoder=seconds_or_none(settings.batch_hop_timeout_s),
            predictor=seconds_or_none(settings.batch_hop_timeout_s),
        )

    async def score_one(self, transaction: Transaction, *, request_id: str, rescore: bool) -> ScoreResponse:
        [outcome] = await self._score([transaction], request_id, rescore, self.single_limits)
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    async def score_batch(
        self, items: Sequence[Any], *, request_id: str, rescore: bool
    ) -> Outcomes:
        """One outcome per item, in order: its answer, or the error it alone would have had."""
        if len(items) > self.max_batch:
            raise BatchTooLarge(
                f"{len(items)} transactions is more than the {self.max_batch} allowed per batch"
            )
        self.metrics.batch_size.observe(len(items))
        outcomes: list[Outcome | None] = [None] * len(items)
        unique: list[Transaction] = []
        unique_hash: list[str] = []
        slot_of: dict[str, int] = {}  # transaction_id -> index in unique
        copies: list[tuple[int, int]] = []  # (item index, index in unique)
        for i, transaction in enumerate(validate_items(items)):
            if isinstance(transaction, InvalidTransaction):
                outcomes[i] = transaction
                continue
            digest = payload_hash(transaction)
            known = slot_of.get(transaction.transaction_id)
            if known is None:
                slot_of[transaction.transaction_id] = len(unique)
                copies.append((i, len(unique)))
                unique.append(transaction)
                unique_hash.append(digest)
            elif unique_hash[known] == digest:
                copies.append((i, known))  # a repeat in the same batch is one decision
            else:
                outcomes[i] = _conflict(transaction.transaction_id)
        scored = await self._score(unique, request_id, rescore, self.batch_limits, unique_hash)
        for i, k in copies:
            outcomes[i] = scored[k]
        assert all(o is not None for o in outcomes), "an item was left without an outcome"
        return Outcomes(outcomes, scored.decisions)  # type: ignore[arg-type]

    async def _score(
        self,
        transactions: Sequence[Transaction],
        request_id: str,
        rescore: bool,
        limits: Limits,
        hashes: Sequence[str] | None = None,
    ) -> Outcomes:
        if not transactions:
            return Outcomes([], {})
        loop = asyncio.get_running_loop()
        deadline = None if limits.budget is None else loop.time() + limits.budget
        hashes = list(hashes) if hashes is not None else [payload_hash(t) for t in transactions]
        outcomes: list[Outcome | None] = [None] * len(transactions)
        decisions: dict[int, bytes] = {}

        async def to_score() -> list[int]:
            """Which transactions need a decision: the store is asked while the encoder works
            (a replay or a conflict is rare; waiting for the store first would put a Redis round
            trip in front of every transaction)."""
            stored: dict[str, StoredDecision] = {}
            try:
                async with asyncio.timeout_at(deadline):
                    stored = await self.store.get_many([t.transaction_id for t in transactions])
            except TimeoutError:
                pass  # the transformer will find the budget spent and answer TIMEOUT
            tally = {"miss": 0, "conflict": 0, "hit": 0}
            todo: list[int] = []
            for i, transaction in enumerate(transactions):
                previous = stored.get(transaction.transaction_id) if stored else None
                if previous is None:
                    tally["miss"] += 1
                    todo.append(i)
                elif previous.payload_hash != hashes[i]:
                    tally["conflict"] += 1
                    outcomes[i] = _conflict(transaction.transaction_id)
                elif rescore:
                    todo.append(i)
                else:
                    tally["hit"] += 1
                    outcomes[i] = previous.replay(request_id)
            for outcome, count in tally.items():
                if count:
                    self.metrics.decision_store.labels(outcome).inc(count)
            return todo

        answers = await self.transformer.score(
            transactions, request_id=request_id, deadline=deadline, limits=limits,
            wanted=to_score(),
        )
        # What the store did not settle (all of it if the budget ran out before it answered).
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if todo:
            fresh = [answers[i] for i in todo]
            assert all(a is not None for a in fresh), "a transaction to score has no answer"
            self._count(fresh)  # type: ignore[arg-type]
            # Uncertain answers are not kept: a retry deserves a real decision.
            kept = [(i, answer) for i, answer in zip(todo, fresh) if not answer.degraded]  # type: ignore[union-attr]
            serialised = decisions_json([answer for _, answer in kept])  # type: ignore[misc]
            for (_, answer), decision in zip(kept, serialised):
                decisions[id(answer)] = decision
            entries = encode_entries(serialised, [hashes[i] for i, _ in kept], request_id)
            first_writers = await self.store.put_many(
                [(transactions[i].transaction_id, entry) for (i, _), entry in zip(kept, entries)],
                overwrite=rescore,
            )
            for i, answer in zip(todo, fresh):
                winner = first_writers.get(transactions[i].transaction_id) if first_writers else None
                if winner is None:
                    outcomes[i] = answer
                elif winner.payload_hash == hashes[i]:
                    outcomes[i] = winner.replay(request_id)  # another replica decided first
                else:
                    outcomes[i] = _conflict(transactions[i].transaction_id)
        assert all(o is not None for o in outcomes), "a transaction was left without an outcome"
        return Outcomes(outcomes, decisions)  # type: ignore[arg-type]

    def _count(self, answers: Sequence[ScoreResponse]) -> None:
        decisions: Counter[tuple[str, str]] = Counter()
        degraded: Counter[tuple[str, str]] = Counter()
        for answer in answers:
            version = answer.model.version or UNKNOWN_VERSION
            decisions[(answer.label, version)] += 1
            if answer.degraded:
                degraded[(answer.reasons[0].code, version)] += 1
        for labels, count in decisions.items():
            self.metrics.decisions.labels(*labels).inc(count)
        for labels, count in degraded.items():
            self.metrics.degraded.labels(*labels).inc(count)
