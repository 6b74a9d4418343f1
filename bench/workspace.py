"""The benchmark's own world, built under ``.bench/work/`` with the project's own code.

generate a seeded world -> offline feature tables -> a private copy of the Feast repo ->
``feast apply`` + materialize into a private redis-server -> train a modest model. The same
entities, features and model then serve every case, Vigil's and the peers'.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from vigil.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
FEATURE_SERVICE = "fraud_model_v1"
MODEL_NAME = "fraud_detector"


@dataclass
class World:
    root: Path
    repo: Path
    raw_path: Path
    models_dir: Path
    model_dir: Path
    redis: RedisServer
    n_transactions: int
    timings: dict[str, float]

    @property
    def booster_path(self) -> Path:
        return self.model_dir / "model.ubj"


def _copy_repo(dest: Path) -> Path:
    """A private copy of feature_repo/ (definitions only): the real one is never touched."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, dest / name)
    return dest


def build_world(
    root: Path,
    n_transactions: int,
    seed: int,
    reuse: bool,
    log: Callable[[str], None],
    boost_rounds: int = 200,
) -> World:
    """Build (or, with ``reuse``, re-load into a fresh Redis) the benchmark's world."""
    from vigil import feast_repo
    from vigil.pipeline import write_feature_tables
    from vigil.training import TrainConfig, train
    from vigil.world import WorldConfig, generate_world

    timings: dict[str, float] = {}
    marker = root / "world.json"
    wanted = {
        "n_transactions": n_transactions,
        "seed": seed,
        "boost_rounds": boost_rounds,
        "day": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    reusable = reuse and marker.is_file() and json.loads(marker.read_text()) == wanted
    repo, raw = root / "feature_repo", root / "raw" / "transactions.parquet"
    models_dir = root / "models"

    (root / "logs").mkdir(parents=True, exist_ok=True)
    redis = RedisServer(log_path=root / "logs" / "redis.log").start()
    os.environ["VIGIL_REDIS_CONNECTION_STRING"] = redis.connection_string
    try:
        if not reusable:
            for path in (repo, raw.parent, models_dir, marker):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            _copy_repo(repo)
            t = time.monotonic()
            generate_world(WorldConfig(seed=seed, n_transactions=n_transactions), raw)
            timings["generate"] = time.monotonic() - t
            log(f"world: {n_transactions:,} transactions generated in {timings['generate']:.1f}s")
            t = time.monotonic()
            write_feature_tables(raw, feast_repo.offline_dir(repo))
            timings["features"] = time.monotonic() - t
            t = time.monotonic()
            feast_repo.apply(repo)
            timings["apply"] = time.monotonic() - t
            log(f"feature tables + feast apply in {timings['features'] + timings['apply']:.1f}s")
        else:
            log("world: reusing the world built earlier today (--reuse-world)")
        t = time.monotonic()
        if reusable:
            # A fresh Redis: the registry's watermark would make materialize-incremental load
            # nothing, so load the whole freshness window (which also leaves the markers the
            # encoder's readiness needs).
            feast_repo.materialize(repo, full=True)
        else:
            feast_repo.materialize(repo)
        timings["materialize"] = time.monotonic() - t
        log(f"materialized into redis {redis.connection_string} in {timings['materialize']:.1f}s")
        if not reusable:
            t = time.monotonic()
            config = TrainConfig(
                seed=seed, version="1", num_boost_round=boost_rounds, early_stopping_rounds=30
            )
            train(raw, repo, models_dir, config)
            timings["train"] = time.monotonic() - t
            log(f"model trained in {timings['train']:.1f}s")
            marker.write_text(json.dumps(wanted))
    except BaseException:
        redis.stop()
        raise
    return World(
        root=root,
        repo=repo,
        raw_path=raw,
        models_dir=models_dir,
        model_dir=models_dir / MODEL_NAME / "1",
        redis=redis,
        n_transactions=n_transactions,
        timings=timings,
    )


def sample_transactions(world: World, n: int, seed: int) -> list[dict[str, Any]]:
    """Business transactions of real, recently active cards, merchants and devices.

    Each replays a legitimate transaction of the world's last week (its card, merchant, device,
    amount, channel and country), stamped a few minutes ago, so every entity has fresh features
    in the online store. ``transaction_id`` is left for the load generator to make unique.
    """
    frame = pd.read_parquet(world.raw_path)
    end = frame["event_timestamp"].max()
    recent = frame[
        (frame["event_timestamp"] > end - pd.Timedelta(days=7)) & (frame["is_fraud"] == 0)
    ]
    picked = recent.sample(n=min(n, len(recent)), random_state=seed)
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for k, row in enumerate(picked.itertuples(index=False)):
        ts = now - timedelta(seconds=60 + (k * 37) % 3600)
        tx: dict[str, Any] = {
            "transaction_id": "__TXID__",
            "card_id": str(row.card_id),
            "merchant_id": str(row.merchant_id),
            "amount": round(float(row.amount), 2),
            "currency": str(row.currency),
            "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "channel": str(row.channel),
        }
        if isinstance(row.device_id, str):
            tx["device_id"] = row.device_id
        if isinstance(getattr(row, "country", None), str):
            tx["country"] = row.country
        if isinstance(getattr(row, "ip_address", None), str):
            tx["ip_address"] = row.ip_address
        out.append(tx)
    return out
