"""The gateway's configuration, read from ``GATEWAY_*`` environment variables.

Every field has a safe default for the local stack. Outside development, settings that would make
the service unsafe to run (no time budget, hop timeouts longer than the budget, no metadata
refresh, authentication off without an explicit acknowledgement, the development key secret) are
refused at start-up rather than discovered under load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vigil_gateway.api_keys import DEVELOPMENT_SECRET
from vigil_servicekit.internal_token import InternalToken


class UnsafeSettings(ValueError):
    """A setting that is tolerated in development is refused in this environment."""


class GatewaySettings(BaseSettings):
    """Everything the gateway can be told."""

    # Each field is documented by the docstring under it (a test holds every one documented);
    # pydantic's use_attribute_docstrings would re-parse this module at each start-up (~18 ms).
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    """Where the gateway runs. ``production`` refuses unsafe settings (see ``_refuse_unsafe``)."""

    encoder_url: str = "http://localhost:8001"
    """Base URL of the encoder service."""

    predictor_url: str = "http://localhost:8002"
    """Base URL of the predictor (Open Inference Protocol V2, REST)."""

    redis_url: str = "redis://localhost:6379/0"
    """Redis holding the decision store (idempotent replays). May be the feature store's Redis:
    keys live under ``vigil:decision:``. A Redis Cluster: ``redis+cluster://host:port`` (any
    node; TLS: ``rediss+cluster://``)."""

    model_name: str = "fraud_detector"
    """Model to score with, as the predictor names it."""

    model_version: str | None = None
    """Pin a model version; unset follows the predictor's default version."""

    feature_service: str | None = None
    """Feast feature service to encode with; unset takes the one recorded in the model's metadata
    (the normal case: the model artifact says which features it was trained on)."""

    encoder_timeout_s: float = 0.15
    """Time allowed for one encoder call on the single-transaction path; <= 0 disables it
    (development only)."""

    predictor_timeout_s: float = 0.15
    """Time allowed for one predictor call on the single-transaction path; <= 0 disables it
    (development only)."""

    total_budget_s: float = 0.4
    """Time budget of one single-transaction score, decision-store look-up included; when it
    runs out the answer is ``uncertain`` with reason ``TIMEOUT``. <= 0 disables it (development
    only, e.g. under a debugger)."""

    batch_hop_timeout_s: float = 1.0
    """Time allowed for one encoder or predictor call on the batch path."""

    batch_total_budget_s: float = 2.5
    """Time budget of one batch request."""

    connect_timeout_s: float = 0.1
    """TCP connect timeout to the encoder and the predictor (inside the hop timeouts)."""

    max_connections: int = Field(default=100, ge=1)
    """Connection pool size per downstream (encoder, predictor, decision-store Redis)."""

    decision_store_timeout_s: float = Field(default=0.1, gt=0)
    """Socket, connect and pool-wait timeout of decision-store operations: a slow or lost Redis
    costs a lone transaction at most about this much per operation, and scoring goes on without
    it (uncached). A batch's look-up and write may wait up to 80 % of its budget's time left
    when that is longer. Keep it well below ``total_budget_s``: the look-up is part of the
    budget."""

    decision_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long a decision is kept for idempotent replay, in seconds."""

    max_batch: int = Field(default=1000, ge=1)
    """Most transactions accepted in one batch request (more is answered 413)."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above it); a full batch of transactions is far below
    the default."""

    metadata_refresh_s: float = 30.0
    """How often model metadata (version, thresholds, serving policy) is re-read from the
    predictor. It is also re-read whenever an inference answer names another version. <= 0
    disables the periodic refresh (development only)."""

    readiness_timeout_s: float = Field(default=1.0, gt=0)
    """Time allowed for each dependency check of ``/readyz``."""

    max_reasons: int = Field(default=3, ge=1, le=10)
    """Most reasons the model gives with a decision (the safeguards' fired rules come on top)."""

    max_transaction_age_s: float = 7 * 86400.0
    """The scoring horizon: a transaction that happened longer ago than this is answered
    ``uncertain`` with ``TRANSACTION_TOO_OLD`` (not degraded), since the history the online store
    holds now is not what was known when it happened. <= 0 disables it (development only)."""

    max_features_lead_s: float = 86400.0
    """How much newer than the transaction its card's, merchant's or device's stored row may be:
    a day, so that transactions sent out of order within a day (the web page's samples are each
    stamped at the most recent same time of day, and share merchants) are scored. A transaction
    stamped earlier than that is answered ``uncertain`` with ``TRANSACTION_BEFORE_FEATURES`` (not
    degraded): its windows are still finished at its own instant, but the stored history reaches
    back only one window from the newest row, and the row's last-seen and first-seen times are a
    later moment's. <= 0 disables it (development only)."""

    safeguards_path: str | None = None
    """A TOML file of safeguard rules (see the gateway's own ``safeguards.toml``, the default):
    rules beside the model that can only raise a label's caution."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the gateway's JSON log lines."""

    samples_path: Path | None = None
    """Sample transactions for the web page (``GET /ui/samples``): the ``samples.json`` that
    ``vigil features`` writes beside the serving spec, taken from the world the model learnt.
    Unset or unreadable, the page offers none."""

    auth_enabled: bool = True
    """Require an API key (``Authorization: Bearer <key>``) on the scoring routes. Switching it
    off is logged as a warning at start-up; production refuses it unless
    ``allow_auth_disabled`` is also set."""

    allow_auth_disabled: bool = False
    """The explicit acknowledgement production needs to run with ``auth_enabled=false``."""

    auth_secret: SecretStr = SecretStr(DEVELOPMENT_SECRET)
    """Server secret of the keys' stored hashes (HMAC-SHA256).
    ``vigil keys`` must be given the same one. Production refuses the development default."""

    auth_refresh_s: float = Field(default=0.5, gt=0, le=1.0)
    """How often the key table's version is read from Redis: a new, revoked or rotated key
    takes effect on every replica within this time (<= 1 s)."""

    metrics_auth: bool = False
    """Require a key with the ``admin`` scope on ``/metrics`` (open by default, for a scraper on
    the internal network)."""

    rate_limit_enabled: bool = True
    """Enforce per-key rate limits (token buckets in Redis, shared by every replica)."""

    rate_requests_per_s: float = Field(default=200.0, gt=0)
    """Default requests per second of a key (a key's own limits replace the defaults)."""

    rate_request_burst: float = Field(default=400.0, ge=1)
    """Default burst of requests of a key above its rate."""

    rate_transactions_per_s: float = Field(default=5000.0, gt=0)
    """Default transactions per second of a key (a batch counts each of its items)."""

    rate_transaction_burst: float = Field(default=10000.0, ge=1)
    """Default burst of transactions of a key; a batch larger than it is always refused."""

    max_in_flight: int = Field(default=32, ge=1)
    """Admission control: most scoring requests this process works on at once; beyond it a
    request is answered at once with 503 ``overloaded`` and ``Retry-After``."""

    max_in_flight_overloaded: int = Field(default=6, ge=1)
    """The bound that replaces ``max_in_flight`` while this process is overloaded: from a
    request refused for the bound until none has been for a second. Beyond what it can serve,
    the admitted requests' wait is what matters: fewer in flight keep it short at nearly the same
    throughput (docs/benchmarks-analysis.md, *Overload*)."""

    max_in_flight_per_key: int = Field(default=32, ge=1)
    """Most scoring requests of one key this process works on at once (503 beyond it)."""

    min_budget_s: float = Field(default=0.05, ge=0)
    """A request with less than this left of its time budget when it is taken on (it waited in
    front of the gateway, or its caller's deadline is that close) is answered 503 at once."""

    internal_token: InternalToken | None = None
    """Shared token sent to the encoder and the predictor (``x-vigil-internal-token``); set it
    to the same value as their ``*_INTERNAL_TOKEN`` when they require it."""

    tls_certfile: str | None = None
    """PEM certificate (chain) the gateway serves HTTPS with; unset serves plain HTTP (behind a
    TLS-terminating proxy). ``vigil certs dev`` makes a self-signed pair for local use."""

    tls_keyfile: str | None = None
    """PEM private key of ``tls_certfile``."""

    events_enabled: bool = True
    """Append one decision event per fresh decision to the Redis Stream ``events_stream`` (what
    the streamer, and the decision log, shadow scoring and monitoring after it, consume)."""

    events_stream: str = "vigil:decisions"
    """Redis Stream of decision events (on ``redis_url``)."""

    events_spool_max: int = Field(default=20_000, ge=1)
    """Most events held in this process's spool while they wait for the stream (Redis away,
    slow). Beyond it a new event is dropped and counted; a crash (not a graceful stop) loses
    what the spool holds, at most this many."""

    events_batch_max: int = Field(default=500, ge=1)
    """Most events sent in one round trip to Redis."""

    events_stream_maxlen: int = Field(default=5_000_000, ge=1000)
    """Approximate cap on the stream's length (``XADD MAXLEN ~``): the backlog a consumer may
    fall behind by before the oldest entries are trimmed."""

    events_dedupe_ttl_s: int = Field(default=600, ge=1)
    """How long an event id is remembered on the Redis side, so that resending a batch whose
    reply was lost (a hung Redis, a timeout) never adds an event twice."""

    events_drain_timeout_s: float = Field(default=10.0, ge=0)
    """At a graceful stop, how long the gateway keeps trying to send its spooled events."""

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> GatewaySettings:
        if self.environment != "production":
            return self
        problems: list[str] = []
        for name in (
            "total_budget_s",
            "batch_total_budget_s",
            "encoder_timeout_s",
            "predictor_timeout_s",
            "batch_hop_timeout_s",
            "connect_timeout_s",
            "metadata_refresh_s",
            "max_transaction_age_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        for name in ("encoder_timeout_s", "predictor_timeout_s"):
            if 0 < self.total_budget_s < getattr(self, name):
                problems.append(f"{name} must not exceed total_budget_s")
        if 0 < self.total_budget_s <= self.decision_store_timeout_s:
            problems.append("decision_store_timeout_s must be below total_budget_s")
        if 0 < self.batch_total_budget_s < self.batch_hop_timeout_s:
            problems.append("batch_hop_timeout_s must not exceed batch_total_budget_s")
        if not self.auth_enabled and not self.allow_auth_disabled:
            problems.append("auth_enabled=false needs allow_auth_disabled=true")
        if self.auth_enabled and self.auth_secret.get_secret_value() in ("", DEVELOPMENT_SECRET):
            problems.append("auth_secret must be set (not the development default)")
        if problems:
            raise UnsafeSettings("unsafe settings for production: " + "; ".join(problems))
        return self


def seconds_or_none(value: float) -> float | None:
    """A configured duration, where <= 0 means "no limit"."""
    return value if value > 0 else None
