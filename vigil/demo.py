"""``vigil demo``: the whole job end to end on one machine, with a private redis-server.

generate -> features -> feast apply -> materialize -> train -> batch-score a sample -> start the
stack (encoder, predictor, gateway) -> score sample transactions through the business API ->
print the decisions -> stop everything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd

from vigil import feast_repo, materialization
from vigil.fx import FX_FILE, read_fx_table
from vigil.redis_server import RedisServer, RedisUnavailable, find_redis_server


def _step(msg: str) -> None:
    print(f"\n==> {msg}", file=sys.stderr, flush=True)


def run_demo(args: argparse.Namespace) -> None:
    from vigil.batch import score_file
    from vigil.pipeline import write_feature_tables
    from vigil.scenarios import write_samples
    from vigil.training import TrainConfig, headline, train
    from vigil.world import WorldConfig, generate_world
    from vigil_contracts.artifact import read_metadata

    data_dir, models_dir = Path(args.data_dir), Path(args.models_dir)
    repo = feast_repo.repo_dir(args.repo)
    started = time.monotonic()
    redis: RedisServer | None = None
    try:
        _step("starting a private redis-server")
        try:
            redis = RedisServer(
                binary=find_redis_server(install=True), log_path=data_dir / "redis.log"
            )
            data_dir.mkdir(parents=True, exist_ok=True)
            redis.start()
            os.environ["VIGIL_REDIS_CONNECTION_STRING"] = redis.connection_string
            print(f"redis-server on {redis.connection_string}", file=sys.stderr)
        except RedisUnavailable as exc:
            redis = None
            os.environ["VIGIL_ONLINE_STORE"] = "sqlite"
            print(
                f"Redis cannot be had here ({exc}); using Feast's embedded SQLite online store "
                "instead. The online services need Redis, so the demo stops after batch scoring.",
                file=sys.stderr,
            )

        _step(
            f"generating the world: ~{args.transactions:,} transactions over {args.days} days, seed {args.seed}"
        )
        raw = data_dir / "raw" / "transactions.parquet"
        summary = generate_world(
            WorldConfig(seed=args.seed, n_transactions=args.transactions, n_days=args.days),
            raw,
            progress=not args.quiet,
        )
        print(
            f"{summary.n_transactions:,} transactions, {summary.n_fraud:,} fraud "
            f"({summary.fraud_rate:.2%}): {summary.by_mechanism}",
            file=sys.stderr,
        )

        _step("computing the offline feature tables")
        write_feature_tables(raw, feast_repo.offline_dir(repo), progress=not args.quiet)
        frame = pd.read_parquet(raw)
        write_samples(frame, feast_repo.samples_path(repo))

        _step("feast apply")
        spec = feast_repo.apply(repo)
        for svc in spec.feature_services.values():
            print(f"feature service {svc.name}: {len(svc.features)} features", file=sys.stderr)

        _step("feast materialize (the 30-day freshness window, up to now) into the online store")
        report = feast_repo.materialize(repo, full=True)
        for load in report.views:
            print(f"{load.view}: {load.rows:,} rows written", file=sys.stderr)
        if redis is not None:
            from vigil.stream_seed import seed_histories

            _step(
                "seeding the streamer's entity histories (its windows see the world's last 30 days)"
            )
            client = materialization.redis_client(redis.connection_string)
            try:
                seeded = seed_histories(
                    client, frame, read_fx_table(raw.parent / FX_FILE), datetime.now(UTC)
                )
            finally:
                client.close()
            print(
                f"{seeded.records:,} history records of {sum(seeded.entities.values()):,} entities",
                file=sys.stderr,
            )

        _step("training from Feast point-in-time features")
        model_dir = train(
            raw,
            repo,
            models_dir,
            TrainConfig(seed=args.seed),
            progress=lambda m: print(m, file=sys.stderr),
        )
        meta = read_metadata(model_dir)

        _step("batch scoring the last day of transactions")
        sample = frame[
            frame["event_timestamp"] > frame["event_timestamp"].max() - pd.Timedelta(days=1)
        ]
        sample_path = data_dir / "samples" / "last_day.parquet"
        sample_path.parent.mkdir(parents=True, exist_ok=True)
        sample.to_parquet(sample_path)
        scored = score_file(
            sample_path,
            data_dir / "scored" / "last_day.parquet",
            repo,
            models_dir,
            meta["name"],
            meta["version"],
        )
        print(
            f"{len(scored):,} transactions scored offline: "
            f"{scored['label'].value_counts().to_dict()}",
            file=sys.stderr,
        )

        if redis is not None:
            _score_online(args, repo, models_dir, frame, redis)

        _step("model card headline")
        print(headline(meta))
        print(f"\nmodel card: {model_dir / 'MODEL_CARD.md'}")
        print(f"demo finished in {time.monotonic() - started:.0f}s")
    finally:
        if redis is not None:
            redis.stop()


def _score_online(
    args: argparse.Namespace, repo: Path, models_dir: Path, frame: pd.DataFrame, redis: RedisServer
) -> None:
    from vigil.runner import LocalStack
    from vigil.scenarios import build_scenarios

    _step(
        "starting the stack: encoder, predictor, streamer, gateway (same commands as docker compose)"
    )
    with LocalStack(
        repo, models_dir, Path(args.data_dir) / "logs", redis_url=redis.url, with_streamer=True
    ) as stack:
        print(stack.describe(), file=sys.stderr)
        scenarios = build_scenarios(frame)
        gateway = stack.services["gateway"].url
        _step(f"scoring {len(scenarios)} sample transactions through the business API ({gateway})")
        with httpx.Client(
            timeout=5.0, headers={"authorization": f"Bearer {stack.api_key}"}
        ) as client:
            resp = client.post(
                f"{gateway}/v1/transactions/score-batch",
                json={"transactions": [s.transaction for s in scenarios]},
            )
            resp.raise_for_status()
            results = resp.json()["results"]
        print(decision_table(scenarios, results))
        print(f"\ntry it: the web page at {gateway}/ui works while the stack runs (`vigil serve`).")


def decision_table(scenarios, results) -> str:
    rows = [("transaction", "scenario", "amount", "label", "score", "model", "top reason")]
    for sc, res in zip(scenarios, results, strict=True):
        body = res.get("result") or {}
        if not body:
            rows.append(
                (
                    sc.transaction["transaction_id"],
                    sc.name,
                    "",
                    "error",
                    "",
                    "",
                    (res.get("error") or {}).get("detail", ""),
                )
            )
            continue
        score = body.get("score")
        reason = body["reasons"][0]["text"] if body.get("reasons") else ""
        rows.append(
            (
                body["transaction_id"],
                sc.name,
                f"{sc.transaction['amount']:.2f}",
                body["label"],
                "" if score is None else f"{score:.3f}",
                f"{body['model']['name']} v{body['model']['version']}",
                reason,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
