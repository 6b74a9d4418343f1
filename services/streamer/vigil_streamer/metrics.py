"""The streamer's Prometheus metrics: the shared request metrics plus the consumer's."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from vigil_servicekit.metrics import ServiceMetrics

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StreamerMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("vigil_streamer", buckets=_BUCKETS)
        self.events = Counter(
            "vigil_streamer_events",
            "Decision events by outcome: applied, duplicate (its transaction was already counted: an "
            "event delivered again, or a transaction decided again), "
            "late (beyond the allowed lateness for an entity: left out), dead_letter.",
            ["outcome"],
            registry=self.registry,
        )
        self.rows = Counter(
            "vigil_streamer_rows",
            "Online rows by view and outcome: written, older (the store held a newer row).",
            ["view", "outcome"],
            registry=self.registry,
        )
        self.windows = Counter(
            "vigil_streamer_windows",
            "Card and device windows a batch's rows were built from, by source: held (the "
            "window this streamer held for the history's version, with the batch's additions) "
            "or read (read back from Redis: not held, or the history moved elsewhere).",
            ["source"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "vigil_streamer_batch_duration_seconds",
            "Time to process one batch of events (read to acknowledged).",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vigil_streamer_batch_size",
            "Events per processed batch.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.freshness = Histogram(
            "vigil_streamer_freshness_seconds",
            "From the gateway's decision to the entity's row written (wall clocks).",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.lag = Gauge(
            "vigil_streamer_lag_events",
            "Entries of the stream the group has not yet read (Redis' consumer-group lag).",
            registry=self.registry,
        )
        self.pending = Gauge(
            "vigil_streamer_pending_events",
            "Entries read by the group and not yet acknowledged.",
            registry=self.registry,
        )
        self.errors = Counter(
            "vigil_streamer_errors",
            "Batches that failed (Redis away, an unexpected error); they are read again.",
            registry=self.registry,
        )
        self.fx_from_event = Counter(
            "vigil_streamer_fx_from_event",
            "Amounts converted with the EUR value the event's vector carried (no dated rate known).",
            registry=self.registry,
        )
