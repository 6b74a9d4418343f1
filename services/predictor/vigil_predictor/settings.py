"""The predictor's configuration, read from ``PREDICTOR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from vigil_servicekit.internal_token import InternalToken


class PredictorSettings(BaseSettings):
    """Everything the predictor can be told; every field has a safe default for the local stack."""

    model_config = SettingsConfigDict(
        env_prefix="PREDICTOR_",
        extra="ignore",
        # Fields are documented by the docstring under each (held by a test), not through
        # use_attribute_docstrings, which re-parses this module at every start-up.
        coerce_numbers_to_str=True,  # DEFAULT_VERSIONS='{"vigil-fraud": 3}' means version "3"
    )

    models_dir: Path = Field(default=Path("models"))
    """Root of the model repository: ``<models_dir>/<name>/<version>/`` as training writes it."""

    default_versions: dict[str, str] = Field(default_factory=dict)
    """Model name -> version answering requests that name no version (JSON in the environment,
    e.g. ``{"vigil-fraud": "3"}``). A model absent here defaults to its highest numeric version
    that loaded. A pinned version that fails to load is not replaced by another one: the model's
    unversioned routes answer 503 until the pin is fixed, so a pin is never silently ignored."""

    nthread: int = Field(default=1, ge=1)
    """Threads XGBoost may use per prediction. One keeps a busy server predictable; batch
    throughput is better served by more processes than by more threads per request."""

    inline_max_rows: int = Field(default=256, ge=0)
    """Batches up to this many rows are predicted on the event loop (sub-millisecond); larger
    ones are handed to a worker thread so that other requests keep flowing."""

    coalesce_requests: bool = True
    """Score requests of up to ``inline_max_rows`` rows that wait on the event loop together
    (same version, same outputs) in one XGBoost call (see ``coalescer``): under concurrency
    it saves XGBoost's fixed cost per call; a lone request is never held back."""

    max_batch_rows: int = Field(default=65_536, ge=1)
    """Largest N accepted in one inference request."""

    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest inference request body accepted, after any Content-Encoding is undone."""

    host: str = "127.0.0.1"
    """Interface uvicorn binds (documentation only: uvicorn's ``--host`` decides)."""

    port: int = 8002
    """Port uvicorn listens on (documentation only: uvicorn's ``--port`` decides)."""

    internal_token: InternalToken | None = None
    """When set, every request but the health probes must carry it as
    ``x-vigil-internal-token`` (401 otherwise): the gateway sends ``GATEWAY_INTERNAL_TOKEN``."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the predictor's JSON log lines."""
