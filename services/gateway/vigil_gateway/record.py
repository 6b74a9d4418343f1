"""Stage *record*: what the gateway keeps of each fresh decision once it is made (replays are
not decisions): the decision metrics (labels, degraded answers, fired safeguards) and the
decision event (``events.EventSpool``: spooled here, sent to the stream behind the answer)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from vigil_contracts.api import ScoreResponse, Transaction
from vigil_gateway.context import DecisionTrace
from vigil_gateway.events import EventSpool
from vigil_gateway.metrics import UNKNOWN_VERSION, GatewayMetrics


class Record:
    def __init__(self, metrics: GatewayMetrics, events: EventSpool | None = None) -> None:
        self.metrics = metrics
        self.events = events

    def __call__(
        self,
        answers: Sequence[ScoreResponse],
        transactions: Sequence[Transaction],
        trace: DecisionTrace,
        request_id: str,
        key_id: str,
    ) -> None:
        """Count ``answers`` (this request's fresh decisions) and spool their events;
        ``transactions`` are the request's distinct transactions (row ``i`` of the trace's
        vectors is transaction ``i``)."""
        decisions: Counter[tuple[str, str]] = Counter()
        degraded: Counter[tuple[str, str]] = Counter()
        fired: Counter[tuple[str, str]] = Counter()
        for answer in answers:
            version = answer.model.version or UNKNOWN_VERSION
            decisions[(answer.label, version)] += 1
            if answer.degraded:
                degraded[(answer.reasons[0].code, version)] += 1
            safeguards = answer.safeguards
            if safeguards is not None and safeguards.fired:
                for rule in safeguards.fired:
                    fired[(rule, safeguards.version)] += 1
        for labels, count in decisions.items():
            self.metrics.decisions.labels(*labels).inc(count)
        for labels, count in degraded.items():
            self.metrics.degraded.labels(*labels).inc(count)
        for labels, count in fired.items():
            self.metrics.safeguards_fired.labels(*labels).inc(count)
        if self.events is not None:
            self.events.put(answers, transactions, trace, request_id, key_id)
