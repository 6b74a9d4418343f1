"""Scoring requests: per-item validation, idempotent replays, the time budget, decision metrics.

Routes hand this module what they parsed; it answers with business objects or raises a
``GatewayError``. Single and batch scoring share one path, so a batch item is treated exactly
like the same transaction sent alone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeAlias

from pydantic import TypeAdapter, ValidationError
from vigil_contracts.api import ScoreResponse, Transaction

from vigil_gateway.decisions import (
    DecisionStore, Held, Pending, decisions_json, encode_entries, payload_hash,
)
from vigil_gateway.errors import (
    BatchTooLarge, DecisionConflict, DecisionInProgress, GatewayError, InvalidTransaction,
)
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


def _in_progress(transaction_id: str) -> DecisionInProgress:
    return DecisionInProgress(
        f"transaction_id {transaction_id!r} is being scored by another request; "
        "retry shortly to get its decision"
    )


# How long a reservation outlives the longest budget (the decision is written just after it).
_PENDING_MARGIN_S = 1.0
# Reservations when no budget is set; and how often a duplicate looks for the decision it waits
# for (doubling from the first wait to the last).
_PENDING_UNBUDGETED_S = 30.0
_WAIT_FIRST_S, _WAIT_MAX_S = 0.001, 0.016


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
        budgets = [b for b in (self.single_limits.budget, self.batch_limits.budget) if b is not None]
        self.pending_ms = int(1000 * (
            max(budgets) + _PENDING_MARGIN_S if len(budgets) == 2 else _PENDING_UNBUDGETED_S))

    async def score_one(self, transaction: Transaction, *, request_id: str, rescore: bool) -> ScoreResponse:
        [outcome] = await self._score([transaction], request_id, rescore, self.single_limits, behind=True)
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
        scored = await self._score(unique, request_id, rescore, self.batch_limits, unique_hash, behind=False)
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
        *,
        behind: bool,
    ) -> Outcomes:
        """Outcomes of ``transactions``, each decided once across requests and replicas.

        ``behind``: the decisions are written after the answer, their ids reserved beside the
        encoder's call (a single transaction: a Redis round trip less on its path). Otherwise
        (a batch) the ids are only looked up, and the decisions written before the answer,
        the first writer winning: a thousand reservations would cost Redis more CPU than the
        round trip costs the batch."""
        if not transactions:
            return Outcomes([], {})
        loop = asyncio.get_running_loop()
        deadline = None if limits.budget is None else loop.time() + limits.budget
        ids = [t.transaction_id for t in transactions]
        outcomes: list[Outcome | None] = [None] * len(transactions)
        decisions: dict[int, bytes] = {}
        waiting: list[int] = []  # reserved by a concurrent request for the same payload
        # The payload hashes and this request's reservation token are made by the store's
        # task, once the encoder's request is on its way (a single transaction's hash is a
        # tenth of a millisecond of CPU at light load, in front of the encoder otherwise);
        # ``keys`` makes them here if that task never ran.
        digests: list[str] | None = list(hashes) if hashes is not None else None
        token = b""

        def keys() -> tuple[list[str], bytes]:
            nonlocal digests, token
            if digests is None:
                digests = [payload_hash(t) for t in transactions]
            if not token:
                token = secrets.token_hex(8).encode()  # this request's reservations
            return digests, token

        async def to_score() -> list[int]:
            """Which transactions need a decision. The store is asked while the encoder works
            (a replay or a conflict is rare; waiting for the store first would put a Redis round
            trip in front of every transaction); written behind, the ids it holds nothing for
            are reserved. A rescore only looks (its decision is written over whatever is
            there)."""
            hashes, token = keys()
            held: Held = {}
            try:
                async with asyncio.timeout_at(deadline):
                    if rescore or not behind:
                        held = await self.store.get_many(ids)
                    else:
                        held = await self.store.reserve_many(ids, hashes, token, pending_ms=self.pending_ms)
            except TimeoutError:
                pass  # the transformer will find the budget spent and answer TIMEOUT
            tally = {"miss": 0, "conflict": 0, "hit": 0, "pending": 0}
            todo: list[int] = []
            for i, transaction_id in enumerate(ids):
                previous = held.get(transaction_id) if held else None
                if previous is None:
                    tally["miss"] += 1
                    todo.append(i)
                elif previous.payload_hash != hashes[i]:
                    tally["conflict"] += 1
                    outcomes[i] = _conflict(transaction_id)
                elif rescore:
                    todo.append(i)
                elif isinstance(previous, Pending):
                    # Scored here too: if its owner gives up, this answer is the one kept.
                    tally["pending"] += 1
                    todo.append(i)
                    waiting.append(i)
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
        hashes, token = keys()
        # What the store did not settle (all of it if the budget ran out before it answered).
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if not todo:
            return Outcomes(outcomes, decisions)
        fresh: list[ScoreResponse] = [answers[i] for i in todo]  # type: ignore[misc]
        assert all(a is not None for a in fresh), "a transaction to score has no answer"
        self._count(fresh)
        for i, answer in zip(todo, fresh):
            outcomes[i] = answer
        if waiting:
            await self._answer_as_owners(ids, hashes, waiting, outcomes, request_id, deadline)
        owned = set(todo).difference(waiting)
        # Uncertain answers are not kept (a retry deserves a real decision): their markers go.
        kept = [i for i in todo if i in owned and not outcomes[i].degraded]  # type: ignore[union-attr]
        if behind:
            # The entries are made by the write's task, after the answer has gone (the single
            # path serialises its answer on its own). A rescore reserved nothing, so it has no
            # marker to delete.
            settled = [i for i in todo if i in kept or (i in owned and not rescore)]

            def entries() -> list[tuple[str, bytes]]:
                made = dict(zip(kept, encode_entries(
                    decisions_json([outcomes[i] for i in kept]),  # type: ignore[misc]
                    [hashes[i] for i in kept], request_id)))
                return [(ids[i], made.get(i, b"")) for i in settled]

            if settled:
                self.store.settle_behind(entries, token, overwrite=rescore)
            return Outcomes(outcomes, decisions)
        serialised = decisions_json([outcomes[i] for i in kept])  # type: ignore[misc]
        for i, decision in zip(kept, serialised):
            decisions[id(outcomes[i])] = decision
        entries = dict(zip(kept, encode_entries(serialised, [hashes[i] for i in kept], request_id)))
        lost = await self.store.put_first([(ids[i], entries[i]) for i in kept], overwrite=rescore)
        if lost:
            # Another request decided (or reserved) first: answered with its decision.
            index = {ids[i]: i for i in kept}
            late = [index[t] for t in lost]
            for i in late:
                decisions.pop(id(outcomes[i]), None)
            await self._answer_as_owners(ids, hashes, late, outcomes, request_id, deadline)
        return Outcomes(outcomes, decisions)

    async def _answer_as_owners(
        self,
        ids: Sequence[str],
        hashes: Sequence[str],
        waiting: list[int],
        outcomes: list[Outcome | None],
        request_id: str,
        deadline: float | None,
    ) -> None:
        """Answer the transactions another request reserved with the decision it stores: a
        replay, or a conflict if it was made for another payload. Those whose reservation went
        without a decision (a degraded answer, an expired marker, a store gone) keep this
        request's answer and become its to store (``waiting`` keeps the others). At the
        deadline, one still reserved is answered "in progress", unless this request's own
        answer is degraded (it promises nothing, so it is given as it is)."""
        loop = asyncio.get_running_loop()
        wait_until = loop.time() + self.pending_ms / 1000 if deadline is None else deadline
        pause = _WAIT_FIRST_S
        unsettled = list(waiting)
        while unsettled:
            try:
                async with asyncio.timeout_at(wait_until):
                    held = await self.store.get_many([ids[i] for i in unsettled])
            except TimeoutError:
                break
            still: list[int] = []
            for i in unsettled:
                value = held.get(ids[i])
                if isinstance(value, Pending) and value.payload_hash == hashes[i]:
                    still.append(i)
                elif value is None:
                    waiting.remove(i)
                elif value.payload_hash == hashes[i]:
                    outcomes[i] = value.replay(request_id)  # type: ignore[union-attr]
                else:
                    outcomes[i] = _conflict(ids[i])
            unsettled = still
            if unsettled and loop.time() + pause > wait_until:
                break
            if unsettled:
                await asyncio.sleep(pause)
                pause = min(2 * pause, _WAIT_MAX_S)
        in_progress = [i for i in unsettled if not outcomes[i].degraded]  # type: ignore[union-attr]
        for i in in_progress:
            outcomes[i] = _in_progress(ids[i])
        if in_progress:
            self.metrics.decision_store.labels("in_progress").inc(len(in_progress))

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
