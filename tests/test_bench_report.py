"""The benchmark report judges each target against feast serve at its better worker count, and
renders the decision stream's figures (freshness, the streamer's backlog).

feast serve runs once per gunicorn worker count (``feast1w_1``, ``feast2w_1``, ...); every target
that compares with it takes the better figure of them (the lower p99, the higher throughput) and
names the count. An older results.json (one instance, ``feast_1`` / ``feast_100``) still renders.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from bench import report


def _run(
    mode: str,
    param: float,
    rows: int,
    p99: float,
    rps: float,
    cpu: dict[str, float] | None = None,
    rounds: list[float] | None = None,
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "mode": mode,
        "rate": param if mode == "open" else 0.0,
        "concurrency": int(param) if mode == "closed" else 0,
        "rows": rows,
        "p50_ms": p99 / 2,
        "p95_ms": p99 * 0.8,
        "p99_ms": p99,
        "p999_ms": p99 * 1.2,
        "max_ms": p99 * 1.5,
        "rate_rps": rps,
        "rows_per_s": rps * rows,
        "errors": 0,
        "error_kinds": {},
        "generator_cpu_pct": 10.0,
        "loadavg_before": 0.5,
        "server_cpu_ms_per_request": cpu or {},
        "server_cpu_s": {},
        "rss_peak_mb": {},
    }
    if rounds is not None:
        run["round_p99_ms"] = rounds
    return run


def _case(label: str, group: str, rows: int, *runs: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "group": group, "rows": rows, "runs": list(runs)}


VIGIL_CPU = {"gateway": 0.7, "encoder": 0.3, "predictor": 0.3, "redis": 0.1}


def _results() -> dict[str, Any]:
    """-w 1 has the lower p99 at 50 req/s, -w 2 the lower at 100 and the higher throughputs."""
    w1, w2 = "feast serve -w 1", "feast serve -w 2"
    return {
        "command": ".venv/bin/python -m bench.run --quick",
        "machine": {
            "date": "2026-12-06 10:00 UTC",
            "nproc": 2,
            "cpu_model": "test",
            "ram_gb": 1.0,
            "python": "3.11",
            "platform": "test",
            "loadavg_start": [0.1, 0.1, 0.1],
        },
        "plan": {
            "name": "quick",
            "open_s": 4.0,
            "closed_s": 2.0,
            "warmup_s": 1.0,
            "open_rounds": 2,
        },
        "world": {"transactions": 20000},
        "elapsed_s": 240.0,
        "feast_serve": {"workers": [1, 2], "worker_processes": {w1: 1, w2: 2}},
        "cases": {
            "e2e_1": _case(
                "e2e",
                "vigil",
                1,
                _run("open", 50, 1, 6.0, 50, VIGIL_CPU, [6.0, 6.0]),
                _run("open", 100, 1, 6.0, 100, VIGIL_CPU, [6.0, 6.0]),
                _run("closed", 16, 1, 20.0, 1100, VIGIL_CPU),
            ),
            "e2e_1000": _case(
                "e2e 1000", "vigil", 1000, _run("closed", 2, 1000, 150.0, 30, VIGIL_CPU)
            ),
            "feast1w_1": _case(
                "feast -w 1",
                "peer",
                1,
                _run("open", 50, 1, 8.0, 50, {w1: 4.5}, [8.0, 8.0]),
                _run("open", 100, 1, 12.0, 100, {w1: 4.5}, [12.0, 12.0]),
                _run("closed", 1, 1, 8.0, 190, {w1: 4.5}),
                _run("closed", 16, 1, 200.0, 150, {w1: 4.5}),
            ),
            "feast2w_1": _case(
                "feast -w 2",
                "peer",
                1,
                _run("open", 50, 1, 9.0, 50, {w2: 4.6}, [9.0, 9.0]),
                _run("open", 100, 1, 10.0, 100, {w2: 4.6}, [10.0, 10.0]),
                _run("closed", 16, 1, 60.0, 400, {w2: 4.6}),
            ),
            "feast1w_100": _case(
                "feast -w 1, 100", "peer", 100, _run("closed", 2, 100, 90.0, 20, {w1: 370.0})
            ),
            "feast2w_100": _case(
                "feast -w 2, 100", "peer", 100, _run("closed", 2, 100, 90.0, 40, {w2: 370.0})
            ),
        },
    }


def _by_target(results: dict[str, Any]) -> dict[str, report.Verdict]:
    return {v.target: v for v in report.verdicts(results)}


def test_better_peer_takes_the_lower_p99_or_the_higher_throughput() -> None:
    a, b = {"v": 8.0}, {"v": 10.0}
    low = report.better_peer([("-w 1", a), ("-w 2", b)], lambda r: r["v"], lower=True)
    high = report.better_peer([("-w 1", a), ("-w 2", b)], lambda r: r["v"], lower=False)
    assert low is not None and (low.name, low.run, low.value) == ("-w 1", a, 8.0)
    assert high is not None and (high.name, high.run, high.value) == ("-w 2", b, 10.0)
    assert low.figures == [("-w 1", 8.0), ("-w 2", 10.0)]


def test_better_peer_leaves_out_missing_and_nan_figures_and_keeps_the_first_of_a_tie() -> None:
    a, nan = {"v": 5.0}, {"v": math.nan}
    pick = report.better_peer(
        [("-w 1", None), ("-w 2", nan), ("-w 3", a)], lambda r: r["v"], lower=True
    )
    assert pick is not None and pick.name == "-w 3" and pick.figures == [("-w 3", 5.0)]
    assert report.better_peer([("-w 1", None)], lambda r: r["v"], lower=True) is None
    tie = report.better_peer(
        [("-w 1", {"v": 1.0}), ("-w 2", {"v": 1.0})], lambda r: r["v"], lower=False
    )
    assert tie is not None and tie.name == "-w 1"


def test_each_feast_target_is_taken_against_the_better_worker_count_and_names_it() -> None:
    v = _by_target(_results())
    at50 = v[
        "end-to-end single-transaction p99 <= 0.75x feast serve p99 (1 row, its better "
        "worker count), at 50 req/s"
    ]
    at100 = v[
        "end-to-end single-transaction p99 <= 0.75x feast serve p99 (1 row, its better "
        "worker count), at 100 req/s"
    ]
    peak = v["end-to-end max throughput >= 1.0x feast serve req/s (1 row, its better worker count)"]
    batch = v[
        "score-batch rows/s >= 5x feast serve's rows/s on 100-row batches (its better worker count)"
    ]
    assert at50.ratio == pytest.approx(6.0 / 8.0)  # -w 1: 8 ms < -w 2: 9 ms
    assert at50.measured.endswith(
        "against feast serve -w 1, the lower p99 of -w 1 8.00 ms and -w 2 9.00 ms"
    )
    assert at100.ratio == pytest.approx(6.0 / 10.0)  # -w 2: 10 ms < -w 1: 12 ms
    assert at100.measured.endswith(
        "against feast serve -w 2, the lower p99 of -w 1 12.00 ms and -w 2 10.00 ms"
    )
    assert peak.ratio == pytest.approx(1100 / 400)  # -w 2's 400 req/s, not -w 1's 190
    assert peak.measured.endswith(
        "against feast serve -w 2, the higher throughput of -w 1 190 req/s and -w 2 400 req/s"
    )
    assert "feast serve -w 2 4.60" in peak.why
    assert batch.ratio == pytest.approx(30_000 / 4000)  # -w 2's 4000 rows/s
    assert "against feast serve -w 2, the higher throughput" in batch.measured


def test_the_report_renders_both_worker_counts(tmp_path: Path) -> None:
    md = report.render(_results(), img_path=tmp_path / "img" / "p.png", md_path=tmp_path / "b.md")
    assert "### feast serve at each worker count" in md
    assert "| `-w 1` | 1 | 8.00 | 12.00 | 190 (c=1) | 4.50 | 2000 (c=2) |" in md
    assert "| `-w 2` | 2 | 9.00 | 10.00 | 400 (c=16) | 4.60 | 4000 (c=2) |" in md
    assert "with N = 1 and 2" in md
    assert "| feast serve -w 1 | feast serve -w 2 |" in md  # the CPU table's columns


def test_an_older_results_json_with_one_feast_serve_still_renders(tmp_path: Path) -> None:
    old = copy.deepcopy(_results())
    del old["feast_serve"]
    cases = old["cases"]
    for key in ("feast2w_1", "feast2w_100"):
        del cases[key]
    cases["feast_1"] = cases.pop("feast1w_1")
    cases["feast_100"] = cases.pop("feast1w_100")
    for case in (cases["feast_1"], cases["feast_100"]):
        for run in case["runs"]:
            # The old shape had one feast serve process: its (only) figure under the old name.
            [only] = run["server_cpu_ms_per_request"].values()
            run["server_cpu_ms_per_request"] = {"feast serve": only}
    v = _by_target(old)
    peak = v["end-to-end max throughput >= 1.0x feast serve req/s (1 row)"]
    assert peak.ratio == pytest.approx(1100 / 190)
    assert "feast serve 4.50" in peak.why
    assert peak.measured.endswith("; against feast serve")
    md = report.render(old, img_path=tmp_path / "p.png", md_path=tmp_path / "b.md")
    assert "one worker count only (`-w 1`)" in md


def _stream(max_lag: int, at_end: int, drain_s: float, drained: bool = True) -> dict[str, Any]:
    return {
        "max_lag": max_lag,
        "max_pending": 2 * max_lag,
        "max_backlog": 3 * max_lag,
        "backlog_at_end": at_end,
        "drained": drained,
        "drain_s": drain_s,
        "applied": 8000.0,
        "applied_while_draining": 900.0 if at_end else 0.0,
        "drain_rate_eps": 1000.0 if at_end else None,
    }


def _with_stream(p99_ms: float = 30.0, not_visible: int = 0) -> dict[str, Any]:
    results = copy.deepcopy(_results())
    closed = results["cases"]["e2e_1"]["runs"][-1]
    closed["stream"] = _stream(800, 900, 0.9)
    closed["server_cpu_ms_per_request"] = {**VIGIL_CPU, "streamer": 0.74}
    results["stream_on"] = {
        "e2e_1": {
            "rate_rps": 1100.0,
            "rows_per_s": 1100.0,
            "concurrency": 16,
            **closed["stream"],
            "streamer_cpu_ms_per_request": 0.74,
        },
        "e2e_1000": {
            "rate_rps": 30.0,
            "rows_per_s": 30_000.0,
            "concurrency": 2,
            **_stream(60_000, 240_000, 180.0, drained=False),
            "streamer_cpu_ms_per_request": 20.0,
        },
    }
    results["freshness"] = {
        "rate": 100.0,
        "duration_s": 45.0,
        "poll_ms": 1.0,
        "requests": 4500,
        "answered": 4500,
        "errors": {},
        "visible": 4500 - not_visible,
        "not_visible": not_visible,
        "visible_at_first_read": 3,
        "p50_ms": p99_ms / 3,
        "p95_ms": p99_ms / 1.5,
        "p99_ms": p99_ms,
        "max_ms": p99_ms * 1.2,
        "e2e_p50_ms": 4.4,
        "e2e_p99_ms": 19.4,
        "server_cpu_ms_per_request": {"streamer": 5.2},
        "stream": _stream(46, 0, 0.0),
        "target_ms": 50.0,
    }
    return results


def test_the_stream_section_renders_freshness_and_the_backlog_of_each_e2e_run(
    tmp_path: Path,
) -> None:
    md = report.render(_with_stream(), img_path=tmp_path / "p.png", md_path=tmp_path / "b.md")
    assert "## The decision stream (streamer on)" in md
    # freshness: answers, visible, at the first read, never, p50, p95, p99, max, e2e, backlog
    assert "| 4,500 | 4,500 | 3 | 0 | 10.0 | 20.0 | 30.0 | 36.0 | 4.40 / 19.40 | 46 / 92 |" in md
    assert "| e2e_1 | c=16 | 1100 | 800 | 1600 | 900 | 0.9 | 8,000 |" in md
    assert "The streamer alone (working off a backlog after a run, the gateway idle): 1,000" in md
    assert "| gateway | encoder | predictor | redis | streamer |" in md  # the CPU table's


def test_the_stream_verdicts_judge_freshness_and_keeping_up() -> None:
    v = _by_target(_with_stream())
    fresh = next(x for t, x in v.items() if t.startswith("freshness p99"))
    assert fresh.met and fresh.ratio == pytest.approx(30.0)
    up = v[
        "the streamer keeps up with the gateway's maximum throughput in requests/s (e2e_1's "
        "best closed-loop run): its backlog back to 0 within 5 s of the run's end"
    ]
    assert up.met and up.ratio == pytest.approx(0.9)
    assert "max lag 800" in up.measured
    batch = next(x for t, x in v.items() if "in transactions/s (e2e_1000's" in t)
    assert not batch.met and math.isinf(batch.ratio)
    assert "30000 transactions/s (c=2)" in batch.measured and "NOT drained 180 s" in batch.measured

    slow = _by_target(_with_stream(p99_ms=676.0))
    assert not next(x for t, x in slow.items() if t.startswith("freshness p99")).met
    # More than 1 % of the answers never visible: not met, whatever the others measured.
    unseen = _by_target(_with_stream(p99_ms=10.0, not_visible=100))
    assert math.isinf(next(x for t, x in unseen.items() if t.startswith("freshness p99")).ratio)

    # The first shape of stream_on (e2e_1's figures alone) still renders and judges.
    older = _with_stream()
    older["stream_on"] = {k: v for k, v in older["stream_on"]["e2e_1"].items() if k != "rows_per_s"}
    old_up = [x for t, x in _by_target(older).items() if t.startswith("the streamer")]
    assert len(old_up) == 1 and old_up[0].met


def test_a_results_json_without_the_stream_renders_no_stream_section(tmp_path: Path) -> None:
    md = report.render(_results(), img_path=tmp_path / "p.png", md_path=tmp_path / "b.md")
    assert "## The decision stream" not in md
    assert not report.stream_verdicts(_results())


def test_the_setup_says_whether_each_case_started_from_the_restored_store(tmp_path: Path) -> None:
    restored = copy.deepcopy(_results())
    restored["store"] = {
        "restored": True,
        "snapshot": {"keys": 41_000, "bytes": 23_400_000, "streams_left_out": 0, "seconds": 0.8},
        "restores": 30,
        "restore_s_mean": 0.41,
        "restore_s_max": 0.62,
    }
    md = report.render(restored, img_path=tmp_path / "p.png", md_path=tmp_path / "b.md")
    assert (
        "| online store | each case starts from the restored store: the 41,000 keys (23.4 MB) "
        "the world's materialization and the streamer's seeded histories left (streams not), "
        "taken in 0.80 s and put back before every run that follows one through the gateway "
        "(30 restores, 0.41 s on average, 0.62 s at most) |"
    ) in md
    no_restore = copy.deepcopy(_results())
    no_restore["store"] = {"restored": False}
    assert "not restored between cases (`--no-restore`)" in report.store_line(no_restore)
    assert "not restored between cases (a run from before" in report.store_line(_results())


def test_a_gateway_runs_flagged_share_is_its_suspicious_and_highly_suspicious_answers() -> None:
    from bench.report import flagged_share

    run = {
        "labels": {
            "not_fraud": 60.0,
            "suspicious": 30.0,
            "highly_suspicious": 6.0,
            "uncertain": 4.0,
        }
    }
    assert flagged_share(run) == "36 %"
    assert flagged_share({}) == "–" and flagged_share({"labels": {}}) == "–"
