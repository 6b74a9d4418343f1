"""Vigil's benchmark: the stack, its parts, the peers and the floors, side by side in one run.

``python -m bench.run [--quick]`` builds a world under ``.bench/work/``, starts Vigil's stack
(``vigil.runner.LocalStack``), ``feast serve``, MLServer and the floors, measures every case with
the load generator (``bench.loadgen``, its own process), the in-process floors, cold starts,
memory and image sizes, and writes ``docs/benchmarks.md`` and ``docs/img/latency_percentiles.png``.
Every process it starts is stopped before it returns, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import httpx
import psutil

from bench import peers, procs, sizes
from bench.store_snapshot import FreshStore, Snapshot, take
from bench.workspace import FEATURE_SERVICE, MODEL_NAME, World, build_world, sample_transactions

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
WORK = BENCH / "work"
PROJECT_PY = sys.executable
PLACEHOLDER = "__TXID__"
# Cold starts with only the packages of the service's image (see measure_cold_starts).
IMAGE_DEPS = "(image's packages)"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    name: str
    n_transactions: int
    warmup_s: float
    open_s: float
    closed_s: float
    single_rates: tuple[int, ...]
    single_concurrency: tuple[int, ...]
    batch_concurrency: tuple[int, ...]
    cold_reps: int
    peer_cold_reps: int
    inprocess_s: float
    profile_s: float
    boost_rounds: int
    open_rounds: int = 1


# The overload case: a closed loop far beyond the stack's maximum (~1,250 req/s here), with the
# 2 s client time-out of the issue that measured queueing in front of the gateway.
OVERLOAD_CONCURRENCY = 256
OVERLOAD_TIMEOUT_S = 2.0
# The bench's key: rate limiting on, far above any rate measured (its cost is measured, not its
# refusals).
BENCH_KEY_LIMITS = {
    "requests_per_s": 1e6,
    "request_burst": 1e6,
    "transactions_per_s": 1e8,
    "transaction_burst": 1e8,
}

# Open-loop rates stay below what the slowest single-row server (feast serve -w 1, ~190 req/s here)
# can take, so that latencies compare servers that keep up rather than queues.
FULL = Plan(
    "full",
    50_000,
    warmup_s=2.0,
    open_s=20.0,
    closed_s=8.0,
    single_rates=(50, 100),
    single_concurrency=(1, 4, 16),
    batch_concurrency=(1, 4),
    cold_reps=3,
    peer_cold_reps=2,
    inprocess_s=3.0,
    profile_s=8.0,
    boost_rounds=200,
    open_rounds=4,
)
QUICK = Plan(
    "quick",
    20_000,
    warmup_s=1.0,
    open_s=4.0,
    closed_s=2.0,
    single_rates=(100,),
    single_concurrency=(16,),
    batch_concurrency=(2,),
    cold_reps=1,
    peer_cold_reps=1,
    inprocess_s=0.7,
    profile_s=4.0,
    boost_rounds=100,
    open_rounds=2,
)


@dataclass
class Case:
    key: str
    label: str
    group: str  # vigil | peer | floor
    url: str
    bodies: list[str]
    rows: int
    rates: tuple[float, ...] = ()
    concurrency: tuple[int, ...] = ()
    placeholder: str | None = None
    check_degraded: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every request (the gateway's API key, the internal hops' token)."""
    timeout_s: float = 10.0
    honour_retry_after: bool = False
    """Closed loop: a worker answered 503 with ``Retry-After`` waits that long (the gateway's
    client contract) before its next request (see bench/loadgen.py)."""
    fresh_timestamps: bool = False
    """Every transaction stamped the time its body is sent (the gateway's cases: live payments,
    see bench/loadgen.py)."""


# --------------------------------------------------------------------------------------------
# workloads


def _chunks(items: list[Any], size: int, count: int) -> list[list[Any]]:
    """``count`` lists of ``size`` items, cycling through ``items``."""
    return [[items[(k * size + i) % len(items)] for i in range(size)] for k in range(count)]


def build_payloads(
    txs: list[dict[str, Any]],
    encoder_url: str,
    predictor_url: str,
    internal: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every case's bodies from the same transactions: business, encoder, Feast and V2 forms."""
    from vigil_contracts.api import Transaction
    from vigil_contracts.request_features import REQUEST_FIELDS
    from vigil_contracts.segments import Labelling
    from vigil_gateway.preprocess import to_encode_row

    rows = [
        to_encode_row(Transaction.model_validate({**tx, "transaction_id": "probe"})) for tx in txs
    ]
    # The vectors the predictors score are the encoder's own answers for those rows.
    vectors: list[list[float | None]] = []
    contract = names = None
    with httpx.Client(timeout=30.0, headers=internal or {}) as client:
        meta = client.get(f"{predictor_url}/v2/models/fraud_detector")
        meta.raise_for_status()
        params = meta.json()["parameters"]
        suspicious = Labelling(
            params["thresholds"], params.get("segment_thresholds") or {}
        ).lowest_suspicious
        for start in range(0, len(rows), 1000):
            resp = client.post(
                f"{encoder_url}/v1/encode",
                json={"feature_service": FEATURE_SERVICE, "rows": rows[start : start + 1000]},
            )
            resp.raise_for_status()
            body = resp.json()
            vectors += [r["values"] for r in body["rows"]]
            contract, names = body["feature_contract"], body["feature_names"]
    assert names is not None
    width = len(names)
    entity_keys = list(rows[0]["entities"])

    def feast_body(chunk: list[dict[str, Any]]) -> str:
        columns: dict[str, list[Any]] = {k: [r["entities"][k] for r in chunk] for k in entity_keys}
        columns.update({f: [r["request"][f] for r in chunk] for f in REQUEST_FIELDS})
        return json.dumps(
            {"feature_service": FEATURE_SERVICE, "entities": columns, "full_feature_names": False}
        )

    def v2_body(chunk: list[list[float | None]], gateway_like: bool = False) -> str:
        body: dict[str, Any] = {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [len(chunk), width],
                    "data": [v for vec in chunk for v in vec],
                }
            ]
        }
        if gateway_like:  # what the gateway asks: contract check, score, contributions of
            # the rows its thresholds will flag (it sends binary tensors; this is the JSON form)
            body["parameters"] = {
                "feature_contract": contract,
                "contributions_min_score": suspicious,
            }
            body["outputs"] = [{"name": "score"}, {"name": "contributions"}]
        return json.dumps(body)

    def encode_body(chunk: list[dict[str, Any]]) -> str:
        # The columns form (EncodeColumnsRequest), which is what the gateway sends.
        columns = {
            part: {name: [r[part][name] for r in chunk] for name in chunk[0][part]}
            for part in ("entities", "request")
        }
        return json.dumps({"feature_service": FEATURE_SERVICE, "columns": columns})

    single = min(len(txs), 500)
    return {
        "rows": rows,
        "vectors": vectors,
        "width": width,
        "gateway_1": [json.dumps(tx) for tx in txs[:single]],
        "gateway_100": [json.dumps({"transactions": c}) for c in _chunks(txs, 100, 10)],
        "gateway_1000": [json.dumps({"transactions": c}) for c in _chunks(txs, 1000, 4)],
        "encoder_1": [encode_body([r]) for r in rows[:single]],
        "encoder_100": [encode_body(c) for c in _chunks(rows, 100, 10)],
        "encoder_1000": [encode_body(c) for c in _chunks(rows, 1000, 4)],
        "feast_1": [feast_body([r]) for r in rows[:single]],
        "feast_100": [feast_body(c) for c in _chunks(rows, 100, 10)],
        "v2_1": [v2_body([v]) for v in vectors[:single]],
        "v2_100": [v2_body(c) for c in _chunks(vectors, 100, 10)],
        "v2_1000_gateway": [v2_body(c, True) for c in _chunks(vectors, 1000, 4)],
    }


