"""The encoder's configuration, read from ``ENCODER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from vigil_servicekit.internal_token import InternalToken


class EncoderSettings(BaseSettings):
    """Everything the encoder can be told; every field has a safe default for the local stack."""

    model_config = SettingsConfigDict(env_prefix="ENCODER_", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    """Feast's Redis online store, as a redis-py URL (``redis://host:port/db``); a Redis Cluster
    as ``redis+cluster://host:port`` (any node; TLS: ``rediss+cluster://``), read with one
    pipelined round trip per node."""

    spec_path: Path = Path("feature_repo/data/serving_spec.json")
    """The serving spec ``vigil apply`` exports next to Feast's registry. Read at startup; while
    it is missing or invalid the encoder is not ready and tries again on every readiness probe."""

    redis_timeout_s: float = Field(default=0.25, gt=0, le=30)
    """Redis connect timeout, and the deadline of one whole batch round trip (and of a readiness
    PING), in seconds. A batch that takes longer is answered 503 ``feature-store-unavailable`` so
    that the gateway can fall back instead of waiting. A caller that says it waits longer
    (``x-vigil-timeout-ms``: the gateway's 1 s for a batch) gives the round trip up to 80 % of
    that instead: a large batch on a loaded store is answered, not refused."""

    max_rows: int = Field(default=2000, ge=1)
    """Most rows one encode request may carry; more is answered 413 before any Redis work."""

    internal_token: InternalToken | None = None
    """When set, every request but the health probes must carry it as
    ``x-vigil-internal-token`` (401 otherwise): the gateway sends ``GATEWAY_INTERNAL_TOKEN``."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the encoder's JSON log lines."""
