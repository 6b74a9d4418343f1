"""Capacity model: from one benchmark run to replicas, cores, Redis memory and daily volumes.

``python -m bench.capacity`` reads the benchmark's ``.bench/work/results.json`` (CPU per request
and peak memory of each service, measured under load), materializes that run's world
(``.bench/work/feature_repo``) into a fresh ``redis-server`` to measure what Feast writes
(``MEMORY USAGE`` of every entity row, rows per second of ``feast materialize``) and what a
stored decision costs, then writes ``docs/capacity.md``, ``docs/capacity.json`` (the inputs and
the derived figures) and the services' resource requests and limits into ``deploy/k8s`` (the
block each Deployment marks ``# capacity:<service>``). Rerun it after a benchmark run rather
than edit its outputs by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench" / "work"
SERVICES = ("gateway", "encoder", "predictor")
# The services sized by the model: the request path's, and the streamer (events, not requests).
SIZED = (*SERVICES, "streamer")
RATES = (1_000, 10_000, 100_000)
ENTITY_COUNTS = (1_000_000, 10_000_000, 100_000_000)
# Headroom: a service runs at 60 % of its CPU request in steady state (the HPAs' target), so a
# 1.67x burst is absorbed while new pods start.
TARGET_UTILISATION = 0.6
# One Python process per pod (uvicorn, one event loop): a pod uses about one core.
POD_CPU = 1.0
# A Redis master is one thread for commands; plan it at half a core of command time, and at
# most this much data, so that a failover's full resync and a fork stay quick.
REDIS_MASTER_CPU = 0.5
REDIS_MASTER_BYTES = 16e9
DECISION_TTL_S = 24 * 3600  # GATEWAY_DECISION_TTL_S's default
# What each transaction makes the streamer write (card, merchant, device).
ROWS_PER_TRANSACTION = 3
# A decision event's sample size in the stream (bytes per entry from MEMORY USAGE of this many).
EVENT_SAMPLE = 1000
EVENTS_MAXLEN = 5_000_000  # GATEWAY_EVENTS_STREAM_MAXLEN's default
SHAPES = {"single": ("e2e_1", 1), "batch of 100": ("e2e_100", 100)}


def mib(n_bytes: float) -> int:
    return math.ceil(n_bytes / 2**20)


def _runs(results: dict[str, Any], key: str) -> list[dict[str, Any]]:
    case = results["cases"].get(key)
    if not case:
        raise SystemExit(
            f"results.json has no case {key!r}: run `python -m bench.run` (not --only)"
        )
    return case["runs"]


def cpu_per_transaction(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """CPU ms per transaction of each server, by request shape: from the closed-loop runs (the
    servers saturated, the cost per request at its lowest and steadiest), else the open loop at
    the highest rate. The streamer's is per event (one per transaction, whatever the request's
    shape), from :func:`streamer_run` (:func:`streamer_per_event`)."""
    streamer = streamer_run(results)
    out: dict[str, dict[str, float]] = {}
    for shape, (key, rows) in SHAPES.items():
        runs = _runs(results, key)
        closed = [r for r in runs if r["mode"] == "closed"]
        run = (
            max(closed, key=lambda r: r["concurrency"])
            if closed
            else max(runs, key=lambda r: r["rate"])
        )
        per_request = run["server_cpu_ms_per_request"]
        out[shape] = {name: per_request[name] / rows for name in (*SERVICES, "redis")}
        out[shape]["streamer"] = streamer_per_event(streamer, key)
        out[shape]["_run"] = f"{run['mode']} loop, " + (
            f"concurrency {run['concurrency']}"
            if run["mode"] == "closed"
            else f"{run['rate']} req/s"
        )
    return out


def streamer_per_event(streamer: dict[str, Any], key: str) -> float:
    """The streamer's CPU per event for one request shape (its case ``key``): where it kept up
    with single transactions (:func:`streamer_run`); for batches, no more than the wall time per
    event of one streamer working off that case's backlog alone (its batches then as large as
    a backlog makes them, up to ``STREAMER_BATCH_MAX``): an upper bound of its CPU there, as the
    streamer waits for Redis too. Batches of transactions arrive at the stream together, so the
    streamer reads them in batches of that size or more, which cost less per event than the
    single transactions' few events per read."""
    per_event: float = streamer["cpu_ms_per_event"]
    rate = streamer["drain_rate_eps"].get(key) if key != "e2e_1" else None
    return min(per_event, 1000.0 / rate) if rate else per_event