def feast_key(workers: int, rows: int) -> str:
    """The case key of ``feast serve -w workers`` with ``rows`` rows per request."""
    return f"feast{workers}w_{rows}"


def define_cases(
    plan: Plan,
    urls: dict[str, str],
    p: dict[str, Any],
    feast_workers: tuple[int, ...] = (1, 2),
    headers: dict[str, dict[str, str]] | None = None,
) -> list[Case]:
    """Every case; ``feast serve`` once per worker count (``urls`` has one per count), side by
    side: the same rates in the same interleaved rounds, the same closed-loop concurrencies.
    ``headers``: what the gateway's (``gateway``) and the internal services' (``internal``)
    requests carry."""
    quick = plan.name == "quick"
    r, c, bc = plan.single_rates, plan.single_concurrency, plan.batch_concurrency
    gw, enc, pred = urls["gateway"], urls["encoder"], urls["predictor"]
    v2 = "/v2/models/fraud_detector/infer"
    headers = headers or {}
    cases = [
        Case(
            "e2e_1",
            "Vigil end to end: gateway /score, 1 transaction",
            "vigil",
            f"{gw}/v1/transactions/score",
            p["gateway_1"],
            1,
            r,
            c,
            PLACEHOLDER,
            True,
        ),
        Case(
            "e2e_100",
            "Vigil end to end: gateway /score-batch, 100 transactions",
            "vigil",
            f"{gw}/v1/transactions/score-batch",
            p["gateway_100"],
            100,
            (5,),
            bc,
            PLACEHOLDER,
            True,
        ),
        Case(
            "e2e_1000",
            "Vigil end to end: gateway /score-batch, 1000 transactions",
            "vigil",
            f"{gw}/v1/transactions/score-batch",
            p["gateway_1000"],
            1000,
            () if quick else (1,),
            bc,
            PLACEHOLDER,
            True,
        ),
        Case(
            "encoder_1",
            "Vigil encoder alone: /v1/encode, 1 row",
            "vigil",
            f"{enc}/v1/encode",
            p["encoder_1"],
            1,
            r,
            c,
        ),
        Case(
            "encoder_100",
            "Vigil encoder alone: /v1/encode, 100 rows",
            "vigil",
            f"{enc}/v1/encode",
            p["encoder_100"],
            100,
            (),
            bc[:1],
        ),
        Case(
            "encoder_1000",
            "Vigil encoder alone: /v1/encode, 1000 rows",
            "vigil",
            f"{enc}/v1/encode",
            p["encoder_1000"],
            1000,
            (),
            bc[:1],
        ),
        Case(
            "predictor_1",
            "Vigil predictor alone: V2 infer, 1 row",
            "vigil",
            f"{pred}{v2}",
            p["v2_1"],
            1,
            r,
            c,
        ),
        Case(
            "predictor_100",
            "Vigil predictor alone: V2 infer, 100 rows",
            "vigil",
            f"{pred}{v2}",
            p["v2_100"],
            100,
            (),
            bc,
        ),
        Case(
            "predictor_1000_contrib",
            "Vigil predictor alone: V2 infer, 1000 rows, score + "
            "contributions of flagged rows (the gateway's call, in JSON)",
            "vigil",
            f"{pred}{v2}",
            p["v2_1000_gateway"],
            1000,
            (),
            bc[:1],
        ),
        *[
            Case(
                feast_key(n, 1),
                f"peer: feast serve -w {n} /get-online-features, 1 row",
                "peer",
                f"{urls[peers.feast_process_name(n)]}/get-online-features",
                p["feast_1"],
                1,
                r,
                c,
            )
            for n in feast_workers
        ],
        *[
            Case(
                feast_key(n, 100),
                f"peer: feast serve -w {n} /get-online-features, 100 rows",
                "peer",
                f"{urls[peers.feast_process_name(n)]}/get-online-features",
                p["feast_100"],
                100,
                (5,),
                bc,
            )
            for n in feast_workers
        ],
        Case(
            "mlserver_1",
            "peer: MLServer + mlserver-xgboost V2 infer, 1 row",
            "peer",
            f"{urls['mlserver']}{v2}",
            p["v2_1"],
            1,
            r,
            c,
        ),
        Case(
            "mlserver_100",
            "peer: MLServer + mlserver-xgboost V2 infer, 100 rows",
            "peer",
            f"{urls['mlserver']}{v2}",
            p["v2_100"],
            100,
            (),
            bc,
        ),
        Case(
            "floor_1",
            "floor: uvicorn constant (raw ASGI)",
            "floor",
            f"{urls['floor']}/",
            p["encoder_1"],
            1,
            r,
            c,
        ),
        Case(
            "floor_fastapi_1",
            "floor: uvicorn + FastAPI constant",
            "floor",
            f"{urls['floor (FastAPI)']}/",
            p["encoder_1"],
            1,
            r,
            c[-1:],
        ),
        Case(
            "floor_v2_1",
            "floor: raw ASGI V2 scoring of one JSON row (parse, XGBoost, answer; "
            "nothing checked, logged or counted)",
            "floor",
            f"{urls['floor (V2)']}/",
            p["v2_1"],
            1,
            r,
            c[:1],
        ),
        Case(
            "floor_3hops_1",
            "floor: three hops of constants (front -> a hop with one Redis "
            "read -> the constant), no decision store",
            "floor",
            f"{urls['floor (3 hops)']}/",
            p["encoder_1"],
            1,
            r,
            c[:1],
        ),
        *overload_cases(f"{gw}/v1/transactions/score", p["gateway_1"]),
    ]
    if "gateway (no auth)" in urls:
        cases.append(
            Case(
                "e2e_1_noauth",
                "Vigil end to end without authentication and rate limiting (a second "
                "gateway on the same encoder and predictor): their cost",
                "vigil",
                f"{urls['gateway (no auth)']}/v1/transactions/score",
                p["gateway_1"],
                1,
                r[:1],
                (),
                PLACEHOLDER,
                True,
            )
        )
    for case in cases:
        case.fresh_timestamps = case.key.startswith("e2e_")
        if case.key.startswith("e2e_") and case.key != "e2e_1_noauth":
            case.headers = headers.get("gateway", {})
        elif case.key.startswith(("encoder_", "predictor_")):
            case.headers = headers.get("internal", {})
    return cases


def overload_cases(url: str, bodies: list[str]) -> list[Case]:
    """The overload cases: a closed loop of ``OVERLOAD_CONCURRENCY`` connections, far beyond the
    stack's maximum, with the issue's 2 s client time-out. ``e2e_overload`` (judged) is clients
    that keep the gateway's documented contract, waiting ``Retry-After`` after a 503;
    ``e2e_overload_ignoring`` (reported, not judged) is clients that retry at once, what a
    misbehaving client makes of the same gateway."""
    what = (
        f"Vigil end to end, overloaded: gateway /score, closed loop at {OVERLOAD_CONCURRENCY} "
        f"connections, {OVERLOAD_TIMEOUT_S:g} s client time-out (admission control answers 503 "
        "beyond its bound)"
    )

    def case(key: str, clients: str, honour: bool) -> Case:
        return Case(
            key,
            f"{what}, {clients}",
            "vigil",
            url,
            bodies,
            1,
            (),
            (OVERLOAD_CONCURRENCY,),
            PLACEHOLDER,
            True,
            timeout_s=OVERLOAD_TIMEOUT_S,
            honour_retry_after=honour,
            fresh_timestamps=True,
        )

    return [
        case("e2e_overload", "clients wait Retry-After after a 503 (the client contract)", True),
        case(
            "e2e_overload_ignoring",
            "clients retry at once, ignoring Retry-After (not judged)",
            False,
        ),
    ]


