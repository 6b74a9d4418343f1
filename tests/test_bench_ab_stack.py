"""The A/B of two commits' stacks (bench/ab_stack.py): its arguments, the alternating order of
its rounds, and the medians and after/before ratios it reports. No stack is started here."""

from __future__ import annotations

from typing import Any

import pytest

from bench import ab_stack


def test_arguments_default_to_the_full_benchmarks_e2e_1_case() -> None:
    args = ab_stack.parse_args(["--before", "f3c5d1a", "--after", "24ddc8c"])
    assert (args.before, args.after, args.rounds) == ("f3c5d1a", "24ddc8c", 3)
    assert (args.rate, args.concurrency, args.seed, args.transactions) == (50.0, 16, 7, 20_000)
    assert (args.batch_concurrency, args.batch_s) == (4, 8.0)  # e2e_1000's c=4 closed loop
    assert args.build_world is None and args.hold_stack is None
    assert ab_stack.parse_args(["--before", "a", "--after", "b", "--rounds", "5"]).rounds == 5


@pytest.mark.parametrize(
    "argv", [["--before", "a"], ["--before", "a", "--after", "b", "--rounds", "0"]]
)
def test_arguments_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        ab_stack.parse_args(argv)


def test_rounds_alternate_which_commit_goes_first() -> None:
    assert ab_stack.schedule(3) == [
        (0, "before"),
        (0, "after"),
        (1, "after"),
        (1, "before"),
        (2, "before"),
        (2, "after"),
    ]
    order = [name for _, name in ab_stack.schedule(4)]
    assert order.count("before") == order.count("after") == 4


def _round(
    rps: float, p99: float, gateway_cpu: float, batch: float | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_rps": rps,
        "p99_ms": p99,
        "cpu_ms_per_request": {"gateway": gateway_cpu, "encoder": 0.3},
    }
    if batch is not None:
        out["batch_tx_per_s"] = batch
    return out


def test_batch_bodies_cycle_like_the_full_benchmarks() -> None:
    assert ab_stack.chunks([1, 2, 3], 2, 3) == [[1, 2], [3, 1], [2, 3]]
    body = '{"transactions": [{"transaction_id": "__TXID__"}, {"transaction_id": "__TXID__"}]}'
    assert ab_stack.with_ids(body, "c-") == (
        '{"transactions": [{"transaction_id": "c-0"}, {"transaction_id": "c-1"}]}'
    )


def test_summary_is_medians_and_after_over_before() -> None:
    runs = {
        "before": [_round(1000, 6.0, 0.6), _round(1200, 9.0, 0.5), _round(1100, 7.0, 0.7)],
        "after": [_round(900, 7.0, 0.66), _round(1050, 6.5, 0.6), _round(500, 30.0, 0.7)],
    }
    out = ab_stack.summarise(runs)
    assert out["medians"]["before"]["max_rps"] == 1100
    assert out["medians"]["after"]["p99_ms"] == 7.0
    assert out["medians"]["after"]["cpu_ms_per_request"] == {"encoder": 0.3, "gateway": 0.66}
    assert out["ratios"]["max_rps"] == pytest.approx(900 / 1100)
    assert out["ratios"]["p99_ms"] == pytest.approx(1.0)
    assert out["ratios"]["cpu_ms_per_request"]["gateway"] == pytest.approx(1.1)
    assert out["within_10pct"] == {"max_rps": False, "p99_ms": True}
    # Round by round: 0.9, 0.875, 0.4545 (throughput); 1.1667, 0.7222, 4.2857 (p99).
    paired = out["paired_ratio_medians"]
    assert paired["max_rps"] == pytest.approx(0.875)
    assert paired["p99_ms"] == pytest.approx(7.0 / 6.0)
    assert paired["gateway_cpu_ms_per_request"] == pytest.approx(1.1)


def test_within_ten_percent_at_the_edges() -> None:
    runs = {"before": [_round(1000, 10.0, 0.5)], "after": [_round(900, 11.0, 0.5)]}
    assert ab_stack.summarise(runs)["within_10pct"] == {"max_rps": True, "p99_ms": True}


def test_summary_of_the_batch_case() -> None:
    runs = {
        "before": [_round(1000, 6.0, 0.6, 3000), _round(1000, 6.0, 0.6, 2000)]
        + [_round(1000, 6.0, 0.6, 2500)],
        "after": [_round(1000, 6.0, 0.6, 2400), _round(1000, 6.0, 0.6, 2200)]
        + [_round(1000, 6.0, 0.6, 1000)],
    }
    out = ab_stack.summarise(runs)
    assert out["medians"]["before"]["batch_tx_per_s"] == 2500
    assert out["medians"]["after"]["batch_tx_per_s"] == 2200
    assert out["ratios"]["batch_tx_per_s"] == pytest.approx(0.88)
    assert out["within_10pct"] == {"max_rps": True, "p99_ms": True, "batch_tx_per_s": False}
    # Round by round: 0.8, 1.1, 0.4.
    assert out["paired_ratio_medians"]["batch_tx_per_s"] == pytest.approx(0.8)
    # Without the batch case (a run with --batch-concurrency 0): the single figures only.
    single = ab_stack.summarise({k: [_round(1000, 6.0, 0.6)] for k in ("before", "after")})
    assert "batch_tx_per_s" not in single["ratios"]
    assert set(single["within_10pct"]) == {"max_rps", "p99_ms"}
