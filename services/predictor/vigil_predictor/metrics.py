"""The predictor's Prometheus metrics: the shared request metrics (``ServiceMetrics``, in a
registry owned by one app) plus rows scored, inference latency and which versions serve."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from vigil_servicekit.metrics import ServiceMetrics

# Predictions are sub-millisecond; the low buckets are where the interesting movement is.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class PredictorMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__(
            "vigil_predictor",
            buckets=LATENCY_BUCKETS,
            request_labels=("route", "method", "status"),
            latency_labels=("route", "method", "outcome"),
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
        self.batch_requests = Histogram(
            "vigil_predictor_coalesced_requests",
            "Requests scored together in one XGBoost call (request coalescing).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.version_ready = Gauge(
            "vigil_predictor_model_version_ready",
            "1 when a model version loaded and serves, 0 when it was refused.",
            ["model", "version"],
            registry=self.registry,
        )
