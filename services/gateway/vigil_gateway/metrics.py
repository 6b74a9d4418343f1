"""The gateway's Prometheus metrics: the shared request metrics (``ServiceMetrics``, in a
registry owned by one app) plus decisions, degraded answers, downstream calls and the decision
store."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from vigil_servicekit.metrics import ServiceMetrics

# The single-score budget is 0.4 s by default: most buckets sit below it.
LATENCY_BUCKETS = (
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.6,
    1.0,
    2.5,
    5.0,
)
# Metric label for answers given before any model metadata was known.
UNKNOWN_VERSION = "unknown"


class GatewayMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__(
            "vigil_gateway",
            buckets=LATENCY_BUCKETS,
            request_labels=("route", "method", "status"),
            latency_labels=("route", "method"),
        )
        self.decisions = Counter(
            "vigil_gateway_decisions",
            "Fresh decisions (replays excluded) by label and model version.",
            ["label", "model_version"],
            registry=self.registry,
        )
        self.degraded = Counter(
            "vigil_gateway_degraded_answers",
            "Answers that fell back to 'uncertain' with degraded: true (a dependency of Vigil's "
            "failed), by reason code (the first) and model version.",
            ["reason", "model_version"],
            registry=self.registry,
        )
        self.safeguards_fired = Counter(
            "vigil_gateway_safeguards_fired",
            "Safeguard rules that fired on fresh decisions, by rule code and rule-set version.",
            ["rule", "version"],
            registry=self.registry,
        )
        self.downstream_errors = Counter(
            "vigil_gateway_downstream_errors",
            "Failed calls to a dependency, by dependency and kind of failure.",
            ["downstream", "kind"],
            registry=self.registry,
        )
        self.downstream_latency = Histogram(
            "vigil_gateway_downstream_duration_seconds",
            "Latency of calls to the encoder and the predictor (successful or not).",
            ["downstream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decision_store = Counter(
            "vigil_gateway_decision_store",
            "Decision-store outcomes: hit, miss, conflict, pending (a concurrent request had reserved the "
            "id), in_progress (still reserved at the deadline), stored, overtaken (another value was "
            "stored first), error.",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vigil_gateway_batch_size",
            "Transactions per batch request.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "vigil_gateway_model_info",
            "1 for the model version whose metadata (thresholds, policy) the gateway currently holds.",
            ["model", "version"],
            registry=self.registry,
        )
        self.metadata_refresh_errors = Counter(
            "vigil_gateway_metadata_refresh_errors",
            "Failed attempts to read model metadata from the predictor.",
            registry=self.registry,
        )
        self.refused = Counter(
            "vigil_gateway_refused",
            "Requests refused before scoring, by reason (unauthenticated, forbidden, rate_limited, "
            "overloaded) and API key id ('none' when no valid key was sent).",
            ["reason", "key_id"],
            registry=self.registry,
        )
        self.key_transactions = Counter(
            "vigil_gateway_key_transactions",
            "Transactions taken on for scoring, by API key id.",
            ["key_id"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vigil_gateway_in_flight",
            "Scoring requests in flight in this process (admission control bounds it).",
            registry=self.registry,
        )
        self.rate_limit_errors = Counter(
            "vigil_gateway_rate_limit_errors",
            "Rate-limit checks that could not reach Redis (the request was let through).",
            registry=self.registry,
        )
        self.events = Counter(
            "vigil_gateway_decision_events",
            "Decision events by outcome: spooled (taken into the local spool), sent (on the "
            "stream), duplicate (already on the stream: a retry after a lost reply), dropped (the "
            "spool was full), lost_at_shutdown (still spooled when the drain timed out).",
            ["outcome"],
            registry=self.registry,
        )
        self.events_spooled = Gauge(
            "vigil_gateway_decision_events_spooled",
            "Decision events waiting in this process's spool for the stream.",
            registry=self.registry,
        )
        self.events_stream_maxlen = Gauge(
            "vigil_gateway_decision_events_stream_maxlen",
            "GATEWAY_EVENTS_STREAM_MAXLEN: about how many entries this process trims the "
            "decision stream to (a consumer further behind loses events).",
            registry=self.registry,
        )
        self.events_send_errors = Counter(
            "vigil_gateway_decision_events_send_errors",
            "Failed attempts to send spooled events to the stream (Redis away; they are retried).",
            registry=self.registry,
        )
