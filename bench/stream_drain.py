"""The streamer working off a backlog: this tree's consumer beside another commit's, same backlog.

``python bench/stream_drain.py --before main`` generates a small world once, then, for each
round and each variant (the ``--before`` commit's streamer, exported with ``git archive``, and
this tree's), starts a private redis-server, seeds the histories of all but the world's last
``--events`` transactions (as ``vigil stream-seed`` does), puts those transactions on the
decision stream as events and runs that variant's consumer until the group has no lag and
nothing pending. Each drain runs in its own process (the variant's code first on its path) and
reports events/s, its own CPU per event (``time.process_time``) and redis-server's CPU per event
(``/proc/<pid>/stat``), then checks the touched rows against the batch pipeline's. Rounds
alternate the variants so both see the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_ROOTS = (
    "libs/contracts",
    "libs/servicekit",
    "services/encoder",
    "services/predictor",
    "services/gateway",
    "services/streamer",
    ".",
)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _event(row: Any, i: int) -> tuple[str, bytes]:
    from vigil.replay import transaction_body  # the business API's body of a world row

    txn = transaction_body(row)
    eid = f"{row.transaction_id}\x1fdrain{i}"
    event = {
        "schema_version": 1,
        "event_id": eid,
        "request_id": f"drain{i}",
        "transaction": txn,
        "entities": {
            "card_id": row.card_id,
            "merchant_id": row.merchant_id,
            "device_id": txn.get("device_id"),
        },
        "model_name": "m",
        "model_version": "1",
        "score": 0.0,
        "label": "not_fraud",
        "reasons": [],
        "degraded": False,
        "features": None,
        "timings": {"encode_ms": 1.0, "predict_ms": 1.0, "total_ms": 2.0, "decided_at": 0.0},
    }
    return eid, json.dumps(event).encode()


def drain(world: Path, events: int, batch_max: int, warmup: int = 0) -> dict[str, Any]:
    """One drain of the world's last ``events`` transactions by the importable streamer; with
    ``warmup``, the ``warmup`` transactions before them are drained first, unmeasured, by the
    same consumer process (its caches warm, as a long-running streamer's are)."""
    import pandas as pd
    import redis

    from vigil.fx import FX_FILE, read_fx_table
    from vigil.redis_server import RedisServer
    from vigil.replay import compare_rows, expected_rows, online_rows
    from vigil.stream_seed import seed_histories
    from vigil_contracts.decision_events import STREAM_KEY
    from vigil_streamer.settings import StreamerSettings

    raw = pd.read_parquet(world).sort_values("event_timestamp", kind="stable")
    raw = raw.reset_index(drop=True)
    fx = read_fx_table(world.parent / FX_FILE)
    live = raw.tail(events + warmup)
    cut = live["event_timestamp"].iloc[0].to_pydatetime()
    server = RedisServer().start()
    try:
        sync = redis.Redis.from_url(server.url)
        seed_histories(sync, raw, fx, cut)

        def publish(rows: pd.DataFrame, offset: int) -> None:
            pipe = sync.pipeline(transaction=False)
            for i, row in enumerate(rows.itertuples(index=False)):
                eid, body = _event(row, offset + i)
                pipe.xadd(STREAM_KEY, {"id": eid, "v": 1, "event": body})
            pipe.execute()

        settings = StreamerSettings(
            redis_url=server.url,
            consumer="drain-1",
            block_ms=20,
            batch_max=batch_max,
            allowed_lateness_s=3600,
        )
        measured = asyncio.run(_drain(server.url, settings, STREAM_KEY, publish, live, warmup))
        wall, cpu, redis_cpu = measured
        n = len(live) - warmup
        targets = sorted(
            {("card_id", c) for c in live["card_id"]}
            | {("merchant_id", m) for m in live["merchant_id"]}
            | {("device_id", d) for d in live["device_id"] if isinstance(d, str)}
        )
        got = online_rows(sync, "vigil", targets)
        end = raw["event_timestamp"].iloc[-1].to_pydatetime() + timedelta(seconds=1)
        want = expected_rows(raw, fx, end, targets)
        bad = [t for t in targets if compare_rows(want[t], got.get(t, {}))]
        sync.close()
    finally:
        server.stop()
    return {
        "events": n,
        "events_per_s": n / wall,
        "cpu_ms_per_event": 1000 * cpu / n,
        "redis_cpu_ms_per_event": 1000 * redis_cpu / n,
        "rows_checked": len(targets),
        "rows_differing": len(bad),
    }


async def _drain(
    url: str, settings: Any, stream: str, publish: Any, live: Any, warmup: int
) -> tuple[float, float, float]:
    """Wall time, this process's and redis-server's CPU of draining ``live[warmup:]``."""
    import redis
    import redis.asyncio as aioredis

    from vigil_streamer.consumer import Consumer
    from vigil_streamer.metrics import StreamerMetrics

    client = aioredis.Redis.from_url(url)
    consumer = Consumer(client, settings, StreamerMetrics())
    task = asyncio.create_task(consumer.run())
    sync = redis.Redis.from_url(url)
    info: Any = sync.info("server")
    pid = int(info["process_id"])

    async def drained() -> None:
        while True:
            groups: Any = sync.xinfo_groups(stream)
            if groups and groups[0]["lag"] == 0 and groups[0]["pending"] == 0:
                return
            await asyncio.sleep(0.005)

    try:
        if warmup:
            publish(live.head(warmup), 0)
            await drained()
        cpu, redis_cpu = time.process_time(), _cpu_s(pid)
        started = time.perf_counter()
        publish(live.iloc[warmup:], warmup)
        await drained()
        wall = time.perf_counter() - started
        return wall, time.process_time() - cpu, _cpu_s(pid) - redis_cpu
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        sync.close()


def _child(tree: Path, world: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / r) for r in _ROOTS)}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--drain",
            str(world),
            "--events",
            str(args.events),
            "--batch-max",
            str(args.batch_max),
            "--warmup",
            str(args.warmup),
        ],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", default="main", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=40_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--batch-max", type=int, default=100)
    parser.add_argument(
        "--warmup", type=int, default=0, help="events drained unmeasured first (warm caches)"
    )
    parser.add_argument("--drain", type=Path, help=argparse.SUPPRESS)  # a child's world
    args = parser.parse_args()
    if args.drain is not None:
        print(json.dumps(drain(args.drain, args.events, args.batch_max, args.warmup)))
        return

    sys.path[:0] = [str(REPO / r) for r in _ROOTS]
    from vigil.world import WorldConfig, generate_world

    commit = subprocess.run(
        ["git", "rev-parse", "--short", args.before],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world" / "transactions.parquet"
        generate_world(
            WorldConfig(seed=11, n_transactions=args.transactions, n_days=args.days, end=end),
            world,
        )
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "archive", commit, *(r for r in _ROOTS if r != "."), "vigil"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        variants = {f"before ({commit})": before, "after (this tree)": REPO}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, tree in variants.items():
                r = _child(tree, world, args)
                results[name].append(r)
                print(
                    f"round {round_ + 1} {name}: {r['events_per_s']:.0f} events/s, consumer CPU "
                    f"{r['cpu_ms_per_event']:.2f} ms/event, redis-server CPU "
                    f"{r['redis_cpu_ms_per_event']:.2f} ms/event; rows differing from the batch "
                    f"pipeline: {r['rows_differing']} of {r['rows_checked']}",
                    flush=True,
                )
    print(
        f"\n{args.events} events ({args.warmup} before them unmeasured), "
        f"{args.transactions:,}-transaction world, batch max {args.batch_max}, medians of "
        f"{args.rounds} rounds:"
    )
    for name, rs in results.items():
        print(
            f"  {name}: {statistics.median(r['events_per_s'] for r in rs):.0f} events/s, "
            f"consumer CPU {statistics.median(r['cpu_ms_per_event'] for r in rs):.2f} ms/event, "
            f"redis-server CPU "
            f"{statistics.median(r['redis_cpu_ms_per_event'] for r in rs):.2f} ms/event"
        )


if __name__ == "__main__":
    main()
