"""The streamer's configuration, read from ``STREAMER_*`` environment variables."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vigil_contracts.decision_events import DEAD_LETTER_KEY, STREAM_KEY
from vigil_servicekit.redis_url import is_cluster


class StreamerSettings(BaseSettings):
    """Everything the streamer can be told; every field has a safe default for the local stack."""

    model_config = SettingsConfigDict(env_prefix="STREAMER_", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    """The Redis holding the decision stream, Feast's online store and the streamer's state: one
    server. A Redis Cluster (``redis+cluster://``) is refused at start: the decision stream and
    the streamer's per-entity state are not partitioned by slot yet (the gateway sends no events
    to a cluster either; docs/architecture.md, *Redis Cluster*)."""

    @field_validator("redis_url")
    @classmethod
    def _one_redis(cls, url: str) -> str:
        if is_cluster(url):
            raise ValueError(
                "the streamer needs one Redis (redis:// or rediss://): on a Redis Cluster the "
                "gateway sends no decision events and the streamer has none to apply "
                "(docs/architecture.md, Redis Cluster)"
            )
        return url

    project: str = "vigil"
    """Feast project name (the suffix of Feast's hash keys)."""

    stream: str = STREAM_KEY
    """The decision stream (the gateway's ``GATEWAY_EVENTS_STREAM``)."""

    group: str = "streamer"
    """Consumer group of the streamer; replicas share its work."""

    consumer: str = Field(default_factory=socket.gethostname)
    """This replica's consumer name, stable across its restarts (what it had read but not
    acknowledged before a crash is read again at start)."""

    dead_letter_stream: str = DEAD_LETTER_KEY
    """Where an event that cannot be processed goes, with the reason."""

    batch_max: int = Field(default=4000, ge=1)
    """Most events processed together. Behind (a backlog), the streamer reads up to this many
    before it applies them, so that an entity's transactions among them cost one history call
    and one row write for all: working off 20,000 events (``bench.stream_drain``), 200 applied
    2,600 events/s, 1,000 4,500 (0.18 ms of CPU per event), 4,000 6,100 (0.12 ms). Not behind,
    a batch is what one read returns (``read_count``), so this bounds only a backlog's batches:
    their memory (a few kB per event) and the events read again after a crash."""

    read_count: int = Field(default=200, ge=1)
    """Most entries one read of the stream (``XREADGROUP``) returns. Redis answers a read at
    once, every other client waiting, about 0.5 ms per 200 of the gateway's events: a backlog is
    read in several short reads rather than one long one."""

    block_ms: int = Field(default=1000, ge=1)
    """How long one read waits for new events."""

    claim_idle_s: float = Field(default=5.0, gt=0)
    """Events another replica read and has not acknowledged for this long are taken over (the
    replica died)."""

    forget_consumers_after_s: float = Field(default=3600.0, gt=0)
    """A consumer of the group that holds nothing pending and has not read for this long is
    removed from the group (a replica that is gone: in Kubernetes each pod, so each replica's
    consumer name, is new). Checked and removed in one atomic call, so a consumer that reads
    meanwhile keeps its events; a live one removed while idle is made again by its next read."""

    allowed_lateness_s: float = Field(default=3600.0, ge=0)
    """An event older than its entity's newest event by more than this is too late: counted,
    logged and left out of the features. Within it, an event is placed where it belongs."""

    history_ttl_s: int = Field(default=90 * 24 * 3600, ge=1)
    """Expiry of an entity's history after its last event (its first sighting is kept while
    the entity is active within this time)."""

    require_seed: bool = True
    """Do not consume until ``vigil stream-seed`` has written the entities' histories: without
    them the first streamed rows would count only streamed events and overwrite the
    materialized ones."""

    window_cache_events: int = Field(default=100_000, ge=0)
    """Most events the streamer holds, in all, of the cards' and devices' last windows (their
    recent events), so that a batch touching one again need not read its window back from Redis
    (0: none held). Least recently used windows go first; an event held costs 0.3-0.6 kB (its
    decoded form may be shared with the member cache), so the default is 30-60 MB at most."""

    redis_timeout_s: float = Field(default=5.0, gt=0)
    """Socket timeout of the streamer's Redis calls."""

    nice: int = Field(default=10, ge=0, le=19)
    """How much the streamer lowers its own CPU priority at start (``os.nice``; 0 keeps it).
    Where it shares a host's cores with the request path (the local runner, a small node), the
    kernel then runs the gateway, encoder and predictor first when they all want the CPU, and
    the streamer catches up when they do not. Within a container a priority counts only among
    the container's own processes: compose gives the streamer fewer ``cpu_shares`` instead."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level of the streamer's JSON log lines."""