def streamer_run(results: dict[str, Any]) -> dict[str, Any]:
    """The streamer's CPU per event where it kept up with the gateway: the best closed-loop run
    of single transactions (``e2e_1``), whose backlog the benchmark saw drained; the rates at
    which it worked off the batch cases' backlogs alone, by case."""
    stream = results.get("stream_on", {})
    run = stream.get("e2e_1")
    if not run or not run.get("streamer_cpu_ms_per_request"):
        raise SystemExit("results.json has no streamer figures: run `python -m bench.run`")
    return {
        "cpu_ms_per_event": run["streamer_cpu_ms_per_request"],
        "run": f"e2e_1's closed loop at concurrency {run['concurrency']}, {run['rate_rps']:,.0f} "
        "requests/s",
        "kept_up": bool(run["drained"]),
        "batch_events_mean": run.get("batch_events_mean"),
        "drain_rate_eps": {
            key: r["drain_rate_eps"] for key, r in stream.items() if r.get("drain_rate_eps")
        },
    }


def peak_rss_mb(results: dict[str, Any]) -> dict[str, float]:
    peaks = {name: results["rss_idle_mb"].get(name, 0.0) for name in (*SIZED, "redis")}
    for key in ("e2e_1", "e2e_100", "e2e_1000"):
        for run in results["cases"].get(key, {}).get("runs", []):
            for name, peak in peaks.items():
                peaks[name] = max(peak, run["rss_peak_mb"].get(name, 0.0))
    return peaks


def resources(peaks_mb: dict[str, float]) -> dict[str, dict[str, dict[str, str]]]:
    """Requests and limits of each service's container: a core (one process), memory at 1.5x
    the peak measured under load (rounded up to 32 MiB) and twice that as the limit, so that
    a leak is cut before it takes the node."""
    out = {}
    for name in SIZED:
        request = 32 * math.ceil(peaks_mb[name] * 1e6 * 1.5 / 2**20 / 32)
        out[name] = {
            "requests": {"cpu": "1", "memory": f"{request}Mi"},
            "limits": {"cpu": "1", "memory": f"{2 * request}Mi"},
        }
    return out


def replicas(cpu_ms: float, rate: float) -> tuple[float, int]:
    cores = rate * cpu_ms / 1000.0
    return cores, max(2, math.ceil(cores / (POD_CPU * TARGET_UTILISATION)))


# --- measurements on Redis ---------------------------------------------------------------------


def measure_store(repo: Path) -> dict[str, Any]:
    """Materialize the benchmark's world into a fresh Redis: rows/s, and ``MEMORY USAGE`` of
    every row by entity; and the bytes of one stored decision."""
    from vigil.redis_server import RedisServer

    if not (repo / "data" / "serving_spec.json").is_file():
        raise SystemExit(f"{repo} holds no applied world: run `python -m bench.run` first")
    with RedisServer() as server:
        os.environ["VIGIL_REDIS_CONNECTION_STRING"] = server.connection_string
        os.environ.pop("VIGIL_ONLINE_STORE", None)
        from vigil import feast_repo

        started = time.perf_counter()
        feast_repo.materialize(repo, full=True)  # the CLI, as the Jobs run it
        cli_s = time.perf_counter() - started
        import redis

        client = redis.Redis(port=server.port)
        client.flushall()
        fixed_s, marginal_s = _materialize_in_process(repo)
        rows: dict[str, list[int]] = {}
        for key in client.scan_iter(count=1000):
            entity = _entity_of(key)
            rows.setdefault(entity, []).append(client.memory_usage(key, samples=0))
        decision = _decision_bytes(client)
        event_json, event_entry = _event_bytes(client, repo)
        used = client.info("memory")["used_memory"]
        written, write_s = _online_write_rate(repo)
        client.close()
    total_rows = sum(len(v) for v in rows.values())
    return {
        # The command's wall time, Feast's import included: what a Job or CronJob run costs.
        "materialize_cli_s": cli_s,
        # In process: the same call over a window with no rows (registry, offline query set-up:
        # a run's fixed cost) and over the whole window; rows/s from the difference.
        "materialize_fixed_s": fixed_s,
        "materialize_s": marginal_s,
        "materialize_rows": total_rows,
        # Feast's online write (the part of materialization that grows with the rows, and the
        # streamer's write): synthetic entity rows of every stored view, in batches.
        "online_write_rows": written,
        "online_write_s": write_s,
        "materialize_rows_per_s": written / write_s,
        "bytes_per_row": {e: sum(v) / len(v) for e, v in sorted(rows.items())},
        "rows": {e: len(v) for e, v in sorted(rows.items())},
        "decision_bytes": decision,
        "event_json_bytes": event_json,
        "event_entry_bytes": event_entry,
        "used_memory": used,
    }


