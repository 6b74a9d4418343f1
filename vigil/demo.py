"""``vigil demo``: the whole job end to end on one machine, with a private redis-server.

generate -> features -> feast apply -> materialize -> train -> batch-score a sample -> start the
stack (encoder, predictor, streamer, gateway) -> score sample transactions through the business
API (a card-testing burst played probe after probe, each once the streamer has written the one
before into the online rows) -> print the decisions -> stop everything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from vigil import feast_repo, materialization
from vigil.fx import FX_FILE, read_fx_table
from vigil.redis_server import RedisServer, RedisUnavailable, find_redis_server
from vigil.scenarios import Scenario
from vigil_contracts.decision_events import (
    CONTRACTS_KEY,
    FIELD_EVENT,
    STREAM_KEY,
    DecisionEvent,
    contract_names,
)
from vigil_contracts.feature_contract import short_name


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
        project = next(iter(feast_repo.load_serving_spec(repo).feature_services.values())).project
        played = sum(len(s.earlier) for s in scenarios)
        _step(
            f"scoring {len(scenarios)} sample transactions through the business API ({gateway}), "
            f"after {played} earlier ones played one by one"
        )
        store = materialization.redis_client(redis.connection_string)
        try:
            with httpx.Client(
                base_url=gateway,
                timeout=5.0,
                headers={"authorization": f"Bearer {stack.api_key}"},
            ) as client:
                results = play(client, store, project, scenarios)
            print(decision_table(scenarios, results))
            for sc in scenarios:
                if sc.earlier:
                    print(played_summary(sc, decision_features(store, sc.transaction)))
        finally:
            store.close()
        print(f"\ntry it: the web page at {gateway}/ui works while the stack runs (`vigil serve`).")


#: How long a played transaction may take to reach its card's, merchant's and device's online
#: rows before the next one is sent (the streamer's freshness is ~6 ms at p99).
VISIBLE_WITHIN_S = 5.0


def play(
    client: httpx.Client, store: Any, project: str, scenarios: Sequence[Scenario]
) -> list[dict[str, Any]]:
    """Score ``scenarios`` through the business API (``client``: the gateway, with a key), as a
    payment system would send them: each scenario's earlier transactions one after another, each
    once the online store (``store``) holds the one before, as the streamer writes every
    decision into its entities' rows; then the shown transactions in one batch, once the last
    played one is held. The batch's results, one per scenario."""
    for sc in scenarios:
        for txn in sc.earlier:
            client.post("/v1/transactions/score", json=txn).raise_for_status()
            wait_held(store, project, txn)
    resp = client.post(
        "/v1/transactions/score-batch", json={"transactions": [s.transaction for s in scenarios]}
    )
    resp.raise_for_status()
    results: list[dict[str, Any]] = resp.json()["results"]
    for sc in scenarios:
        if sc.earlier:
            wait_held(store, project, sc.transaction)
    return results


def wait_held(store: Any, project: str, txn: dict[str, Any]) -> None:
    """Wait, at most :data:`VISIBLE_WITHIN_S`, until the rows of ``txn``'s card, merchant and
    device are stamped after it (a row stamped ``T + 1 µs`` holds the events up to ``T``)."""
    from vigil.replay import wait_visible

    stamp = datetime.fromisoformat(txn["timestamp"])
    us = (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) + 1
    keys = [(k, txn[k]) for k in ("card_id", "merchant_id", "device_id") if txn.get(k)]
    pending = dict.fromkeys(keys, us)
    wait_visible(store, project, pending, keys, timeout_s=VISIBLE_WITHIN_S)
    if pending:
        raise TimeoutError(
            f"{txn['transaction_id']} did not reach the online rows of {sorted(pending)} within "
            f"{VISIBLE_WITHIN_S:.0f} s: is the streamer running?"
        )


def decision_features(
    store: Any, txn: dict[str, Any], stream: str = STREAM_KEY, within: int = 1000
) -> dict[str, float | None]:
    """The vector (short feature names) the model saw for ``txn``, from its decision event among
    the stream's last ``within`` entries; ``{}`` if there is none."""
    for _, fields in store.xrevrange(stream, count=within):
        event = DecisionEvent.model_validate_json(fields[FIELD_EVENT.encode()])
        if event.transaction.transaction_id == txn["transaction_id"] and event.features:
            f = event.features
            try:
                names = f.names or contract_names(
                    f.feature_contract, store.hget(CONTRACTS_KEY, f.feature_contract)
                )
            except ValueError:  # not registered (any more): the vector cannot be named
                return {}
            return {short_name(n): v for n, v in zip(names, f.values, strict=True)}
    return {}


#: What the demo prints of a played scenario's last vector: a card-testing burst's signals.
_BURST_SIGNALS = (
    "card_txn_count_1h",
    "card_txn_count_24h",
    "card_distinct_merchants_24h",
    "seconds_since_card_last_txn",
    "amount_to_card_avg_30d",
    "device_txn_count_24h",
    "merchant_small_amount_share_24h",
)


def played_summary(sc: Scenario, features: dict[str, float | None]) -> str:
    shown = ", ".join(
        f"{name} {_number(features[name])}" for name in _BURST_SIGNALS if name in features
    )
    return (
        f"{sc.transaction['transaction_id']} came after {len(sc.earlier)} probes played through "
        f"the API on card {sc.transaction['card_id']}: {shown or 'no vector'}"
    )


def _number(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def decision_table(scenarios: Sequence[Scenario], results: Sequence[dict[str, Any]]) -> str:
    rows = [("transaction", "scenario", "amount", "label", "score", "model", "top reason")]
    for sc, res in zip(scenarios, results, strict=True):
        body = res.get("result") or {}
        if not body:
            rows.append(
                (
                    sc.transaction["transaction_id"],
                    sc.title,
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
                sc.title,
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
