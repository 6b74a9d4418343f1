"""Two commits' stacks side by side: the same world, the same bodies, alternating rounds.

``python -m bench.ab_stack --before f3c5d1a --after 24ddc8c [--rounds 3]`` exports both commits
with ``git archive``, builds one small world with the BEFORE tree's own code (generate, feature
tables, ``feast apply``, materialize into a private redis-server, train) and samples the
gateway's bodies from it as that tree's benchmark does. Then, round after round with the order
alternating (A B, B A, A B, ...), it starts one commit's stack as that commit's ``vigil.runner``
does (encoder, predictor, gateway, one uvicorn process each, its code first on PYTHONPATH),
measures bench.run's ``e2e_1`` case with this tree's load generator (an open loop at 50 req/s
for the p99, a closed loop at c=16 for the maximum throughput) and its ``e2e_1000`` case's closed
loop (``/score-batch`` with 1000-transaction bodies at c=4: transactions/s) and stops it. A full run's
absolute figures move with whatever else the shared machine does; rounds of both commits in the
same minutes share that, so the after/before ratios of the medians are the figure. Results go
to ``.bench/ab_stack/<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / ".bench" / "ab_stack"
ROOTS = (
    "libs/contracts",
    "libs/servicekit",
    "services/encoder",
    "services/predictor",
    "services/gateway",
    ".",
)
PLACEHOLDER = "__TXID__"
SCORE_PATH = "/v1/transactions/score"
BATCH_PATH = "/v1/transactions/score-batch"
BATCH_ROWS = 1000  # bench.run's gateway_1000 bodies: 4 of 1000 transactions
SERVICES = ("gateway", "encoder", "predictor", "redis")


# --------------------------------------------------------------------------------------------
# the pure parts (tested without a stack)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab_stack", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--before", required=True, help="the commit measured as A")
    parser.add_argument("--after", required=True, help="the commit measured as B")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per commit")
    parser.add_argument("--transactions", type=int, default=20_000, help="the world's size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--boost-rounds", type=int, default=200, help="as the full plan's model")
    parser.add_argument("--rate", type=float, default=50.0, help="the open loop's req/s")
    parser.add_argument("--open-s", type=float, default=20.0, help="measured open-loop seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="the closed loop's")
    parser.add_argument("--closed-s", type=float, default=8.0, help="measured closed-loop seconds")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="before each measured run")
    parser.add_argument(
        "--batch-concurrency", type=int, default=4, help="the batch closed loop's (0: none)"
    )
    parser.add_argument(
        "--batch-s", type=float, default=8.0, help="measured batch closed-loop seconds"
    )
    # The children this script starts in a variant's tree (its code first on PYTHONPATH).
    parser.add_argument("--build-world", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hold-stack", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def chunks(items: list[Any], size: int, count: int) -> list[list[Any]]:
    """``count`` lists of ``size`` items, cycling through ``items`` (bench.run's ``_chunks``)."""
    return [[items[(k * size + i) % len(items)] for i in range(size)] for k in range(count)]


def schedule(rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in the order measured: A B, B A, A B, ... so that neither commit is
    always the one measured first after a stack change."""
    order: list[tuple[int, str]] = []
    for k in range(rounds):
        pair = ("before", "after") if k % 2 == 0 else ("after", "before")
        order += [(k, name) for name in pair]
    return order


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per variant of each round's figures, and after/before of the medians.

    A round is ``{"max_rps": .., "p99_ms": .., "cpu_ms_per_request": {process: ms}}`` and,
    when the batch case ran, ``"batch_tx_per_s"`` (transactions/s of ``/score-batch``); a ratio
    above 1 is more throughput, a longer p99 or more CPU for ``after``."""
    batch = all("batch_tx_per_s" in r for rounds in runs.values() for r in rounds)
    medians: dict[str, dict[str, Any]] = {}
    for name, rounds in runs.items():
        cpu_names = sorted({p for r in rounds for p in r.get("cpu_ms_per_request", {})})
        medians[name] = {
            "max_rps": statistics.median(r["max_rps"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "cpu_ms_per_request": {
                p: statistics.median(
                    r["cpu_ms_per_request"][p] for r in rounds if p in r["cpu_ms_per_request"]
                )
                for p in cpu_names
            },
        }
        if batch:
            medians[name]["batch_tx_per_s"] = statistics.median(r["batch_tx_per_s"] for r in rounds)
    before, after = medians["before"], medians["after"]
    cpu_ratio = {
        p: after["cpu_ms_per_request"][p] / v
        for p, v in before["cpu_ms_per_request"].items()
        if v > 0 and p in after["cpu_ms_per_request"]
    }
    ratios = {
        "max_rps": after["max_rps"] / before["max_rps"],
        "p99_ms": after["p99_ms"] / before["p99_ms"],
        "cpu_ms_per_request": cpu_ratio,
    }
    if batch:
        ratios["batch_tx_per_s"] = after["batch_tx_per_s"] / before["batch_tx_per_s"]
    # Each round's own after/before (its two stacks ran minutes apart at most): a second view
    # of the same rounds, less moved by a slow stretch that hit both commits of one round.
    pairs = list(zip(runs["before"], runs["after"], strict=True))
    keys = ("max_rps", "p99_ms", "batch_tx_per_s") if batch else ("max_rps", "p99_ms")
    paired = {key: statistics.median(a[key] / b[key] for b, a in pairs) for key in keys}
    gateway = [
        a["cpu_ms_per_request"]["gateway"] / b["cpu_ms_per_request"]["gateway"]
        for b, a in pairs
        if b["cpu_ms_per_request"].get("gateway") and a["cpu_ms_per_request"].get("gateway")
    ]
    if gateway:
        paired["gateway_cpu_ms_per_request"] = statistics.median(gateway)
    # The bar: no more than 10 % less throughput, no more than 10 % longer p99.
    within = {"max_rps": ratios["max_rps"] >= 0.9, "p99_ms": ratios["p99_ms"] <= 1.1}
    if batch:
        within["batch_tx_per_s"] = ratios["batch_tx_per_s"] >= 0.9
    return {
        "medians": medians,
        "ratios": ratios,
        "paired_ratio_medians": paired,
        "within_10pct": within,
    }


# --------------------------------------------------------------------------------------------
# children, run with a variant's tree first on PYTHONPATH (its own code, not this tree's)


def build_world(root: Path, redis_conn: str, args: argparse.Namespace) -> None:
    """The steps of that tree's ``bench.workspace.build_world`` into ``root``, materialized into
    the parent's redis-server; the gateway's bodies as that tree's ``bench.run`` samples them."""
    from types import SimpleNamespace

    os.environ["VIGIL_REDIS_CONNECTION_STRING"] = redis_conn
    from bench.workspace import _copy_repo, sample_transactions
    from vigil import feast_repo
    from vigil.pipeline import write_feature_tables
    from vigil.training import TrainConfig, train
    from vigil.world import WorldConfig, generate_world

    repo, raw = root / "feature_repo", root / "raw" / "transactions.parquet"
    timings: dict[str, float] = {}
    started = time.monotonic()
    _copy_repo(repo)
    generate_world(WorldConfig(seed=args.seed, n_transactions=args.transactions), raw)
    write_feature_tables(raw, feast_repo.offline_dir(repo))
    feast_repo.apply(repo)
    timings["generate_apply"] = time.monotonic() - started
    feast_repo.materialize(repo)
    timings["to_materialized"] = time.monotonic() - started
    config = TrainConfig(
        seed=args.seed, version="1", num_boost_round=args.boost_rounds, early_stopping_rounds=30
    )
    train(raw, repo, root / "models", config)
    timings["to_trained"] = time.monotonic() - started
    txs = sample_transactions(SimpleNamespace(raw_path=raw), 2000, seed=args.seed)  # type: ignore[arg-type]
    bodies = [json.dumps(tx) for tx in txs[:500]]  # bench.run's gateway_1
    batch = [json.dumps({"transactions": c}) for c in chunks(txs, BATCH_ROWS, 4)]  # gateway_1000
    (root / "bodies.json").write_text(
        json.dumps({"bodies": bodies, "batch_bodies": batch, "timings_s": timings})
    )


def hold_stack(root: Path, redis_url: str) -> None:
    """Start the tree's ``LocalStack`` on the world, print its URLs and pids as one JSON line,
    and stop it when stdin closes (the parent's signal, also when the parent dies)."""
    from bench.run import BENCH_KEY_LIMITS
    from vigil.runner import LocalStack

    log_dir = Path(os.environ["AB_STACK_LOG_DIR"])
    stack = LocalStack(
        root / "feature_repo",
        root / "models",
        log_dir,
        redis_url=redis_url,
        key_limits=BENCH_KEY_LIMITS,  # authentication on, as in bench.run: no rate limit hit
    )
    stack.start(timeout=90)
    try:
        urls = {name: svc.url for name, svc in stack.services.items()}
        pids = {name: svc.process.pid for name, svc in stack.services.items()}
        print(json.dumps({"urls": urls, "pids": pids, "api_key": stack.api_key}), flush=True)
        sys.stdin.read()
    finally:
        stack.stop()


# --------------------------------------------------------------------------------------------
# the parent


def log(msg: str) -> None:
    print(f"[ab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def export(commit: str, dest: Path) -> Path:
    """``git archive <commit> | tar -x -C dest``: the commit's tree, nothing of this worktree."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", commit], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def tree_env(tree: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tree / r) for r in ROOTS), **extra}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # as LocalStack: never multiprocess metrics
    return env


class Stack:
    """One variant's stack, held by a child process in that variant's tree."""

    def __init__(self, tree: Path, world: Path, redis_url: str, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "holder.log", "wb") as stderr:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--before", "-", "--after", "-"]
                + ["--hold-stack", str(world), "--redis", redis_url],
                cwd=tree,
                env=tree_env(tree, AB_STACK_LOG_DIR=str(log_dir)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.stop()
            tail = (log_dir / "holder.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the stack of {tree} did not start:\n{tail}")
        started = json.loads(line)
        self.urls: dict[str, str] = started["urls"]
        self.pids: dict[str, int] = started["pids"]
        self.headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {started['api_key']}",
        }

    def stop(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def check_answers(
    url: str, bodies: list[str], tag: str, headers: dict[str, str]
) -> list[list[Any]]:
    """The first 20 bodies scored once each: every answer a 200, none degraded; their
    (label, score) for the comparison of the variants' answers."""
    import httpx

    out: list[list[Any]] = []
    with httpx.Client(timeout=10.0) as client:
        for i, body in enumerate(bodies[:20]):
            resp = client.post(
                url + SCORE_PATH,
                content=body.replace(PLACEHOLDER, f"check-{tag}-{i}"),
                headers=headers,
            )
            if resp.status_code != 200 or resp.json().get("degraded"):
                raise RuntimeError(f"{tag}: body {i} answered {resp.status_code}: {resp.text}")
            answer = resp.json()
            out.append([answer["label"], answer["score"]])
    return out


def with_ids(body: str, prefix: str) -> str:
    """Each placeholder of ``body`` its own id, ``prefix0``, ``prefix1``, ... (as the load
    generator fills a batch body: one transaction id used twice is a 409)."""
    parts = body.split(PLACEHOLDER)
    out = [parts[0]]
    for k, part in enumerate(parts[1:]):
        out += [f"{prefix}{k}", part]
    return "".join(out)


def check_batch_answers(url: str, body: str, tag: str, headers: dict[str, str]) -> list[list[Any]]:
    """The first batch body scored once: a 200, every item a 200 and none degraded; every
    item's (label, score) in order, for the comparison of the variants' answers."""
    import httpx

    with httpx.Client(timeout=60.0) as client:
        resp = client.post(
            url + BATCH_PATH,
            content=with_ids(body, f"check-{tag}-b"),
            headers=headers,
        )
    if resp.status_code != 200:
        raise RuntimeError(f"{tag}: the batch body answered {resp.status_code}: {resp.text[:2000]}")
    results = resp.json()["results"]
    bad = [r for r in results if r["status"] != 200 or r["result"].get("degraded")]
    if bad or len(results) != BATCH_ROWS:
        raise RuntimeError(f"{tag}: {len(results)} batch items, {len(bad)} bad: {bad[:3]}")
    return [[r["result"]["label"], r["result"]["score"]] for r in results]


def answers_digest(answers: list[list[Any]]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(answers).encode()).hexdigest()


def run_loadgen(
    spec: dict[str, Any], pids: dict[str, int], work: Path, name: str
) -> dict[str, Any]:
    """This tree's load generator in its own process; the servers' CPU per answered request."""
    from bench import procs

    spec_path, out_path = work / f"{name}.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    cpu0 = {n: procs.cpu_seconds(pid) for n, pid in pids.items()}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--spec", str(spec_path), "--out", str(out_path)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=spec["warmup_s"] + spec["duration_s"] + 60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed for {name}:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    answered = max(result.get("completed_total", result["ok"]), 1)
    result["server_cpu_ms_per_request"] = {
        n: 1000.0 * (procs.cpu_seconds(pid) - cpu0[n]) / answered for n, pid in pids.items()
    }
    return result


def measure(
    stack: Stack,
    redis_pid: int,
    bodies: list[str],
    batch_bodies: list[str],
    args: argparse.Namespace,
    work: Path,
    tag: str,
) -> dict[str, Any]:
    """bench.run's e2e_1 case on one stack: the open loop, then the closed loop; then the
    closed loop of its e2e_1000 case (``/score-batch``, 1000 transactions a body)."""
    pids = {**{n: stack.pids[n] for n in ("gateway", "encoder", "predictor")}, "redis": redis_pid}
    base = {
        "url": stack.urls["gateway"] + SCORE_PATH,
        "method": "POST",
        "bodies": bodies,
        "placeholder": PLACEHOLDER,
        "rows": 1,
        "warmup_s": args.warmup_s,
        "check_degraded": True,
        "timeout_s": 10.0,
        "drain_s": 10.0,
        "headers": stack.headers,
        "fresh_timestamps": True,  # live payments, as bench.run's gateway cases
    }
    load = os.getloadavg()[0]
    answers = check_answers(stack.urls["gateway"], bodies, tag, stack.headers)
    batch_answers = (
        check_batch_answers(stack.urls["gateway"], batch_bodies[0], tag, stack.headers)
        if args.batch_concurrency
        else []
    )
    open_ = run_loadgen(
        {
            **base,
            "mode": "open",
            "rate": args.rate,
            "duration_s": args.open_s,
            "id_prefix": f"{tag}o-",
            "keep_latencies": True,
        },
        pids,
        work,
        f"{tag}-open",
    )
    closed = run_loadgen(
        {
            **base,
            "mode": "closed",
            "concurrency": args.concurrency,
            "duration_s": args.closed_s,
            "id_prefix": f"{tag}c-",
        },
        pids,
        work,
        f"{tag}-closed",
    )
    out: dict[str, Any] = {
        "max_rps": closed["rate_rps"],
        "p99_ms": open_["p99_ms"],
        "p50_ms": open_["p50_ms"],
        "open_errors": open_["errors"],
        "closed_errors": closed["errors"],
        "closed_p99_ms": closed.get("p99_ms"),
        "cpu_ms_per_request": closed["server_cpu_ms_per_request"],
        "open_cpu_ms_per_request": open_["server_cpu_ms_per_request"],
        "generator_cpu_pct_closed": closed["generator_cpu_pct"],
        "latencies_ms": open_.pop("latencies_ms", []),
        "answers": answers,
        "loadavg_before": load,
    }
    if args.batch_concurrency:
        batch = run_loadgen(
            {
                **base,
                "url": stack.urls["gateway"] + BATCH_PATH,
                "bodies": batch_bodies,
                "rows": BATCH_ROWS,
                "mode": "closed",
                "concurrency": args.batch_concurrency,
                "duration_s": args.batch_s,
                "timeout_s": 60.0,
                "id_prefix": f"{tag}b-",
            },
            pids,
            work,
            f"{tag}-batch",
        )
        out.update(
            batch_tx_per_s=batch["rows_per_s"],
            batch_rps=batch["rate_rps"],
            batch_requests=batch["requests"],
            batch_errors=batch["errors"],
            batch_p50_ms=batch.get("p50_ms"),
            batch_p99_ms=batch.get("p99_ms"),
            batch_cpu_ms_per_tx={
                n: v / BATCH_ROWS for n, v in batch["server_cpu_ms_per_request"].items()
            },
            batch_answers_sha256=answers_digest(batch_answers),
            _batch_answers=batch_answers,
        )
    return out


def pooled_p99(rounds: list[dict[str, Any]]) -> float:
    import numpy as np

    return float(np.percentile([v for r in rounds for v in r["latencies_ms"]], 99))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build_world is not None:
        build_world(args.build_world, args.redis, args)
        return 0
    if args.hold_stack is not None:
        hold_stack(args.hold_stack, args.redis)
        return 0

    from vigil.redis_server import RedisServer

    commits = {"before": _git("rev-parse", "--short", args.before)}
    commits["after"] = _git("rev-parse", "--short", args.after)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    out_dir = OUT_DIR / stamp
    (out_dir / "cases").mkdir(parents=True)
    started = time.monotonic()
    log(f"before {commits['before']}, after {commits['after']}, {args.rounds} rounds each")
    with tempfile.TemporaryDirectory(prefix="ab-stack-") as tmp:
        trees = {name: export(c, Path(tmp) / name) for name, c in commits.items()}
        world = Path(tmp) / "world"
        redis = RedisServer(log_path=out_dir / "redis.log").start()
        try:
            log(f"world: {args.transactions:,} transactions, seed {args.seed}, with {args.before}")
            subprocess.run(
                [sys.executable, __file__, "--before", "-", "--after", "-"]
                + ["--build-world", str(world), "--redis", redis.connection_string]
                + ["--transactions", str(args.transactions), "--seed", str(args.seed)]
                + ["--boost-rounds", str(args.boost_rounds)],
                cwd=trees["before"],
                env=tree_env(trees["before"]),
                check=True,
            )
            built = json.loads((world / "bodies.json").read_text())
            bodies: list[str] = built["bodies"]
            batch_bodies: list[str] = built["batch_bodies"]
            log(
                f"world built in {built['timings_s']['to_trained']:.0f} s; {len(bodies)} bodies, "
                f"{len(batch_bodies)} of {BATCH_ROWS} transactions"
            )
            assert redis.process is not None
            runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for k, name in schedule(args.rounds):
                tag = f"r{k}{name[0]}"
                stack = Stack(trees[name], world, redis.url, out_dir / "logs" / tag)
                try:
                    r = measure(
                        stack, redis.process.pid, bodies, batch_bodies, args, out_dir / "cases", tag
                    )
                finally:
                    stack.stop()
                r["round"] = k
                runs[name].append(r)
                cpu = ", ".join(f"{p} {v:.2f}" for p, v in r["cpu_ms_per_request"].items())
                log(
                    f"round {k + 1} {name:<6} ({commits[name]}): max {r['max_rps']:6.0f} req/s, "
                    f"p99 at {args.rate:g}/s {r['p99_ms']:6.2f} ms (p50 {r['p50_ms']:.2f}), "
                    f"errors {r['open_errors']}/{r['closed_errors']}; CPU ms/request: {cpu}"
                    + (
                        f"; batch c={args.batch_concurrency}: {r['batch_tx_per_s']:6.0f} tx/s "
                        f"({r['batch_rps']:.2f} req/s, p50 {r['batch_p50_ms']:.0f} ms, "
                        f"errors {r['batch_errors']})"
                        if "batch_tx_per_s" in r
                        else ""
                    )
                )
        finally:
            redis.stop()
    summary = summarise(runs)
    summary["pooled_p99_ms"] = {name: pooled_p99(rs) for name, rs in runs.items()}
    summary["same_answers"] = all(
        r["answers"] == runs["before"][0]["answers"] for rs in runs.values() for r in rs
    )
    if args.batch_concurrency:
        first = runs["before"][0]["_batch_answers"]
        summary["same_batch_answers"] = all(
            r["_batch_answers"] == first for rs in runs.values() for r in rs
        )
    for rs in runs.values():
        for r in rs:
            del r["latencies_ms"]
            r.pop("_batch_answers", None)
    result = {
        "when": stamp,
        "commits": commits,
        "command": " ".join([Path(sys.executable).name, "-m", "bench.ab_stack", *sys.argv[1:]]),
        "settings": {
            k: getattr(args, k)
            for k in ("rounds", "transactions", "seed", "boost_rounds", "rate", "open_s")
            + ("concurrency", "closed_s", "warmup_s", "batch_concurrency", "batch_s")
        },
        "cpus": os.cpu_count(),
        "elapsed_s": time.monotonic() - started,
        "rounds": runs,
        **summary,
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    print_summary(result)
    print(f"\nwritten to {out_dir / 'result.json'}")
    return 0


def print_summary(result: dict[str, Any]) -> None:
    med, ratios, ok = result["medians"], result["ratios"], result["within_10pct"]
    c = result["commits"]
    rate = result["settings"]["rate"]
    print(f"\nmedians of {result['settings']['rounds']} rounds each (after/before):")
    print(
        f"  max throughput (c={result['settings']['concurrency']}): "
        f"{med['before']['max_rps']:.0f} ({c['before']}) -> {med['after']['max_rps']:.0f} "
        f"({c['after']}) req/s: x{ratios['max_rps']:.3f} "
        f"({'within' if ok['max_rps'] else 'NOT within'} 10 %)"
    )
    print(
        f"  p99 at {rate:g} req/s: {med['before']['p99_ms']:.2f} -> {med['after']['p99_ms']:.2f} "
        f"ms: x{ratios['p99_ms']:.3f} ({'within' if ok['p99_ms'] else 'NOT within'} 10 %); "
        f"pooled over the rounds {result['pooled_p99_ms']['before']:.2f} -> "
        f"{result['pooled_p99_ms']['after']:.2f} ms"
    )
    for p, v in ratios["cpu_ms_per_request"].items():
        print(
            f"  CPU per request at c=16, {p}: {med['before']['cpu_ms_per_request'][p]:.3f} -> "
            f"{med['after']['cpu_ms_per_request'][p]:.3f} ms: x{v:.3f}"
        )
    if "batch_tx_per_s" in ratios:
        print(
            f"  batch throughput (/score-batch, {BATCH_ROWS} transactions a body, "
            f"c={result['settings']['batch_concurrency']}): "
            f"{med['before']['batch_tx_per_s']:.0f} -> {med['after']['batch_tx_per_s']:.0f} "
            f"transactions/s: x{ratios['batch_tx_per_s']:.3f} "
            f"({'within' if ok['batch_tx_per_s'] else 'NOT within'} 10 %)"
        )
    paired = result["paired_ratio_medians"]
    print(
        "  median of the rounds' own after/before: max throughput "
        f"x{paired['max_rps']:.3f}, p99 x{paired['p99_ms']:.3f}"
        + (
            f", gateway CPU per request x{paired['gateway_cpu_ms_per_request']:.3f}"
            if "gateway_cpu_ms_per_request" in paired
            else ""
        )
        + (f", batch x{paired['batch_tx_per_s']:.3f}" if "batch_tx_per_s" in paired else "")
    )
    print(f"  the same (label, score) for the check bodies: {result['same_answers']}")
    if "same_batch_answers" in result:
        print(f"  ... and for every item of a batch body: {result['same_batch_answers']}")


if __name__ == "__main__":
    sys.exit(main())
