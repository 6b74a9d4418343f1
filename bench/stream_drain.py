"""The streamer working off a backlog, in one process against a private redis-server.

``python -m bench.stream_drain`` generates a small world, seeds the histories of all but its
last ``--events`` transactions (as ``vigil stream-seed`` does), puts those last transactions on
the decision stream as events, then runs the streamer's consumer until the group has no lag and
nothing pending. It prints events/s, the consumer process's CPU per event (its own process,
``time.process_time``) and redis-server's CPU per event (``/proc/<pid>/stat``), then checks the
touched rows against the batch pipeline's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import redis
import redis.asyncio as aioredis

from vigil.fx import FX_FILE, read_fx_table
from vigil.redis_server import RedisServer
from vigil.replay import compare_rows, expected_rows, online_rows, transaction_body
from vigil.stream_seed import seed_histories
from vigil.world import WorldConfig, generate_world
from vigil_contracts.decision_events import SCHEMA_VERSION, STREAM_KEY
from vigil_streamer.consumer import Consumer
from vigil_streamer.metrics import StreamerMetrics
from vigil_streamer.settings import StreamerSettings


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _event(row: pd.Series, i: int) -> tuple[str, bytes]:
    txn = transaction_body(row)
    eid = f"{row.transaction_id}\x1fdrain{i}"
    event = {
        "schema_version": SCHEMA_VERSION,
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


async def _drain(url: str, settings: StreamerSettings) -> None:
    client = aioredis.Redis.from_url(url)
    consumer = Consumer(client, settings, StreamerMetrics())
    task = asyncio.create_task(consumer.run())
    sync = redis.Redis.from_url(url)
    try:
        while True:
            groups = sync.xinfo_groups(STREAM_KEY)
            if groups and groups[0]["lag"] == 0 and groups[0]["pending"] == 0:
                return
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        sync.close()


def _print_commandstats(sync: redis.Redis, n: int) -> None:
    """Where redis-server's time went while the streamer drained (``INFO commandstats``; a
    script's inner commands are counted both in it and on their own)."""
    stats = sync.info("commandstats")
    rows = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
    print("redis commands (µs per event, calls per event, µs per call):")
    for name, stat in rows[:12]:
        print(
            f"  {name.removeprefix('cmdstat_'):<20} {stat['usec'] / n:8.1f} "
            f"{stat['calls'] / n:8.2f} {stat['usec_per_call']:8.2f}"
        )


def _print_slowlog(sync: redis.Redis) -> None:
    """The calls that held Redis for 1 ms or more (every other client waits for them)."""
    slow = sync.slowlog_get(10_000)
    worst = max((entry["duration"] for entry in slow), default=0)
    print(f"redis calls of 1 ms or more: {len(slow)}, the longest {worst / 1000:.1f} ms")
    kinds: dict[str, list[int]] = {}
    for entry in slow:
        words = entry["command"].split()
        name = words[0].decode(errors="replace").upper()
        if name == "EVALSHA" and len(words) > 1:
            name += " " + words[1].decode(errors="replace")[:8]
        kinds.setdefault(name, []).append(entry["duration"])
    for name, durations in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        print(f"  {name:<20} {len(durations):5d} calls, longest {max(durations) / 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=40_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--batch-max", type=int, default=StreamerSettings().batch_max)
    parser.add_argument("--read-count", type=int, default=StreamerSettings().read_count)
    args = parser.parse_args()
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "transactions.parquet"
        generate_world(
            WorldConfig(seed=11, n_transactions=args.transactions, n_days=args.days, end=end),
            raw_path,
        )
        raw = pd.read_parquet(raw_path).sort_values("event_timestamp", kind="stable")
        raw = raw.reset_index(drop=True)
        fx = read_fx_table(raw_path.parent / FX_FILE)
        live = raw.tail(args.events)
        cut = live["event_timestamp"].iloc[0].to_pydatetime()
        server = RedisServer().start()
        try:
            sync = redis.Redis.from_url(server.url)
            seed_histories(sync, raw, fx, cut)
            pipe = sync.pipeline(transaction=False)
            for i, row in enumerate(live.itertuples(index=False)):
                eid, body = _event(row, i)  # type: ignore[arg-type]
                pipe.xadd(STREAM_KEY, {"id": eid, "v": SCHEMA_VERSION, "event": body})
            pipe.execute()
            settings = StreamerSettings(
                redis_url=server.url,
                consumer="drain-1",
                block_ms=20,
                batch_max=args.batch_max,
                read_count=args.read_count,
                allowed_lateness_s=3600,
            )
            sync.config_resetstat()
            sync.config_set("slowlog-log-slower-than", 1000)
            sync.config_set("slowlog-max-len", 10_000)
            sync.slowlog_reset()
            cpu, redis_cpu = time.process_time(), _cpu_s(server.process.pid)
            started = time.perf_counter()
            asyncio.run(_drain(server.url, settings))
            wall = time.perf_counter() - started
            cpu, redis_cpu = time.process_time() - cpu, _cpu_s(server.process.pid) - redis_cpu
            n = len(live)
            print(
                f"{n} events in {wall:.2f} s: {n / wall:.0f} events/s; consumer CPU "
                f"{1000 * cpu / n:.2f} ms/event, redis-server CPU {1000 * redis_cpu / n:.2f} ms/event"
            )
            _print_commandstats(sync, n)
            _print_slowlog(sync)
            targets = sorted(
                {("card_id", c) for c in live["card_id"]}
                | {("merchant_id", m) for m in live["merchant_id"]}
                | {("device_id", d) for d in live["device_id"] if isinstance(d, str)}
            )
            got = online_rows(sync, "vigil", targets)
            try:
                want = expected_rows(raw, fx, end + timedelta(days=1), targets)
            except TypeError as exc:  # seen on this world: pyarrow's list building in the pipeline
                print(f"rows not checked: the batch pipeline failed: {exc}")
                return
            bad = [t for t in targets if compare_rows(want[t], got.get(t, {}))]
            print(f"rows checked against the batch pipeline: {len(targets)}, differing: {len(bad)}")
            if bad:
                print("first differing:", bad[0], compare_rows(want[bad[0]], got[bad[0]])[:3])
            sync.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