# --------------------------------------------------------------------------------------------
# measuring


class Watcher:
    """Samples the RSS of every watched process (and its children) while a run goes on.

    The process trees are found once, before the run: finding one reads every process's
    ``/proc`` entry (psutil's ``children``), and doing that for every watched process four times
    a second cost ~12 ms of CPU per sample, a burst on one of the two cores every 250 ms that
    landed in the tail of whatever request it met. A sample now reads one small file per
    process (~0.13 ms for 11). A worker a server forks during a run is counted from the next
    run on."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak: dict[str, int] = {}
        self._trees: dict[str, list[psutil.Process]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._trees = {name: procs.tree(pid) for name, pid in self.pids.items()}
        self.peak = {name: procs.rss_of(tree) for name, tree in self._trees.items()}
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            for name, tree in self._trees.items():
                self.peak[name] = max(self.peak.get(name, 0), procs.rss_of(tree))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def run_loadgen(
    case: Case,
    mode: str,
    param: float,
    plan: Plan,
    pids: dict[str, int],
    tag: str = "",
    keep_latencies: bool = False,
) -> dict[str, Any]:
    duration = plan.open_s if mode == "open" else plan.closed_s
    spec: dict[str, Any] = {
        "url": case.url,
        "method": "POST",
        "bodies": case.bodies,
        "placeholder": case.placeholder,
        "id_prefix": f"b{int(time.time())}{case.key[:3]}{mode[0]}{int(param)}{tag}-",
        "rows": case.rows,
        "mode": mode,
        "warmup_s": plan.warmup_s,
        "duration_s": duration,
        "keep_latencies": keep_latencies,
        "check_degraded": case.check_degraded,
        "timeout_s": case.timeout_s,
        "drain_s": 10.0,
        "honour_retry_after": case.honour_retry_after,
        "headers": {"content-type": "application/json", **case.headers},
        "fresh_timestamps": case.fresh_timestamps,
    }
    spec["rate" if mode == "open" else "concurrency"] = param
    cases_dir = WORK / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    name = f"{case.key}-{mode}-{param:g}{tag}"
    spec_path, out_path = cases_dir / f"{name}.json", cases_dir / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    cpu0 = {n: procs.cpu_seconds(pid) for n, pid in pids.items()}
    with Watcher(pids) as watcher:
        proc = subprocess.run(
            [PROJECT_PY, "-m", "bench.loadgen", "--spec", str(spec_path), "--out", str(out_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=plan.warmup_s + duration + 60,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed for {name}:\n{proc.stderr[-2000:]}")
    result = json.loads(out_path.read_text())
    used = {n: procs.cpu_seconds(pid) - cpu0[n] for n, pid in pids.items()}
    # The servers' CPU covers every request of the process's life, warm-up included.
    answered = max(result.get("completed_total", result["ok"]), 1)
    result["server_cpu_ms_per_request"] = {
        n: 1000.0 * s / answered for n, s in used.items() if s > 0.05
    }
    result["server_cpu_s"] = used
    result["rss_peak_mb"] = {n: b / 1e6 for n, b in watcher.peak.items()}
    result["loadavg_before"] = load
    what = f"{param:g}/s open" if mode == "open" else f"c={param:g} closed"
    log(
        f"{case.key:<24} {what:<12} p50 {result.get('p50_ms', 0):7.2f}  p99 "
        f"{result.get('p99_ms', 0):7.2f}  p99.9 {result.get('p999_ms', 0):7.2f}  max "
        f"{result.get('max_ms', 0):7.1f} ms  {result['rate_rps']:8.1f} req/s "
        f"{result['rows_per_s']:9.0f} rows/s  err {result['errors']}  gen cpu "
        f"{result['generator_cpu_pct']:.0f}%"
    )
    return result


def measure_cases(
    cases: list[Case],
    plan: Plan,
    pids: dict[str, int],
    stream: Any = None,
    store: FreshStore | None = None,
) -> None:
    """Open loops first, rate by rate: every case at that rate in ``plan.open_rounds``
    interleaved rounds (the order rotating), each case's rounds pooled into one run. A light
    load's p99 is a handful of samples: interleaving puts the contenders of a ratio in the same
    minutes, and pooling gives each p99 several times the samples of one short run. Then the
    closed loops, case by case. Each run starts from the restored store (``store``)."""
    rounds = max(plan.open_rounds, 1)
    per_round = Plan(**{**plan.__dict__, "open_s": plan.open_s / rounds})
    for rate in sorted({r for case in cases for r in case.rates}):
        at_rate = [case for case in cases if rate in case.rates]
        done: dict[str, list[dict[str, Any]]] = {case.key: [] for case in at_rate}
        for k in range(rounds):
            shift = k % len(at_rate)
            for case in at_rate[shift:] + at_rate[:shift]:
                done[case.key].append(
                    run_case(
                        stream,
                        case,
                        "open",
                        rate,
                        per_round,
                        pids,
                        tag=f"r{k}",
                        keep_latencies=rounds > 1,
                        store=store,
                    )
                )
        for case in at_rate:
            case.runs.append(pool_rounds(done[case.key]) if rounds > 1 else done[case.key][0])
            if rounds > 1:
                r = case.runs[-1]
                log(
                    f"{case.key:<24} {rate:g}/s open, {rounds} rounds pooled: p50 "
                    f"{r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f} (rounds: "
                    f"{' / '.join(f'{v:.2f}' for v in r['round_p99_ms'])})"
                )
    for case in cases:
        for conc in case.concurrency:
            case.runs.append(run_case(stream, case, "closed", conc, plan, pids, store=store))


def pool_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One run from several rounds of the same case and load: percentiles of all their
    latencies together, throughput over their summed windows, CPU over all their answers."""
    from bench.loadgen import summarise  # numpy lives in the project's venv, as here

    first = rounds[0]
    pooled = summarise([], (0.0, 0.0), first["rows"], 0.0, 0.0, 0.0)
    latencies = [v for r in rounds for v in r.get("latencies_ms", [])]
    if latencies:
        import numpy as np

        lat = np.array(latencies)
        pct = np.percentile(lat, [50, 95, 99, 99.9])
        pooled.update(
            p50_ms=float(pct[0]),
            p95_ms=float(pct[1]),
            p99_ms=float(pct[2]),
            p999_ms=float(pct[3]),
            max_ms=float(lat.max()),
            mean_ms=float(lat.mean()),
        )
        from bench.loadgen import SPECTRUM

        pooled["spectrum"] = [
            [p, float(v)] for p, v in zip(SPECTRUM, np.percentile(lat, SPECTRUM), strict=True)
        ]
    window = sum(r["window_s"] for r in rounds)
    ok = sum(r["ok"] for r in rounds)
    kinds: dict[str, int] = {}
    for r in rounds:
        for kind, n in r.get("error_kinds", {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    answered = max(sum(r.get("completed_total", r["ok"]) for r in rounds), 1)
    used: dict[str, float] = {}
    for r in rounds:
        for name, sec in r.get("server_cpu_s", {}).items():
            used[name] = used.get(name, 0.0) + sec
    gen_cpu = sum(r.get("generator_cpu_s", 0.0) for r in rounds)
    gen_wall = sum(r.get("generator_wall_s", 0.0) for r in rounds)
    pooled.update(
        requests=sum(r["requests"] for r in rounds),
        ok=ok,
        errors=sum(kinds.values()),
        error_kinds=kinds,
        rate_rps=ok / window if window else 0.0,
        rows_per_s=ok * first["rows"] / window if window else 0.0,
        window_s=window,
        generator_cpu_pct=100.0 * gen_cpu / gen_wall if gen_wall else 0.0,
        generator_worst_send_lag_ms=max(r["generator_worst_send_lag_ms"] for r in rounds),
        completed_total=answered,
        mode=first["mode"],
        rate=first["rate"],
        concurrency=first["concurrency"],
        rows=first["rows"],
        duration_s=sum(r["duration_s"] for r in rounds),
        server_cpu_s=used,
        server_cpu_ms_per_request={n: 1000.0 * s / answered for n, s in used.items() if s > 0.05},
        rss_peak_mb={
            n: max(r["rss_peak_mb"].get(n, 0.0) for r in rounds) for n in first["rss_peak_mb"]
        },
        loadavg_before=first["loadavg_before"],
        rounds=len(rounds),
        round_p99_ms=[r.get("p99_ms", float("nan")) for r in rounds],
    )
    if any("stream" in r for r in rounds):
        pooled["stream"] = pool_stream([r["stream"] for r in rounds if "stream" in r])
    if any("labels" in r for r in rounds):
        labels: dict[str, float] = {}
        for r in rounds:
            for label, n in r.get("labels", {}).items():
                labels[label] = labels.get(label, 0.0) + n
        pooled["labels"] = labels
    if any("store_restore_s" in r for r in rounds):
        pooled["store_restore_s"] = [r.get("store_restore_s") for r in rounds]
    return pooled


# --------------------------------------------------------------------------------------------
# the decision stream: the streamer on, its backlog, freshness

#: The freshness case (``--only freshness``): an open loop at the issue's 100 req/s through the
#: gateway, every transaction new; p99 of answer -> row visible judged against 50 ms.
FRESHNESS_KEY = "freshness"
FRESHNESS_RATE = 100.0
FRESHNESS_S = {"full": 45.0, "quick": 10.0}
FRESHNESS_TARGET_MS = 50.0


def seed_stream(world: World) -> dict[str, Any]:
    """The streamer's entity histories from the world's raw transactions, up to now: what
    ``vigil stream-seed`` (and ``vigil demo``) do before the streamer starts. Without them the
    streamer does not consume (its rows would count only streamed events)."""
    from vigil import materialization
    from vigil.stream_seed import seed_from_files

    started = time.monotonic()
    client = materialization.redis_client(world.redis.connection_string)
    try:
        report = seed_from_files(client, world.raw_path)
    finally:
        client.close()
    took = time.monotonic() - started
    log(
        f"seeded the streamer's histories: {report.records:,} records of "
        f"{report.transactions:,} transactions in {took:.1f}s"
    )
    return {"records": report.records, "entities": report.entities, "seconds": took}


def snapshot_store(world: World) -> Snapshot:
    """Every key of the world's Redis but its streams (``bench.store_snapshot.take``)."""
    import redis

    client = redis.Redis.from_url(world.redis.url)
    try:
        snapshot = take(client)
    finally:
        client.close()
    log(
        f"store snapshot: {snapshot.keys:,} keys, {snapshot.bytes / 1e6:.1f} MB of DUMP payloads "
        f"({snapshot.streams} stream(s) left out) in {snapshot.seconds:.2f}s"
    )
    return snapshot


def fresh_store(world: World, snapshot: Snapshot, stream: Any) -> FreshStore:
    """Restores ``snapshot`` before the cases, once ``stream``'s backlog is 0."""
    import redis

    return FreshStore(
        redis.Redis.from_url(world.redis.url),
        snapshot,
        backlog=lambda: sum(stream.backlog()),
        log=log,
    )


def stream_watch(world: World, stack: Any) -> Any:
    """The decision stream's backlog watcher for the e2e runs (``bench.freshness.StreamWatch``)."""
    from bench.freshness import StreamWatch

    return StreamWatch(world.redis.url, metrics_url=f"{stack.services['streamer'].url}/metrics")


def run_case(
    stream: Any,
    case: Case,
    mode: str,
    param: float,
    *args: Any,
    store: FreshStore | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """:func:`run_loadgen`; for an end-to-end case with the streamer on, the consumer group's
    backlog sampled during the run and drained after it (``result["stream"]``), so that the next
    run never starts with the streamer still working off this one's events. With ``store``, the
    run starts from the store as set up (restored if a run since the last restore went through
    the gateway: ``result["store_restore_s"]``)."""
    restored = store.before(f"{case.key} {mode} {param:g}") if store is not None else None
    through_gateway = case.key.startswith("e2e_")
    labels_before = gateway_labels(case.url) if through_gateway else {}
    if stream is None or not through_gateway:
        result = run_loadgen(case, mode, param, *args, **kw)
    else:
        with stream.sampling() as backlog:
            result = run_loadgen(case, mode, param, *args, **kw)
        result["stream"] = backlog
        _log_backlog(case.key, backlog)
    if through_gateway:
        after = gateway_labels(case.url)
        result["labels"] = {k: v - labels_before.get(k, 0.0) for k, v in after.items()}
        total = sum(result["labels"].values())
        if total:
            shares = ", ".join(
                f"{k} {100 * v / total:.1f} %" for k, v in sorted(result["labels"].items()) if v
            )
            log(f"{case.key:<24} answers: {shares} of {total:,.0f} fresh decisions")
    if store is not None:
        if restored is not None:
            result["store_restore_s"] = restored["seconds"]
        if through_gateway:
            store.touched()
    return result


def gateway_labels(score_url: str) -> dict[str, float]:
    """The gateway's fresh decisions so far by label (its ``vigil_gateway_decisions_total``
    counter, from ``/metrics`` beside ``score_url``); empty if it cannot be read. Under load
    the benchmark's few thousand cards pay again and again, and once the streamer has applied
    their events their velocity is an attack's: the label mix says how many answers were
    flagged (and so explained: SHAP is most of a flagged row's cost)."""
    from bench.freshness import scrape

    base = score_url.split("/v1/", 1)[0]
    out: dict[str, float] = {}
    for name, value in scrape(f"{base}/metrics", ("vigil_gateway_decisions_total{",)).items():
        label = name.split('label="', 1)[1].split('"', 1)[0]
        out[label] = out.get(label, 0.0) + value
    return out


def _log_backlog(key: str, backlog: dict[str, Any]) -> None:
    log(
        f"{key:<24} stream: max lag {backlog['max_lag']}, max pending "
        f"{backlog['max_pending']}, at the end {backlog['backlog_at_end']}; "
        + (
            f"drained in {backlog['drain_s']:.1f}s"
            if backlog["drained"]
            else f"NOT drained after {backlog['drain_s']:.0f}s: {backlog['skipped']} skipped"
        )
        + (
            f" ({backlog['drain_rate_eps']:.0f} events/s while draining)"
            if backlog.get("drain_rate_eps")
            else ""
        )
    )


def pool_stream(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The backlog of several rounds of one case: the worst of each figure."""
    return {
        "rounds": len(rounds),
        "max_lag": max(r["max_lag"] for r in rounds),
        "max_pending": max(r["max_pending"] for r in rounds),
        "max_backlog": max(r["max_backlog"] for r in rounds),
        "backlog_at_end": max(r["backlog_at_end"] for r in rounds),
        "drained": all(r["drained"] for r in rounds),
        "drain_s": max(r["drain_s"] for r in rounds),
        "applied": sum(r["applied"] for r in rounds),
        "skipped": sum(r.get("skipped", 0) for r in rounds),
        "streamer_errors": sum(r.get("streamer_errors", 0.0) for r in rounds),
    }


def measure_freshness(
    world: World,
    stack: Any,
    txs: list[dict[str, Any]],
    plan: Plan,
    pids: dict[str, int],
    stream: Any,
) -> dict[str, Any]:
    """The freshness case (``bench.freshness``): answer received -> the card's online row
    reflects the transaction, every request of an open loop at :data:`FRESHNESS_RATE`; the
    stream's backlog sampled meanwhile. The rows' keys are Feast's own (``_redis_key``)."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    def key(card: str) -> str:
        entity = EntityKey(join_keys=["card_id"], entity_values=[Value(string_val=card)])
        return _redis_key("vigil", entity, 3).hex()

    duration = FRESHNESS_S.get(plan.name, FRESHNESS_S["full"])
    spec = {
        "url": f"{stack.services['gateway'].url}/v1/transactions/score",
        "headers": {"content-type": "application/json", "authorization": f"Bearer {stack.api_key}"},
        "transactions": [
            {k: v for k, v in tx.items() if k not in ("transaction_id", "timestamp")} for tx in txs
        ],
        "row_keys": {tx["card_id"]: key(tx["card_id"]) for tx in txs},
        "view": "card_stats",
        "redis_url": world.redis.url,
        "rate": FRESHNESS_RATE,
        "warmup_s": plan.warmup_s,
        "duration_s": duration,
        "poll_s": 0.001,
        "id_prefix": f"fresh{int(time.time())}-",
    }
    spec_path, out_path = WORK / "freshness.json", WORK / "freshness.result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    cpu0 = {n: procs.cpu_seconds(pid) for n, pid in pids.items()}
    with stream.sampling() as backlog:
        proc = subprocess.run(
            [PROJECT_PY, "-m", "bench.freshness", "--spec", str(spec_path), "--out", str(out_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=plan.warmup_s + duration + 90,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the freshness case failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    used = {n: procs.cpu_seconds(pid) - cpu0[n] for n, pid in pids.items()}
    answered = max(result["answered"], 1)
    result["server_cpu_ms_per_request"] = {
        n: 1000.0 * s / answered for n, s in used.items() if s > 0.05
    }
    result["stream"] = backlog
    result["target_ms"] = FRESHNESS_TARGET_MS
    log(
        f"freshness at {FRESHNESS_RATE:g}/s for {duration:g}s: {result['visible']} of "
        f"{result['answered']} answers visible (p50 {result['p50_ms'] or float('nan'):.1f}, p99 "
        f"{result['p99_ms'] or float('nan'):.1f}, max {result['max_ms'] or float('nan'):.1f} ms; "
        f"{result['visible_at_first_read']} at the first read), not visible "
        f"{result['not_visible']}, errors {result['errors']}; stream max lag "
        f"{backlog['max_lag']}, max pending {backlog['max_pending']}; streamer batches "
        f"{backlog.get('batches', 0):.0f}, {backlog.get('batch_events_mean', 0):.1f} events and "
        f"{backlog.get('batch_ms_mean', 0):.1f} ms each on average"
    )
    return result


def stream_on_summary(cases: list[Case]) -> dict[str, Any]:
    """The streamer at the gateway's maximum throughputs: the backlog of the best closed-loop
    run of ``e2e_1`` (requests/s, the one the max-throughput target is judged on) and of the
    batch cases (transactions/s), by case key."""
    out: dict[str, Any] = {}
    for case in cases:
        closed = [r for r in case.runs if r.get("mode") == "closed" and "stream" in r]
        if case.key not in ("e2e_1", "e2e_100", "e2e_1000") or not closed:
            continue
        best = max(closed, key=lambda r: r["rows_per_s"])
        out[case.key] = {
            "rate_rps": best["rate_rps"],
            "rows_per_s": best["rows_per_s"],
            "concurrency": best["concurrency"],
            **best["stream"],
            "streamer_cpu_ms_per_request": best.get("server_cpu_ms_per_request", {}).get(
                "streamer"
            ),
        }
    return out


def measure_inprocess(world: World, payloads: dict[str, Any], plan: Plan) -> dict[str, Any]:
    spec = {
        "encode_rows": payloads["rows"][:1000],
        "vectors": payloads["vectors"][:1000],
        "redis_url": world.redis.url,
        "spec_path": str(world.repo / "data" / "serving_spec.json"),
        "feature_service": FEATURE_SERVICE,
        "model_dir": str(world.model_dir),
        "model_name": MODEL_NAME,
        "model_version": "1",
        "sizes": [1, 100, 1000],
        "seconds_per_case": plan.inprocess_s,
    }
    spec_path, out_path = WORK / "inprocess.json", WORK / "inprocess.result.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run(
        [PROJECT_PY, "-m", "bench.inprocess", "--spec", str(spec_path), "--out", str(out_path)],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    result = json.loads(out_path.read_text())
    for name, r in result.items():
        log(
            f"in-process {name:<26} p50 {r['p50_ms']:7.3f}  p99 {r['p99_ms']:7.3f} ms  "
            f"{r['rows_per_s']:9.0f} rows/s"
        )
    return result


def measure_cold_starts(
    stack: Any, world: World, venv: Path, config: Path, plan: Plan
) -> dict[str, list[float]]:
    """Spawn -> ready of a fresh instance of each service, with nothing else under load."""
    from vigil.redis_server import free_port
    from vigil.runner import READY_PATH, service_specs

    urls = {name: svc.url for name, svc in stack.services.items()}
    # The running stack's secrets: a cold gateway asks the running encoder and predictor, which
    # answer only their internal token.
    specs = service_specs(
        world.redis.url,
        urls,
        str(world.models_dir.resolve()),
        str(world.repo / "data" / "serving_spec.json"),
        secrets=stack.secrets,
    )
    out: dict[str, list[float]] = {}
    base_python = str(Path(sys.base_prefix) / "bin" / "python3")
    for spec in specs:
        if spec.name not in ("encoder", "predictor", "gateway"):
            continue  # the cold-start targets are the request path's services
        # The project's venv holds what every service, training and the tests need (scikit-learn,
        # which `import xgboost` loads whenever it is installed, feast, ...); the service's image
        # holds only what its Dockerfile installs. Both are measured: the image's set is what a
        # deployment starts with, and what the target is judged on.
        image = sizes.image_site_packages(BENCH, spec.name)
        variants = [(spec.name, [PROJECT_PY], spec.env)]
        if image is not None:
            path = [*sizes.dockerfile_packages(spec.name), str(image)]
            variants.append(
                (
                    f"{spec.name} {IMAGE_DEPS}",
                    [base_python, "-S"],
                    {**spec.env, "PYTHONPATH": os.pathsep.join(path)},
                )
            )
        for name, python, env in variants:
            for _rep in range(plan.cold_reps):
                port = free_port()
                m = procs.Managed(
                    name=f"cold {name}",
                    cmd=[*python, "-m", *spec.module_args("127.0.0.1", port)],
                    ready_url=f"http://127.0.0.1:{port}{READY_PATH[spec.name]}",
                    log_path=WORK / "logs" / f"cold-{spec.name}.log",
                    env=env,
                    cwd=ROOT,
                )
                try:
                    m.start(timeout=60)
                finally:
                    m.stop()
                out.setdefault(name, []).append(m.cold_start_s or float("nan"))
    for _rep in range(plan.peer_cold_reps):
        for name, make in (
            ("feast serve -w 1", lambda: peers.feast_serve(world.repo, config, WORK, 1)),
            (
                "mlserver",
                lambda: peers.mlserver(venv, world.booster_path, WORK, 0, one_thread=True),
            ),
        ):
            m = make()
            try:
                m.start(timeout=120)
            finally:
                m.stop()
            out.setdefault(name, []).append(m.cold_start_s or float("nan"))
    for name, values in out.items():
        log(f"cold start {name:<12} " + ", ".join(f"{v:.2f}s" for v in values))
    return out


def profile(
    cases: dict[str, Case], plan: Plan, pids: dict[str, int], venv: Path, open_rate: float = 0.0
) -> dict[str, Any]:
    """py-spy on the three Vigil services while the gateway is driven (1 and 1000 rows)."""
    pyspy = venv / "bin" / "py-spy"
    out: dict[str, Any] = {}
    prof_dir = WORK / "profiles"
    prof_dir.mkdir(parents=True, exist_ok=True)
    vigil = ("gateway", "encoder", "predictor")
    for key, conc, services in (
        ("e2e_1", 16, vigil),
        ("e2e_1000", 2, vigil),
        ("predictor_1", 16, ("predictor",)),
        ("encoder_1", 16, ("encoder",)),
    ):
        case = cases.get(key)
        if case is None or (key not in ("e2e_1", "e2e_1000") and len(cases) > 4):
            continue  # the services alone are profiled in a --only run
        recorders = {}
        for svc in services:
            raw = prof_dir / f"{key}-{svc}.txt"
            recorders[svc] = (
                raw,
                subprocess.Popen(
                    [
                        str(pyspy),
                        "record",
                        "-p",
                        str(pids[svc]),
                        "-d",
                        str(int(plan.profile_s)),
                        "-r",
                        "200",
                        "--gil",
                        "--full-filenames",
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                ),
            )
        time.sleep(0.5)
        mode, param = ("open", open_rate) if open_rate else ("closed", conc)
        run = run_loadgen(
            case,
            mode,
            param,
            Plan(
                **{
                    **plan.__dict__,
                    "open_s": plan.profile_s - 1.5,
                    "closed_s": plan.profile_s - 1.5,
                    "warmup_s": 0.5,
                }
            ),
            pids,
            tag="prof",
        )
        for svc, (raw, rec) in recorders.items():
            try:
                _, err = rec.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                rec.kill()
                err = b""
            if not raw.exists():
                out.setdefault(key, {})[svc] = {"error": err.decode(errors="replace")[-300:]}
                continue
            out.setdefault(key, {})[svc] = summarise_profile(raw)
        out[key]["run"] = {k: run.get(k) for k in ("p50_ms", "p99_ms", "rate_rps", "rows_per_s")}
    return out


def summarise_profile(raw: Path, top: int = 12) -> dict[str, Any]:
    """Where a service's CPU went, from py-spy's collapsed stacks (``--gil``: only samples of the
    thread holding the GIL, so waiting is left out): shares by package, by function (self), and
    the service's own functions with what they call (inclusive)."""
    self_count: dict[str, int] = {}
    pkg_count: dict[str, int] = {}
    own_count: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        leaf_name, leaf_pkg = _frame(frames[-1])
        self_count[leaf_name] = self_count.get(leaf_name, 0) + n
        pkg_count[leaf_pkg] = pkg_count.get(leaf_pkg, 0) + n
        for name in {name for name, pkg in map(_frame, frames) if pkg.startswith("vigil_")}:
            own_count[name] = own_count.get(name, 0) + n

    def ranked(counts: dict[str, int], k: int = top) -> list[list[Any]]:
        return [
            [name, round(100.0 * c / total, 1)]
            for name, c in sorted(counts.items(), key=lambda kv: -kv[1])[:k]
        ]

    return {
        "samples": total,
        "packages": ranked(pkg_count),
        "self": ranked(self_count),
        "own_inclusive": ranked(own_count, 15),
    }


def _frame(frame: str) -> tuple[str, str]:
    """``func (/path/to/pkg/module.py:123)`` -> (``func (pkg/module.py)``, package)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
    elif any(p.startswith("vigil_") for p in parts):
        rest = parts[next(i for i, p in enumerate(parts) if p.startswith("vigil_")) :]
    elif "python3.11" in parts:
        rest = parts[parts.index("python3.11") + 1 :]
    else:
        rest = parts[-1:]
    package = rest[0].removesuffix(".py") if rest else "?"
    if name == "Runner.run" and package == "asyncio":
        name, package = "event loop (uvloop, C)", "uvloop"
    short = "/".join(rest[-2:]) if len(rest) > 1 else "/".join(rest)
    return f"{name} ({short})", package


# --------------------------------------------------------------------------------------------
# the run


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": psutil.virtual_memory().total / 2**30,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": _code_state(),
    }


def _code_state() -> str:
    """The commit measured, and whether the services or libs had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services", "libs"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (f" + {len(dirty)} uncommitted changes in services/ and libs/" if dirty else "")


def _command() -> str:
    exe = Path(PROJECT_PY)
    try:
        exe_s = str(exe.relative_to(ROOT))
    except ValueError:
        exe_s = str(exe)
    return shlex.join([exe_s, "-m", "bench.run", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~3-minute smoke run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the Vigil services with py-spy under load",
    )
    parser.add_argument(
        "--profile-open-rate",
        type=float,
        default=0.0,
        help="profile under an open loop at this rate (req/s) instead of the "
        "closed loop (where a light load's latency goes)",
    )
    parser.add_argument(
        "--reuse-world",
        action="store_true",
        help="reuse today's world in .bench/work (skips generate/train)",
    )
    parser.add_argument(
        "--mlserver-workers",
        type=int,
        default=0,
        help="MLServer parallel_workers (0 = inference in the server process, "
        "its fastest setting on 2 cores; MLServer's default is 1)",
    )
    parser.add_argument(
        "--mlserver-default-threads",
        action="store_true",
        help="leave XGBoost's thread count to MLServer (all cores) instead of "
        "OMP_NUM_THREADS=1, the predictor's setting",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: write the report again from the last run's "
        ".bench/work/results.json (its command stays the one that measured)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated case keys (e.g. e2e_1,predictor_1,mlserver_1): "
        "measure just those, print the figures, write no report (a "
        "side-by-side check while optimising; results in "
        ".bench/work/partial.json)",
    )
    parser.add_argument(
        "--feast-workers",
        default="1,2",
        help="comma-separated gunicorn worker counts of feast serve, one "
        "instance and one pair of cases (feastNw_1, feastNw_100) each; the "
        "targets are judged against the best of them (default 1,2)",
    )
    parser.add_argument(
        "--batch-concurrency",
        default="",
        help="comma-separated closed-loop concurrencies of the batch cases "
        "instead of the plan's (e.g. 2,4,8)",
    )
    parser.add_argument(
        "--no-restore",
        action="store_true",
        help="measure each case on the store the previous ones left, instead of putting the "
        "store as set up back before each (the old behaviour, for comparison)",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--img", default=str(ROOT / "docs" / "img" / "latency_percentiles.png"))
    args = parser.parse_args(argv)
    if args.render_only:
        write_report(
            json.loads((WORK / "results.json").read_text()),
            Path(args.out),
            Path(args.img),
            BENCH / "venv-peers" / "bin" / "python",
        )
        return 0
    plan = QUICK if args.quick else FULL
    feast_workers = tuple(dict.fromkeys(int(n) for n in args.feast_workers.split(",") if n))
    if not feast_workers or min(feast_workers) < 1:
        raise SystemExit("--feast-workers: one or more worker counts >= 1, e.g. 1,2")
    if args.batch_concurrency:
        plan = replace(
            plan, batch_concurrency=tuple(int(c) for c in args.batch_concurrency.split(",") if c)
        )
    started = time.monotonic()
    command = _command()
    log(f"{command}  ({plan.name} plan)")
    info = machine()
    info["loadavg_start"] = os.getloadavg()
    WORK.mkdir(parents=True, exist_ok=True)

    # Stop cleanly on SIGTERM as on Ctrl-C: the ExitStack below stops every process.
    signal.signal(signal.SIGTERM, _interrupt)

    from vigil import feast_repo
    from vigil.runner import LocalStack

    results: dict[str, Any] = {
        "plan": plan.__dict__,
        "machine": info,
        "command": command,
        "mlserver": {
            "parallel_workers": args.mlserver_workers,
            "one_thread": not args.mlserver_default_threads,
        },
        "feast_serve": {"workers": list(feast_workers)},
    }
    with ExitStack() as cleanup:
        venv = peers.peer_venv(BENCH, log)
        world = build_world(
            WORK,
            plan.n_transactions,
            seed=7,
            reuse=args.reuse_world,
            boost_rounds=plan.boost_rounds,
            log=log,
        )
        cleanup.callback(world.redis.stop)
        results["world"] = {"transactions": world.n_transactions, "timings_s": world.timings}
        results["stream_seed"] = seed_stream(world)
        # The store as set up, before anything has gone through the gateway: every case starts
        # from it (bench/store_snapshot.py).
        snapshot = None if args.no_restore else snapshot_store(world)

        log("starting Vigil's stack (LocalStack), feast serve, MLServer and the floors")
        # The services' logs (an access line per request) are of this run only: appended to run
        # after run, they had grown to hundreds of MB.
        for old_log in (WORK / "logs" / "stack").glob("*.log"):
            old_log.unlink()
        stack = LocalStack(
            world.repo,
            world.models_dir,
            WORK / "logs" / "stack",
            redis_url=world.redis.url,
            key_limits=BENCH_KEY_LIMITS,
            with_streamer=True,  # every e2e figure is measured with the stream on
        )
        cleanup.callback(stack.stop)
        stack.start(timeout=90)
        config = feast_repo.config_path(world.repo)
        constant = peers.floor(WORK, "bench.floor_app:create_app", "floor")
        redis_read = peers.floor(
            WORK,
            "bench.floor_app:create_redis_read_app",
            "floor (Redis read)",
            env={"FLOOR_REDIS_URL": world.redis.url},
        )
        # One feast serve per worker count, all up for the whole run like every other server;
        # only one case is ever under load at a time (see measure_cases), and an idle
        # instance's CPU in every run is recorded with the others' (server_cpu_s).
        feasts = {
            peers.feast_process_name(n): peers.feast_serve(world.repo, config, WORK, n)
            for n in feast_workers
        }
        others = {  # started in this order: the three-hop front calls the two floors before it
            **feasts,
            "mlserver": peers.mlserver(
                venv,
                world.booster_path,
                WORK,
                args.mlserver_workers,
                one_thread=not args.mlserver_default_threads,
            ),
            "floor": constant,
            "floor (FastAPI)": peers.floor(
                WORK, "bench.floor_app:create_fastapi_app", "floor-fastapi"
            ),
            "floor (Redis read)": redis_read,
            "floor (V2)": peers.floor(
                WORK,
                "bench.floor_app:create_v2_scoring_app",
                "floor (V2)",
                env={"FLOOR_BOOSTER": str(world.booster_path)},
            ),
            "floor (3 hops)": peers.floor(
                WORK,
                "bench.floor_app:create_three_hops_app",
                "floor (3 hops)",
                env={
                    "FLOOR_FIRST_URL": f"{redis_read.base_url}/",
                    "FLOOR_SECOND_URL": f"{constant.base_url}/",
                },
            ),
        }
        others["gateway (no auth)"] = _gateway_without_auth(stack)
        for m in others.values():
            cleanup.callback(m.stop)
            m.start(timeout=120)
        urls = {name: svc.url for name, svc in stack.services.items()}
        urls.update({name: m.base_url for name, m in others.items()})
        pids = {name: svc.process.pid for name, svc in stack.services.items()}
        pids["redis"] = world.redis.process.pid  # type: ignore[union-attr]
        pids.update({name: m.pid for name, m in others.items()})
        results["feast_serve"]["worker_processes"] = _check_feast_workers(
            {n: feasts[peers.feast_process_name(n)].pid for n in feast_workers}
        )
        results["rss_idle_mb"] = {n: procs.rss_bytes(pid) / 1e6 for n, pid in pids.items()}

        txs = sample_transactions(world, 2000, seed=7)
        internal = {"x-vigil-internal-token": stack.secrets["internal_token"]}
        payloads = build_payloads(txs, urls["encoder"], urls["predictor"], internal)
        results["feature_width"] = payloads["width"]
        cases = define_cases(
            plan,
            urls,
            payloads,
            feast_workers,
            {"gateway": {"authorization": f"Bearer {stack.api_key}"}, "internal": internal},
        )
        only = [k for k in args.only.split(",") if k]
        if only:
            unknown = sorted(set(only) - {c.key for c in cases} - {FRESHNESS_KEY})
            if unknown:
                raise SystemExit(
                    f"--only: unknown case(s) {unknown}; known: {[c.key for c in cases]}"
                )
            cases = [c for c in cases if c.key in only]
        _check_answers(cases)
        if only:
            _redis_command(world.redis.url, "CONFIG", "RESETSTAT")
        stream = stream_watch(world, stack)
        cleanup.callback(stream.close)
        store = None
        if snapshot is not None:
            store = fresh_store(world, snapshot, stream)
            cleanup.callback(store.client.close)
        if not only or FRESHNESS_KEY in only:
            # First: without the restore (--no-restore), the only case measured on the histories
            # seeded from the world, before the e2e cases' replays have grown them.
            restored = store.before(FRESHNESS_KEY) if store is not None else None
            results["freshness"] = measure_freshness(world, stack, txs, plan, pids, stream)
            if store is not None:
                store.touched()
            if restored is not None:
                results["freshness"]["store_restore_s"] = restored["seconds"]
        measure_cases(cases, plan, pids, stream, store)
        results["stream_on"] = stream_on_summary(cases)
        if only:
            results["redis_commandstats"] = _redis_command(world.redis.url, "INFO", "commandstats")
        results["security"] = security_verdicts({c.key: c for c in cases})
        results["cases"] = {
            c.key: {"label": c.label, "group": c.group, "rows": c.rows, "runs": c.runs}
            for c in cases
        }
        if args.profile:
            if store is not None:  # the profiled runs follow each other without a restore
                store.before("profile")
            results["profile"] = profile(
                {c.key: c for c in cases}, plan, pids, venv, args.profile_open_rate
            )
        results["store"] = store.summary() if store is not None else {"restored": False}
        if only:
            (WORK / "partial.json").write_text(json.dumps(results, indent=1, default=str))
            _print_partial(results)
            print(f"\nthese figures were produced by: {command}")
            return 0
        results["inprocess"] = measure_inprocess(world, payloads, plan)
        for m in others.values():
            m.stop()
        results["image_sizes"] = sizes.measure(BENCH, log)
        results["cold_start_s"] = measure_cold_starts(stack, world, venv, config, plan)
        results["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.monotonic() - started

    (WORK / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, Path(args.out), Path(args.img), venv / "bin" / "python")
    log(f"wrote {args.out} and {args.img} in {results['elapsed_s'] / 60:.1f} min")
    print(f"\nthe report was produced by: {command}")
    return 0


def write_report(results: dict[str, Any], md_path: Path, img_path: Path, bench_py: Path) -> None:
    from bench import report

    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(report.render(results, img_path=img_path, md_path=md_path))
    img_path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(bench_py), str(ROOT / "bench" / "plot.py"), str(WORK / "results.json"), str(img_path)],
        check=True,
    )
    print(report.console_summary(results))


def _redis_command(url: str, *args: str) -> Any:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def _print_partial(results: dict[str, Any]) -> None:
    """The figures of a ``--only`` run, each service's CPU per request, and where Redis's
    time went (its ``INFO commandstats`` over the runs: calls and microseconds per command)."""
    stats = results.get("redis_commandstats") or {}
    for name, stat in sorted(stats.items(), key=lambda kv: -kv[1].get("usec", 0)):
        print(
            f"redis {name:<22} calls {stat.get('calls', 0):>9}  usec {stat.get('usec', 0):>10}  "
            f"usec/call {stat.get('usec_per_call', 0):>8.2f}"
        )
    for case in results["cases"].values():
        for run in case["runs"]:
            what = (
                f"{run['rate']:g}/s open"
                if run.get("mode") == "open"
                else f"c={run.get('concurrency', 0):g} closed"
            )
            cpu = ", ".join(f"{n} {v:.2f}" for n, v in run["server_cpu_ms_per_request"].items())
            print(
                f"{case['label'][:60]:<60} {what:<12} p50 {run['p50_ms']:6.2f} p99 "
                f"{run['p99_ms']:6.2f} ms {run['rate_rps']:7.0f} req/s  CPU ms/req: {cpu}"
            )
    from bench import report

    print(report.store_line(results))
    for line in report.stream_lines(results):
        print(line)
    for key, prof in results.get("profile", {}).items():
        for svc, summary in prof.items():
            if svc == "run" or "self" not in summary:
                continue
            print(f"\n{key} {svc}: packages {summary['packages'][:6]}")
            print(f"  self: {summary['self'][:10]}")
            print(f"  own: {summary['own_inclusive'][:10]}")


def _check_feast_workers(masters: dict[int, int]) -> dict[str, int]:
    """Each feast serve's gunicorn master has (at least) as many child processes as workers
    asked for: the first worker to answer ``/health`` made the instance ready while the others
    may still be forking, and the watcher's trees, found before each run, must hold them all."""
    found: dict[str, int] = {}
    for workers, pid in masters.items():
        deadline = time.monotonic() + 30
        while True:
            n = len(psutil.Process(pid).children())
            if n >= workers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        found[peers.feast_process_name(workers)] = n
        log(f"{peers.feast_process_name(workers)}: gunicorn master {pid}, {n} worker process(es)")
        if n < workers:
            raise RuntimeError(f"feast serve -w {workers} has {n} worker processes")
    return found


def _gateway_without_auth(stack: Any) -> procs.Managed:
    """A second gateway on the stack's encoder, predictor and Redis with authentication and rate
    limiting off (explicitly): the baseline their cost is measured against."""
    from vigil.redis_server import free_port

    spec = stack.services["gateway"].spec
    port = free_port()
    return procs.Managed(
        name="gateway (no auth)",
        cmd=[PROJECT_PY, "-m", *spec.module_args("127.0.0.1", port)],
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=WORK / "logs" / "gateway-noauth.log",
        env={
            **spec.env,
            "GATEWAY_AUTH_ENABLED": "false",
            "GATEWAY_ALLOW_AUTH_DISABLED": "true",
            "GATEWAY_RATE_LIMIT_ENABLED": "false",
        },
        cwd=ROOT,
    )


def security_verdicts(cases: dict[str, Case]) -> dict[str, Any]:
    """The targets of authentication, rate limiting and admission control, judged and logged:
    their cost at the lightest rate (<= 0.3 ms on the end-to-end p50), and under overload the
    admitted requests' p99 within 3x the light-load p99, every refusal within 5 ms, no client
    time-out, no 5xx but the documented 503."""
    out: dict[str, Any] = {}
    light = (
        next((run for run in cases["e2e_1"].runs if run.get("mode") == "open"), None)
        if "e2e_1" in cases
        else None
    )
    base = (
        next((run for run in cases["e2e_1_noauth"].runs if run.get("mode") == "open"), None)
        if "e2e_1_noauth" in cases
        else None
    )
    if light and base and light.get("rate") == base.get("rate"):
        added = light["p50_ms"] - base["p50_ms"]
        out["auth_cost_p50_ms"] = added
        out["auth_cost_ok"] = added <= 0.3
        log(
            f"auth + rate limit cost at {light['rate']:g}/s: p50 {light['p50_ms']:.2f} vs "
            f"{base['p50_ms']:.2f} ms without: {added:+.2f} ms (target <= 0.3): "
            f"{'met' if added <= 0.3 else 'MISSED'}"
        )
    overload = cases.get("e2e_overload")
    if overload and overload.runs:
        run = overload.runs[-1]
        kinds = run.get("error_kinds", {})
        other_5xx = {k: n for k, n in kinds.items() if k.startswith("http_5") and k != "http_503"}
        checks = {
            "no_client_timeouts": kinds.get("timeout", 0) == 0,
            "no_5xx_but_503": not other_5xx,
            "shed_within_5ms": run.get("shed_max_ms", 0.0) <= 5.0,
        }
        if light and "admitted_p99_ms" in run:
            checks["admitted_p99_within_3x_light"] = run["admitted_p99_ms"] <= 3 * light["p99_ms"]
        elif light:
            checks["admitted_p99_within_3x_light"] = run.get("p99_ms", 0.0) <= 3 * light["p99_ms"]
        out["overload"] = {
            "checks": checks,
            "shed": run.get("shed", 0),
            "admitted": run.get("admitted", run.get("ok")),
            "admitted_p99_ms": run.get("admitted_p99_ms"),
            "shed_max_ms": run.get("shed_max_ms"),
            "error_kinds": kinds,
            "light_p99_ms": light["p99_ms"] if light else None,
        }
        log(
            f"overload c={OVERLOAD_CONCURRENCY}: admitted {out['overload']['admitted']} (p99 "
            f"{run.get('admitted_p99_ms') or run.get('p99_ms', 0):.1f} ms, light-load p99 "
            f"{light['p99_ms'] if light else float('nan'):.1f} ms), shed {run.get('shed', 0)} (max "
            f"{run.get('shed_max_ms', 0):.1f} ms), errors {kinds}: "
            + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items())
        )
    ignoring = cases.get("e2e_overload_ignoring")
    if ignoring and ignoring.runs:  # reported, not judged: clients that break the contract
        run = ignoring.runs[-1]
        out["overload_ignoring_retry_after"] = {
            key: run.get(key)
            for key in ("admitted", "admitted_p99_ms", "shed", "shed_max_ms", "error_kinds")
        }
        log(
            f"overload c={OVERLOAD_CONCURRENCY}, clients ignoring Retry-After (not judged): "
            f"admitted {run.get('admitted', run.get('ok'))} (p99 "
            f"{run.get('admitted_p99_ms') or run.get('p99_ms', 0):.1f} ms), shed "
            f"{run.get('shed', 0)} (max {run.get('shed_max_ms', 0):.1f} ms), errors "
            f"{run.get('error_kinds', {})}"
        )
    return out


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _check_answers(cases: list[Case]) -> None:
    """One request per case before measuring: a case that cannot answer 200 is a bug here."""
    with httpx.Client(timeout=30.0) as client:
        for case in cases:
            body = case.bodies[0].replace(PLACEHOLDER, f"check-{case.key}")
            resp = client.post(
                case.url, content=body, headers={"content-type": "application/json", **case.headers}
            )
            if resp.status_code != 200:
                raise RuntimeError(f"{case.key}: {resp.status_code} {resp.text[:500]}")
            if case.check_degraded and '"degraded":true' in resp.text:
                raise RuntimeError(f"{case.key}: degraded answer {resp.text[:500]}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        sys.exit(130)
