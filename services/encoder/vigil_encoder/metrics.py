"""The encoder's Prometheus metrics: the shared request metrics (``ServiceMetrics``, in a registry
owned by one app) plus rows encoded, view reads, Redis round trips and each view's age."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from vigil_servicekit.metrics import ServiceMetrics

# An encode is a fraction of a millisecond to a few milliseconds; resolve that range finely.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class EncoderMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("vigil_encoder", buckets=LATENCY_BUCKETS)
        self.rows_encoded = Counter(
            "vigil_encoder_rows_encoded",
            "Rows encoded into feature vectors, by feature service.",
            ["feature_service"],
            registry=self.registry,
        )
        self.view_reads = Counter(
            "vigil_encoder_view_reads",
            "Distinct (entity, view) reads by result: hit, miss (not in the store) or stale "
            "(older than the view's TTL, served as missing).",
            ["view", "result"],
            registry=self.registry,
        )
        self.tiles_recut = Counter(
            "vigil_encoder_tiles_recut",
            "Rows whose tiled windows (a merchant's) were cut again at the transaction's instant "
            "from the entity's history, by view and what the history gave: its stored row held "
            "this transaction or later ones (a transaction scored again, or out of order); "
            "'history' (recut) or 'no_history' (none kept: the stored tiles were served).",
            ["view", "source"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "vigil_encoder_redis_errors",
            "Failed Redis round trips by kind: connection, timeout or response.",
            ["kind"],
            registry=self.registry,
        )
        self.redis_latency = Histogram(
            "vigil_encoder_redis_duration_seconds",
            "Duration of one pipelined Redis round trip (a whole batch).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.view_age = Gauge(
            "vigil_encoder_feature_view_age_seconds",
            "Seconds since the end of the last load of each served feature view into the online "
            "store (its materialization marker's end); updated on /readyz and /metrics, absent "
            "for a view that was never loaded.",
            ["feature_view"],
            registry=self.registry,
        )