def _materialize_in_process(repo: Path) -> tuple[float, float]:
    """Seconds of ``FeatureStore.materialize`` over an empty window, then over the whole one."""
    from datetime import datetime, timedelta

    from vigil import feast_repo

    store = feast_repo.open_store(repo)
    ttls = [
        v.ttl_seconds or 0
        for s in feast_repo.load_serving_spec(repo).feature_services.values()
        for v in s.views.values()
    ]
    end = datetime.now(UTC)
    timings = []
    for start in (
        end - timedelta(seconds=1),
        end - timedelta(seconds=max(ttls, default=0) or 365 * 86400),
    ):
        started = time.perf_counter()
        store.materialize(start_date=start, end_date=end)
        timings.append(time.perf_counter() - started)
    return timings[0], timings[1]


def _online_write_rate(repo: Path, per_view: int = 20_000, batch: int = 5_000) -> tuple[int, float]:
    """Rows written and seconds of Feast's own ``online_write_batch`` for ``per_view`` new
    entities of each stored view (the world's views, values of their types)."""
    from datetime import datetime

    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from vigil import feast_repo

    store = feast_repo.open_store(repo)
    provider = store._get_provider()
    now = datetime.now(UTC)
    kinds = {
        "Int64": lambda i: Value(int64_val=i),
        "Int32": lambda i: Value(int32_val=i),
        "Float64": lambda i: Value(double_val=i * 0.5),
        "Float32": lambda i: Value(float_val=i * 0.5),
        "String": lambda i: Value(string_val=str(i)),
        "Bool": lambda i: Value(bool_val=bool(i % 2)),
    }
    written, elapsed = 0, 0.0
    for view in store.list_feature_views():
        (join_key,) = view.join_keys
        for first in range(0, per_view, batch):
            data = [
                (
                    EntityKey(
                        join_keys=[join_key], entity_values=[Value(string_val=f"capacity-{i}")]
                    ),
                    {f.name: kinds.get(str(f.dtype), kinds["Float64"])(i) for f in view.features},
                    now,
                    None,
                )
                for i in range(first, first + batch)
            ]
            started = time.perf_counter()
            provider.online_write_batch(store.config, view, data, None)
            elapsed += time.perf_counter() - started
            written += len(data)
    return written, elapsed


def _entity_of(key: bytes) -> str:
    # Feast's key: the serialized entity key (join key names in UTF-8 among its bytes), then
    # the project name.
    for entity in (b"card_id", b"merchant_id", b"device_id"):
        if entity in key:
            return entity.decode()[: -len("_id")]
    return "other"


def _decision_bytes(client: Any) -> int:
    """``MEMORY USAGE`` of one decision as the gateway stores it (a flagged answer with three
    reasons: the larger kind)."""
    from vigil_contracts.api import ModelRef, Reason, ScoreResponse
    from vigil_gateway.decisions import KEY_PREFIX, encode_entry

    answer = ScoreResponse(
        transaction_id="tx-2026-12-06-000000000001",
        label="suspicious",
        score=0.6412,
        reasons=[
            Reason(code=f"FEATURE_{i}", text="an unusual amount for this card at this hour " * 2)
            for i in range(3)
        ],
        model=ModelRef(name="fraud_detector", version="12"),
        degraded=False,
        request_id="3f1c2d8e9a7b4c6d8e0f1a2b3c4d5e6f",
        cached=False,
    )
    key = KEY_PREFIX + answer.transaction_id
    client.set(key, encode_entry(answer, "sha256:" + "0" * 64), ex=DECISION_TTL_S)
    return client.memory_usage(key, samples=0)


