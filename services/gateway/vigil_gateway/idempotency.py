"""Stage *idempotency*: one decision per transaction id, across requests and replicas.

:meth:`Idempotency.begin` opens a :class:`Claim` on a request's transactions; the claim knows
which of them need a fresh decision (:meth:`Claim.wanted`, asked of the decision store while the
encoder works) and, once the pipeline has answered, settles them (:meth:`Claim.settle`): a
replay of a stored decision, a conflict, "in progress", or the fresh answer, which it stores.
The pipeline stages know nothing of it. The protocol (reservations, the write behind the
answer, waiting for another request's decision) is told in ``decisions.py`` and
docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from typing import TypeAlias

from vigil_contracts.api import ScoreResponse, Transaction
from vigil_gateway.context import ScoringRequest
from vigil_gateway.decisions import (
    DecisionStore,
    Held,
    Pending,
    decisions_json,
    encode_entries,
    payload_hash,
)
from vigil_gateway.errors import DecisionConflict, DecisionInProgress, GatewayError
from vigil_gateway.metrics import GatewayMetrics

Outcome: TypeAlias = ScoreResponse | GatewayError

# How long a reservation outlives the longest budget (the decision is written just after it).
_PENDING_MARGIN_S = 1.0
#: The share of a batch's time left its decision-store calls may wait, when that is longer than
#: the store's own deadline (``decision_store_timeout_s``, a lone transaction's): a 1,000-decision
#: write on a saturated Redis outlasts 100 ms while the batch waits up to its budget, and a
#: decision not stored is one a retry would make again.
STORE_SHARE = 0.8
# Reservations when no budget is set; and how often a duplicate looks for the decision it waits
# for (doubling from the first wait to the last).
_PENDING_UNBUDGETED_S = 30.0
_WAIT_FIRST_S, _WAIT_MAX_S = 0.001, 0.016


class Outcomes(list[Outcome]):
    """Outcomes in order; ``fresh``, the answers this request made (not replays, conflicts nor
    repeats); ``decisions``, the stored part of each fresh answer already serialised (by ``id``
    of the answer; see ``decisions.answer_json``): serialised once for the store and the
    response."""

    def __init__(
        self,
        outcomes: Sequence[Outcome],
        decisions: dict[int, bytes],
        fresh: Sequence[ScoreResponse] = (),
    ) -> None:
        super().__init__(outcomes)
        self.decisions = decisions
        self.fresh = fresh


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


class Idempotency:
    def __init__(
        self,
        store: DecisionStore,
        metrics: GatewayMetrics,
        *,
        longest_budgets: Sequence[float | None],
    ) -> None:
        self.store = store
        self.metrics = metrics
        budgets = [b for b in longest_budgets if b is not None]
        self.pending_ms = int(
            1000
            * (
                max(budgets) + _PENDING_MARGIN_S
                if budgets and len(budgets) == len(longest_budgets)
                else _PENDING_UNBUDGETED_S
            )
        )

    def begin(self, items: Sequence[Transaction | GatewayError], request: ScoringRequest) -> Claim:
        """A claim on ``items`` (an item that failed validation keeps its error). A transaction
        repeated within the request is one decision; the same id with another payload in the
        same request is a conflict."""
        return Claim(self, items, request)


class Claim:
    """The idempotency of one request's transactions, from the look-up to the stored decision."""

    def __init__(
        self,
        owner: Idempotency,
        items: Sequence[Transaction | GatewayError],
        request: ScoringRequest,
    ) -> None:
        self._owner = owner
        self._store = owner.store
        self._metrics = owner.metrics
        self._request = request
        self._n_items = len(items)
        self._early: dict[int, Outcome] = {}  # item index -> its outcome, known before scoring
        self._copies: list[tuple[int, int]] = []  # (item index, index in transactions)
        self.transactions: list[Transaction] = []
        """The distinct transactions the pipeline runs on."""
        # Payload hashes and this request's reservation token. A lone transaction's are made by
        # the store's task, once the encoder's request is on its way (its hash is a tenth of a
        # millisecond of CPU at light load, in front of the encoder otherwise).
        self._hashes: list[str] | None = None
        self._token = b""
        if len(items) == 1 and isinstance(items[0], Transaction):
            self.transactions.append(items[0])
            self._copies.append((0, 0))
        else:
            self._dedupe(items)
        self._ids = [t.transaction_id for t in self.transactions]
        self._outcomes: list[Outcome | None] = [None] * len(self.transactions)
        self._waiting: list[int] = []  # reserved by a concurrent request for the same payload

    def _dedupe(self, items: Sequence[Transaction | GatewayError]) -> None:
        hashes: list[str] = []
        slot_of: dict[str, int] = {}  # transaction_id -> index in transactions
        for i, transaction in enumerate(items):
            if not isinstance(transaction, Transaction):
                self._early[i] = transaction
                continue
            digest = payload_hash(transaction)
            known = slot_of.get(transaction.transaction_id)
            if known is None:
                slot_of[transaction.transaction_id] = len(self.transactions)
                self._copies.append((i, len(self.transactions)))
                self.transactions.append(transaction)
                hashes.append(digest)
            elif hashes[known] == digest:
                self._copies.append((i, known))  # a repeat in the same request is one decision
            else:
                self._early[i] = _conflict(transaction.transaction_id)
        self._hashes = hashes

    def _keys(self) -> tuple[list[str], bytes]:
        if self._hashes is None:
            self._hashes = [payload_hash(t) for t in self.transactions]
        if not self._token:
            self._token = secrets.token_hex(8).encode()  # this request's reservations
        return self._hashes, self._token

    def _store_wait(self) -> float | None:
        """How long a batch's store call may wait (None: the store's own deadline): the longer
        of that deadline and :data:`STORE_SHARE` of the time its budget has left. A lone
        transaction (written behind its answer) keeps the store's own."""
        request, own = self._request, self._store.timeout_s
        if request.write_behind or request.deadline is None or own is None:
            return None
        left = request.deadline - asyncio.get_running_loop().time()
        return max(own, STORE_SHARE * left)

    async def wanted(self) -> list[int]:
        """Which transactions need a fresh decision (the others are settled by the store: a
        replay or a conflict). Written behind, the ids the store holds nothing for are
        reserved. A rescore only looks (its decision is written over whatever is there). The
        store's trouble is never an error: then every transaction is wanted."""
        request = self._request
        hashes, token = self._keys()
        held: Held = {}
        try:
            async with asyncio.timeout_at(request.deadline):
                if request.rescore or not request.write_behind:
                    held = await self._store.get_many(self._ids, self._store_wait())
                else:
                    held = await self._store.reserve_many(
                        self._ids, hashes, token, pending_ms=self._owner.pending_ms
                    )
        except TimeoutError:
            pass  # the pipeline finds the budget spent and answers TIMEOUT
        tally = {"miss": 0, "conflict": 0, "hit": 0, "pending": 0}
        todo: list[int] = []
        for i, transaction_id in enumerate(self._ids):
            previous = held.get(transaction_id) if held else None
            if previous is None:
                tally["miss"] += 1
                todo.append(i)
            elif previous.payload_hash != hashes[i]:
                tally["conflict"] += 1
                self._outcomes[i] = _conflict(transaction_id)
            elif request.rescore:
                todo.append(i)
            elif isinstance(previous, Pending):
                # Scored here too: if its owner gives up, this answer is the one kept.
                tally["pending"] += 1
                todo.append(i)
                self._waiting.append(i)
            else:
                tally["hit"] += 1
                self._outcomes[i] = previous.replay(request.request_id)
        for outcome, count in tally.items():
            if count:
                self._metrics.decision_store.labels(outcome).inc(count)
        return todo

    async def settle(self, answers: Sequence[ScoreResponse | None]) -> Outcomes:
        """One outcome per item of the request, in order, from the pipeline's ``answers`` (one
        per transaction; None where :meth:`wanted` did not want it), and the fresh decisions
        stored: behind the answer for a lone transaction, before it for a batch."""
        outcomes = await self._settle(answers)
        out: list[Outcome | None] = [None] * self._n_items
        for i, outcome in self._early.items():
            out[i] = outcome
        for i, k in self._copies:
            out[i] = outcomes[k]
        assert all(o is not None for o in out), "an item was left without an outcome"
        return Outcomes(out, outcomes.decisions, outcomes.fresh)  # type: ignore[arg-type]

    async def _settle(self, answers: Sequence[ScoreResponse | None]) -> Outcomes:
        request = self._request
        ids, outcomes, waiting = self._ids, self._outcomes, self._waiting
        decisions: dict[int, bytes] = {}
        hashes, token = self._keys()
        # What the store did not settle (all of it if the budget ran out before it answered).
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if not todo:
            return Outcomes(outcomes, decisions)  # type: ignore[arg-type]
        mine: list[ScoreResponse] = [answers[i] for i in todo]  # type: ignore[misc]
        assert all(a is not None for a in mine), "a transaction to score has no answer"
        for i, answer in zip(todo, mine, strict=True):
            outcomes[i] = answer
        if waiting:
            await self._answer_as_owners(waiting)
        owned = set(todo).difference(waiting)
        # Degraded answers are not kept (a retry deserves a real decision): their markers go.
        kept = [i for i in todo if i in owned and not outcomes[i].degraded]  # type: ignore[union-attr]
        if request.write_behind:
            # The entries are made by the write's task, after the answer has gone (the single
            # path serialises its answer on its own). A rescore reserved nothing, so it has no
            # marker to delete.
            settled = [i for i in todo if i in kept or (i in owned and not request.rescore)]

            def entries() -> list[tuple[str, bytes]]:
                made = dict(
                    zip(
                        kept,
                        encode_entries(
                            decisions_json([outcomes[i] for i in kept]),  # type: ignore[misc]
                            [hashes[i] for i in kept],
                            request.request_id,
                        ),
                        strict=True,
                    )
                )
                return [(ids[i], made.get(i, b"")) for i in settled]

            if settled:
                self._store.settle_behind(entries, token, overwrite=request.rescore)
            return Outcomes(outcomes, decisions, _fresh(todo, outcomes, answers))  # type: ignore[arg-type]
        serialised = decisions_json([outcomes[i] for i in kept])  # type: ignore[misc]
        for i, decision in zip(kept, serialised, strict=True):
            decisions[id(outcomes[i])] = decision
        encoded = dict(
            zip(
                kept,
                encode_entries(serialised, [hashes[i] for i in kept], request.request_id),
                strict=True,
            )
        )
        lost = await self._store.put_first(
            [(ids[i], encoded[i]) for i in kept],
            overwrite=request.rescore,
            timeout_s=self._store_wait(),
        )
        if lost:
            # Another request decided (or reserved) first: answered with its decision.
            index = {ids[i]: i for i in kept}
            late = [index[t] for t in lost]
            for i in late:
                decisions.pop(id(outcomes[i]), None)
            await self._answer_as_owners(late)
        return Outcomes(outcomes, decisions, _fresh(todo, outcomes, answers))  # type: ignore[arg-type]

    async def _answer_as_owners(self, waiting: list[int]) -> None:
        """Answer the transactions another request reserved with the decision it stores: a
        replay, or a conflict if it was made for another payload. Those whose reservation went
        without a decision (a degraded answer, an expired marker, a store gone) keep this
        request's answer and become its to store (``waiting`` keeps the others). At the
        deadline, one still reserved is answered "in progress", unless this request's own
        answer is degraded (it promises nothing, so it is given as it is)."""
        ids, outcomes, request = self._ids, self._outcomes, self._request
        hashes, _ = self._keys()
        loop = asyncio.get_running_loop()
        deadline = request.deadline
        wait_until = loop.time() + self._owner.pending_ms / 1000 if deadline is None else deadline
        pause = _WAIT_FIRST_S
        unsettled = list(waiting)
        while unsettled:
            try:
                async with asyncio.timeout_at(wait_until):
                    held = await self._store.get_many([ids[i] for i in unsettled])
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
                    outcomes[i] = value.replay(request.request_id)  # type: ignore[union-attr]
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
            self._metrics.decision_store.labels("in_progress").inc(len(in_progress))


def _fresh(
    todo: Sequence[int],
    outcomes: Sequence[Outcome | None],
    answers: Sequence[ScoreResponse | None],
) -> list[ScoreResponse]:
    """The answers this request made that are its outcomes: not those replaced, once its owner
    decided, by another request's decision (a replay), a conflict or "in progress". Each decision
    is thereby recorded (counted, sent as an event) by the one request that made it."""
    return [answers[i] for i in todo if outcomes[i] is answers[i]]  # type: ignore[misc]
