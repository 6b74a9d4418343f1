"""Prometheus metrics, in a registry owned by one app so that apps (and tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# An encode is a fraction of a millisecond to a few milliseconds; resolve that range finely.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)


def outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


class EncoderMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "vigil_encoder_requests",
            "HTTP requests by route template, method, status code and outcome.",
            ["route", "method", "status", "outcome"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "vigil_encoder_request_duration_seconds",
            "HTTP request latency by route template, method and outcome.",
            ["route", "method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        result = outcome(status)
        self.requests.labels(route, method, str(status), result).inc()
        self.request_latency.labels(route, method, result).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