def _event_bytes(client: Any, repo: Path) -> tuple[int, int]:
    """(JSON bytes, bytes per stream entry) of a decision event as the gateway appends it: a
    flagged decision with three reasons and the served feature service's whole vector (as many
    values as the world's serving spec has features; their names are the contract's, not in the
    event); the entry's size is ``MEMORY USAGE`` of a stream of
    :data:`EVENT_SAMPLE` such entries, divided by their number."""
    import orjson

    from vigil_contracts.decision_events import (
        FIELD_EVENT,
        FIELD_ID,
        FIELD_VERSION,
        SCHEMA_VERSION,
        DecisionEvent,
    )

    spec = json.loads((repo / "data" / "serving_spec.json").read_text())
    service = next(iter(spec["feature_services"].values()))
    names = [f if isinstance(f, str) else f["name"] for f in service["features"]]
    key = "vigil:capacity:events"
    size = 0
    for i in range(EVENT_SAMPLE):
        eid = f"tx-2026-12-06-{i:012d}\x1f3f1c2d8e9a7b4c6d8e0f1a2b3c4d5e6f"
        event = {
            "schema_version": SCHEMA_VERSION,
            "event_id": eid,
            "request_id": "3f1c2d8e9a7b4c6d8e0f1a2b3c4d5e6f",
            "key_id": "4f2a9c1e7b3d",
            "transaction": {
                "transaction_id": f"tx-2026-12-06-{i:012d}",
                "card_id": f"card-{i:08d}",
                "merchant_id": f"merchant-{i % 5000:06d}",
                "amount": 1234.56,
                "currency": "EUR",
                "timestamp": "2026-12-06T10:11:12.345678+01:00",
                "channel": "ecom",
                "device_id": f"device-{i:08d}",
                "ip_address": "203.0.113.77",
                "country": "FR",
            },
            "entities": {
                "card_id": f"card-{i:08d}",
                "merchant_id": f"merchant-{i % 5000:06d}",
                "device_id": f"device-{i:08d}",
            },
            "model_name": "fraud_detector",
            "model_version": "12",
            "score": 0.6412345678,
            "label": "suspicious",
            "reasons": ["AMOUNT_HIGH_FOR_CARD", "NEW_DEVICE", "NIGHT_TIME"],
            "degraded": False,
            "safeguards": {"version": "2026-11-01", "fired": []},
            "features": {
                "feature_service": "fraud_model_v1",
                "feature_contract": "sha256:" + "0" * 64,
                "values": [1234.5678901 + k for k in range(len(names))],
                "missing_at": [],
                "stale_at": [],
            },
            "timings": {
                "encode_ms": 1.234,
                "predict_ms": 0.987,
                "total_ms": 3.456,
                "decided_at": 1765015872.123456,
            },
        }
        if i == 0:  # every field of the schema, and valid: the size is a real event's
            assert set(event) == set(DecisionEvent.model_fields), set(DecisionEvent.model_fields)
            DecisionEvent.model_validate(event)
        body = orjson.dumps(event)
        size += len(body)
        client.xadd(key, {FIELD_ID: eid, FIELD_VERSION: SCHEMA_VERSION, FIELD_EVENT: body})
    entry = client.memory_usage(key, samples=0) / EVENT_SAMPLE
    client.delete(key)
    return round(size / EVENT_SAMPLE), round(entry)


def access_line_bytes(log_dir: Path) -> dict[str, float]:
    """Mean size of a service's JSON access line for a scoring call (a POST) in the benchmark's
    logs."""
    out = {}
    for name in SERVICES:
        path = log_dir / f"{name}.log"
        sizes = []
        if path.is_file():
            with path.open("rb") as f:
                for line in f:
                    if b'"method":"POST"' in line and b'"status"' in line:
                        sizes.append(len(line))
                    if len(sizes) >= 5000:
                        break
        out[name] = sum(sizes) / len(sizes) if sizes else 0.0
    return out


# --- the report --------------------------------------------------------------------------------


def model(
    results: dict[str, Any], store: dict[str, Any], lines: dict[str, float]
) -> dict[str, Any]:
    cpu = cpu_per_transaction(results)
    peaks = peak_rss_mb(results)
    streamer = streamer_run(results)
    return {
        "run": {k: results["machine"].get(k) for k in ("date", "code", "nproc", "cpu_model")}
        | {
            "command": results["command"],
            "plan": results["plan"]["name"],
            "world_transactions": results["world"]["transactions"],
        },
        "cpu_ms_per_transaction": cpu,
        "streamer": streamer,
        "peak_rss_mb": peaks,
        "store": store,
        "access_line_bytes": lines,
        "resources": resources(peaks),
    }


