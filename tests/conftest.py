"""Session fixtures: a private redis-server, a small seeded world applied and materialized with
Feast into it, and a model trained on that world. Everything is real: no fakes, no mocks."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prometheus_client  # noqa: F401 - before feast: see below
import pytest

from vigil.redis_server import RedisServer

# Importing feast sets PROMETHEUS_MULTIPROC_DIR in os.environ. prometheus_client picks its value
# class when first imported, so importing it first keeps the in-process service tests on the
# ordinary single-process metrics they run with in production; the variable is dropped again
# once Feast has been used (the runner also keeps it from the service processes).

ROOT = Path(__file__).resolve().parent.parent
TEST_SEED = 11


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@dataclass
class FeatureEnv:
    repo: Path
    raw_path: Path
    redis: RedisServer
    end: datetime
    models_dir: Path


def copy_repo(dest: Path) -> Path:
    """A private copy of feature_repo/ (definitions only), so tests never touch the real one."""
    dest.mkdir(parents=True)
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def feature_env(redis_server, tmp_path_factory):
    """A 35-day world of ~12k transactions ending at today's midnight UTC, applied and materialized
    (through ``feast_repo.materialize``, which leaves the online store's markers the encoder's
    readiness needs), with the web page's samples."""
    import pandas as pd

    from vigil import feast_repo
    from vigil.pipeline import write_feature_tables
    from vigil.scenarios import write_samples
    from vigil.world import WorldConfig, generate_world

    base = tmp_path_factory.mktemp("world")
    previous = os.environ.get("VIGIL_REDIS_CONNECTION_STRING")
    os.environ["VIGIL_REDIS_CONNECTION_STRING"] = redis_server.connection_string
    repo = copy_repo(base / "feature_repo")
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    raw = base / "raw" / "transactions.parquet"
    # Long enough for the label wait the chargeback delays call for (~6 weeks) to leave known
    # frauds of every kind in the validation and test periods: the model the end-to-end tests
    # score with is chosen and judged on labels known at the cutoff, as in production.
    generate_world(WorldConfig(seed=TEST_SEED, n_transactions=24_000, n_days=100, end=end), raw)
    write_feature_tables(raw, feast_repo.offline_dir(repo))
    write_samples(pd.read_parquet(raw), feast_repo.samples_path(repo))  # as `vigil features` does
    feast_repo.apply(repo)
    feast_repo.materialize(repo)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    yield FeatureEnv(
        repo=repo, raw_path=raw, redis=redis_server, end=end, models_dir=base / "models"
    )
    if previous is None:
        os.environ.pop("VIGIL_REDIS_CONNECTION_STRING", None)
    else:
        os.environ["VIGIL_REDIS_CONNECTION_STRING"] = previous


def copy_online_store(src_url: str, dst_url: str) -> int:
    """Copy the online store (Feast's rows and the materialization markers) from one Redis to
    another with DUMP/RESTORE, as a materialization would reload it: never the API keys, rate
    limits or decisions another test may have left there."""
    import redis

    src, dst = redis.Redis.from_url(src_url), redis.Redis.from_url(dst_url)
    n = 0
    for key in src.scan_iter(count=1000):
        if key.startswith(b"vigil:") and not key.startswith(b"vigil:materialized:"):
            continue
        dst.restore(key, 0, src.dump(key), replace=True)
        n += 1
    return n


TEST_TRAIN_KW = {"num_boost_round": 120}  # the label wait derived, as by default


@pytest.fixture(scope="session")
def trained_model(feature_env):
    """Version 1 of fraud_detector trained on the test world."""
    from vigil.training import TrainConfig, train

    config = TrainConfig(seed=TEST_SEED, **TEST_TRAIN_KW)
    return train(feature_env.raw_path, feature_env.repo, feature_env.models_dir, config)


def now_utc() -> datetime:
    return datetime.now(UTC)


def days_ago(n: float) -> datetime:
    return now_utc() - timedelta(days=n)


#: A Lua script that keeps Redis busy (a script runs alone: every other client waits) for
#: ARGV[1] µs: a store that is slow to answer, for real.
BUSY_SCRIPT = """
local t0 = redis.call('TIME')
local start = t0[1] * 1000000 + t0[2]
repeat
  local t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1])
return 1
"""
