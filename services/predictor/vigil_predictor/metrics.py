"""Prometheus metrics, in a registry owned by one app so that apps (and tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Predictions are sub-millisecond; the low buckets are where the interesting movement is.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


class PredictorMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "vigil_predictor_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "vigil_predictor_request_duration_seconds",
            "HTTP request latency by route template, method and outcome.",
            ["route", "method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_rows = Counter(
            "vigil_predictor_inference_rows",
            "Rows scored, by model and version.",
            ["model", "version"],
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "vigil_predictor_inference_duration_seconds",
            "Time spent decoding, predicting and encoding one inference request.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.version_ready = Gauge(
            "vigil_predictor_model_version_ready",
            "1 when a model version loaded and serves, 0 when it was refused.",
            ["model", "version"],
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_latency.labels(route, method, outcome(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