def _fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def render(m: dict[str, Any]) -> str:
    run, cpu, store, streamer = m["run"], m["cpu_ms_per_transaction"], m["store"], m["streamer"]
    out = [
        "# Capacity model",
        "",
        f"Written by `.venv/bin/python -m bench.capacity` from the benchmark run of {run['date']} "
        f"(code `{run['code']}`, `{run['command']}`, {run['plan']} plan, a world of "
        f"{run['world_transactions']:,} transactions, {run['nproc']} cores of {run['cpu_model']}) "
        "and a materialization of that run's world into a fresh Redis. Regenerate it after a "
        "benchmark run; do not edit it by hand. The machine is a shared VM (±30 % between runs), "
        "so read the figures as sizes, not promises; the inputs are in `docs/capacity.json`.",
        "",
        "## CPU per transaction",
        "",
        "Server CPU (user + system) per transaction, measured by the benchmark's process watcher "
        "with the servers saturated. The streamer's is per decision event, one per transaction: "
        f"for single transactions measured where it kept up with the gateway ({streamer['run']}"
        + (
            ", its backlog drained"
            if streamer["kept_up"]
            else ", **its backlog not drained**: a lower bound"
        )
        + "); for batches, at most the wall time per event of one streamer working off the batch "
        "run's backlog alone (its batches as large as a backlog makes them; an upper bound of its "
        "CPU, as it waits for Redis too: `bench.capacity.streamer_per_event`)"
        + "; the Redis column holds the stream's Redis work in the single shape's run (the "
        "streamer kept up), not all of it in the batch shape's (the streamer fell behind that run; "
        "see *Streaming* below).",
        "",
        "| shape | run | gateway | encoder | predictor | streamer | redis | total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, c in cpu.items():
        total = sum(c[s] for s in (*SIZED, "redis"))
        out.append(
            f"| {shape} | {c['_run']} | "
            + " | ".join(f"{c[s]:.3f} ms" for s in (*SIZED, "redis"))
            + f" | {total:.3f} ms |"
        )
    out += [
        "",
        "## Replicas and cores",
        "",
        f"One pod is one Python process, about one core (`requests.cpu: 1`); pods run at "
        f"{TARGET_UTILISATION:.0%} of it in steady state (the HPAs' target), so each tier absorbs a "
        f"{1 / TARGET_UTILISATION:.2f}x burst while new pods start; at least 2 replicas each "
        "(the PodDisruptionBudgets keep one up). Redis: command CPU only, a master planned at "
        f"{REDIS_MASTER_CPU:.1f} core of it.",
        "",
        "| transactions/s | shape | gateway | encoder | predictor | streamer | service cores (busy) | Redis masters for CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate in RATES:
        for shape, c in cpu.items():
            cells, busy = [], 0.0
            for s in SIZED:
                cores, n = replicas(c[s], rate)
                busy += cores
                cells.append(f"{n} ({cores:.1f} cores)")
            redis_cores = rate * c["redis"] / 1000
            masters = max(3, math.ceil(redis_cores / REDIS_MASTER_CPU))
            out.append(
                f"| {rate:,} | {shape} | "
                + " | ".join(cells)
                + f" | {busy:.1f} | {masters} ({redis_cores:.1f} cores) |"
            )
    res = m["resources"]
    out += [
        "",
        "Requests and limits per pod (written into `deploy/k8s/*.yaml`): one core; memory at 1.5x "
        "the peak RSS measured under load, limit twice that:",
        "",
        "| service | peak RSS | requests | limits |",
        "|---|---|---|---|",
    ]
    for s in SIZED:
        r = res[s]
        out.append(
            f"| {s} | {m['peak_rss_mb'][s]:.0f} MB | {r['requests']['cpu']} CPU, "
            f"{r['requests']['memory']} | {r['limits']['cpu']} CPU, {r['limits']['memory']} |"
        )
    per_row = store["bytes_per_row"]
    out += [
        "",
        "## Redis memory",
        "",
        f"`MEMORY USAGE` of every row Feast wrote ({store['materialize_rows']:,} rows; one hash "
        "per entity holding every view of it, key overhead included):",
        "",
        "| entity | rows measured | bytes per row |",
        "|---|---|---|",
    ]
    for entity, size in per_row.items():
        out.append(f"| {entity} | {store['rows'][entity]:,} | {size:,.0f} |")
    out += [
        "",
        "For N entities of each kind (N cards, N merchants, N devices), data only; a replica per "
        f"master doubles it; masters at most {_fmt_bytes(REDIS_MASTER_BYTES)} of data each:",
        "",
        "| N of each | feature rows | with replicas | masters for memory |",
        "|---|---|---|---|",
    ]
    row_sum = sum(per_row[e] for e in ("card", "merchant", "device") if e in per_row)
    for n in ENTITY_COUNTS:
        total = n * row_sum
        out.append(
            f"| {n:,} | {_fmt_bytes(total)} | {_fmt_bytes(2 * total)} | "
            f"{max(3, math.ceil(total / REDIS_MASTER_BYTES))} |"
        )
    decision = store["decision_bytes"]
    out += [
        "",
        f"The decision store keeps every decision {DECISION_TTL_S // 3600} h "
        f"(`GATEWAY_DECISION_TTL_S`); one stored decision is {decision:,} bytes (a flagged answer "
        "with three reasons):",
        "",
        "| transactions/s | decisions held | memory (data) | masters for memory |",
        "|---|---|---|---|",
    ]
    for rate in RATES:
        held = rate * DECISION_TTL_S
        out.append(
            f"| {rate:,} | {held:,} | {_fmt_bytes(held * decision)} | "
            f"{max(3, math.ceil(held * decision / REDIS_MASTER_BYTES))} |"
        )
    rows_s = store["materialize_rows_per_s"]
    out += [
        "",
        "At 10k transactions/s and more the decisions outweigh the features: shorten the TTL to "
        "what clients' retries need, or give the decision store its own cluster "
        "(`GATEWAY_REDIS_URL` apart from `ENCODER_REDIS_URL`).",
        "",
        "## Materialization and streaming",
        "",
        f"`vigil materialize --full` (the CLI, as the Jobs run it) wrote "
        f"{store['materialize_rows']:,} entity rows in {store['materialize_cli_s']:.1f} s, nearly "
        "all of it a run's fixed cost (Feast's import, the registry, the offline query). In "
        f"process, `FeatureStore.materialize` took {store['materialize_fixed_s']:.1f} s over a "
        f"window with no rows and {store['materialize_s']:.1f} s over the whole window (this "
        "world is too small to time the rows). Feast's own `online_write_batch`, the part that "
        f"grows with the rows, wrote {store['online_write_rows']:,} synthetic rows of the same "
        f"views in {store['online_write_s']:.1f} s: **{rows_s:,.0f} rows/s** for one process "
        "(the offline read is on top; the issue measured ~9,000 rows/s end to end on a "
        "1M-transaction world, import excluded).",
        "",
        "| N of each | rows | one process, full refresh | processes for a 1-hour refresh |",
        "|---|---|---|---|",
    ]
    for n in ENTITY_COUNTS:
        rows = 3 * n
        hours = rows / rows_s / 3600
        took = f"{hours:,.1f} h" if hours >= 1 else f"{hours * 60:,.0f} min"
        out.append(f"| {n:,} | {rows:,} | {took} | {max(1, math.ceil(rows / rows_s / 3600))} |")
    per_event = streamer["cpu_ms_per_event"]
    drains = streamer["drain_rate_eps"]
    out += [
        "",
        "### Streaming",
        "",
        "Every fresh decision is one event on the decision stream; the streamer adds it to its "
        f"card's, merchant's and device's state and writes their {ROWS_PER_TRANSACTION} online "
        f"rows. It spent **{per_event:.3f} ms of CPU per event** in {streamer['run']}"
        + (
            f", reading {streamer['batch_events_mean']:.0f} events per batch"
            if streamer.get("batch_events_mean")
            else ""
        )
        + f": one process applies about {1000 / per_event:,.0f} events/s with a whole core. "
        + (
            "Working off the batch runs' backlogs on the benchmark's 2 shared cores, it applied "
            + ", ".join(f"{rate:,.0f} events/s ({key})" for key, rate in sorted(drains.items()))
            + ". "
            if drains
            else ""
        )
        + "Replicas share the consumer group's entries (one consumer each); on the 2 cores of "
        "the benchmark it shares the CPU with the request path, so it falls behind any load "
        "that saturates them (`docs/benchmarks.md`, *The decision stream*) and catches up after. "
        "Its Redis work (a Lua call per touched entity and one per row written) is in the single "
        "shape's Redis column above.",
        "",
        "For single transactions (for batches, see the batch shape's streamer column above):",
        "",
        f"| transactions/s | events/s | streamer processes at {TARGET_UTILISATION:.0%} | cores (busy) |",
        "|---|---|---|---|",
    ]
    for rate in RATES:
        cores, n = replicas(per_event, rate)
        out.append(f"| {rate:,} | {rate:,} | {n} | {cores:.1f} |")
    lines = m["access_line_bytes"]
    event, entry = store["event_json_bytes"], store["event_entry_bytes"]
    out += [
        "",
        "## Events and logs per day",
        "",
        "Each service writes one JSON access line per request (mean size in the benchmark's logs: "
        + ", ".join(f"{s} {lines[s]:.0f} B" for s in SERVICES)
        + "). A batch of 100 is one request "
        "to each service. A decision event (a flagged decision with three reasons and the whole "
        "feature vector, its names given by its feature contract, registered once beside the "
        f"stream) is {event:,} B of JSON and takes {entry:,} B of Redis "
        "memory in the stream (`MEMORY USAGE` of a stream of "
        f"{EVENT_SAMPLE:,} of them). The gateway trims the stream to about "
        f"`GATEWAY_EVENTS_STREAM_MAXLEN` entries (default {EVENTS_MAXLEN:,}: "
        f"{_fmt_bytes(EVENTS_MAXLEN * entry)} of Redis memory when full); the consumers downstream "
        "(the decision log) keep what must last.",
        "",
        "| transactions/s | access logs/day, single | access logs/day, batches of 100 | decision events/day (JSON) | stream full after |",
        "|---|---|---|---|---|",
    ]
    per_request = sum(lines[s] for s in SERVICES)
    for rate in RATES:
        day = rate * 86400
        full_s = EVENTS_MAXLEN / rate
        full = f"{full_s / 3600:,.1f} h" if full_s >= 3600 else f"{full_s / 60:,.0f} min"
        out.append(
            f"| {rate:,} | {_fmt_bytes(day * per_request)} | "
            f"{_fmt_bytes(day / 100 * per_request)} | {_fmt_bytes(day * event)} | {full} |"
        )
    out.append("")
    return "\n".join(out)


_RESOURCES = re.compile(
    r"(resources:\s*# capacity:(?P<name>\w+)[^\n]*\n)(?P<indent>\s+)requests: [^\n]*\n\s+limits: [^\n]*\n"
)


def write_resources(k8s_dir: Path, res: dict[str, dict[str, dict[str, str]]]) -> list[Path]:
    """Rewrite each marked resources block of the manifests with the model's figures."""
    changed = []
    for path in sorted(k8s_dir.glob("*.yaml")):
        text = path.read_text()

        def block(match: re.Match[str]) -> str:
            r, pad = res[match["name"]], match["indent"]
            flow = lambda d: f"{{cpu: {json.dumps(d['cpu'])}, memory: {d['memory']}}}"  # noqa: E731
            return f"{match[1]}{pad}requests: {flow(r['requests'])}\n{pad}limits: {flow(r['limits'])}\n"

        new = _RESOURCES.sub(block, text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--results", default=str(WORK / "results.json"))
    parser.add_argument(
        "--repo",
        default=str(WORK / "feature_repo"),
        help="the benchmark world's Feast repo (materialized again to measure)",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "capacity.md"))
    parser.add_argument("--k8s", default=str(ROOT / "deploy" / "k8s"))
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    store = measure_store(Path(args.repo).resolve())
    lines = access_line_bytes(Path(args.results).parent / "logs" / "stack")
    m = model(results, store, lines)
    out = Path(args.out)
    out.write_text(render(m))
    out.with_suffix(".json").write_text(json.dumps(m, indent=1) + "\n")
    changed = write_resources(Path(args.k8s), m["resources"])
    print(
        f"wrote {out}, {out.with_suffix('.json')}"
        + (f" and the resources of {', '.join(p.name for p in changed)}" if changed else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
