"""The gateway's configuration, read from ``GATEWAY_*`` environment variables.

Every field has a safe default for the local stack. Outside development, settings that would make
the service unsafe to run (no time budget, hop timeouts longer than the budget, no metadata
refresh) are refused at start-up rather than discovered under load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    costs at most about this much per operation, and scoring goes on without it (uncached).
    Keep it well below ``total_budget_s``: the look-up is part of the budget."""

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

    safeguards_path: str | None = None
    """A TOML file of safeguard rules (see the gateway's own ``safeguards.toml``, the default):
    rules beside the model that can only raise a label's caution."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the gateway's JSON log lines."""

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> "GatewaySettings":
        if self.environment != "production":
            return self
        problems: list[str] = []
        for name in ("total_budget_s", "batch_total_budget_s", "encoder_timeout_s",
                     "predictor_timeout_s", "batch_hop_timeout_s", "connect_timeout_s",
                     "metadata_refresh_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        for name in ("encoder_timeout_s", "predictor_timeout_s"):
            if 0 < self.total_budget_s < getattr(self, name):
                problems.append(f"{name} must not exceed total_budget_s")
        if 0 < self.total_budget_s <= self.decision_store_timeout_s:
            problems.append("decision_store_timeout_s must be below total_budget_s")
        if 0 < self.batch_total_budget_s < self.batch_hop_timeout_s:
            problems.append("batch_hop_timeout_s must not exceed batch_total_budget_s")
        if problems:
            raise UnsafeSettings("unsafe settings for production: " + "; ".join(problems))
        return self


def seconds_or_none(value: float) -> float | None:
    """A configured duration, where <= 0 means "no limit"."""
    return value if value > 0 else None
