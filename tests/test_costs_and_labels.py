"""The cost matrix's threshold search and the label wait, on hand-made data (no Feast, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vigil.costs import NEVER, CostMatrix, choose_cost_thresholds, cost_breakdown, decide
from vigil.evaluation import MIN_COHORT_CHARGEBACKS, known_labels, label_wait


def _brute_force(y, amount, score, costs):
    cands = sorted(set(score.tolist())) + [NEVER]
    best = np.inf
    for s in cands:
        for h in cands:
            if s > h:
                continue
            action = decide(score, {"suspicious": s, "highly_suspicious": h})
            if (action == 1).sum() <= costs.max_review_rate * len(y):
                best = min(best, cost_breakdown(y, amount, action, costs)["total"])
    return best


@pytest.mark.parametrize("review_rate", [0.05, 0.2, 1.0])
def test_cost_thresholds_are_the_cheapest_pair_within_the_review_budget(review_rate):
    rng = np.random.default_rng(3)
    costs = CostMatrix(max_review_rate=review_rate)
    for _ in range(15):
        n = 80
        y = (rng.random(n) < 0.2).astype(int)
        amount = rng.lognormal(3.0, 1.2, n)
        score = np.round(np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 0.99), 2)  # ties on purpose
        th, total = choose_cost_thresholds(y, amount, score, costs)
        action = decide(score, th)
        assert (action == 1).sum() <= review_rate * n
        assert cost_breakdown(y, amount, action, costs)["total"] == pytest.approx(total)
        assert total == pytest.approx(_brute_force(y, amount, score, costs))
        assert th["suspicious"] <= th["highly_suspicious"]


def test_thresholds_weigh_money_not_counts():
    """Two frauds of 1.00 are not worth declining ten good customers' 500s; one of 5,000 is."""
    score = np.array([0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8])
    y = np.array([1, 1] + [0] * 10)
    costs = CostMatrix(max_review_rate=0.0)
    cheap = np.array([1.0, 1.0] + [500.0] * 10)
    th, _ = choose_cost_thresholds(y, cheap, score, costs)
    assert th["highly_suspicious"] >= 0.9  # only the top pair (or nothing) is declined
    y2 = np.array([0] * 10 + [1, 0])
    score2 = np.array([0.8] * 10 + [0.7, 0.1])
    dear = np.array([500.0] * 10 + [5000.0, 10.0])
    th2, _ = choose_cost_thresholds(y2, dear, score2, costs)
    assert th2["highly_suspicious"] == pytest.approx(0.7)  # 10 x 55 declined < 5,000 lost


def _payments(delays_days: np.ndarray, ages_days: np.ndarray, cutoff: pd.Timestamp) -> pd.DataFrame:
    ts = cutoff - pd.to_timedelta(ages_days, unit="D")
    return pd.DataFrame(
        {"event_timestamp": ts, "chargeback_timestamp": ts + pd.to_timedelta(delays_days, unit="D")}
    )


def test_label_wait_is_the_quantile_of_the_complete_cohort_only():
    cutoff = pd.Timestamp("2026-12-01", tz="UTC")
    rng = np.random.default_rng(0)
    old = _payments(rng.uniform(2, 50, 400), rng.uniform(61, 100, 400), cutoff)
    # Young payments' long delays are not in yet; they must not pull the wait down.
    young = _payments(rng.uniform(2, 50, 400), rng.uniform(0, 59, 400), cutoff)
    raw = pd.concat([old, young], ignore_index=True)
    wait = label_wait(raw, cutoff, chargeback_window_days=60, quantile=0.95)
    expected = np.ceil(
        np.quantile(
            (old["chargeback_timestamp"] - old["event_timestamp"]).dt.total_seconds() / 86_400, 0.95
        )
    )
    assert wait["days"] == expected
    assert wait["cohort_chargebacks"] == 400
    assert wait["cohort_share_within_wait"] >= 0.95
    assert known_labels(raw, cutoff).sum() < len(raw)  # young ones with late chargebacks unknown


def test_label_wait_falls_back_to_the_dispute_window_or_takes_the_callers():
    cutoff = pd.Timestamp("2026-12-01", tz="UTC")
    few = _payments(
        np.full(MIN_COHORT_CHARGEBACKS - 1, 10.0), np.full(MIN_COHORT_CHARGEBACKS - 1, 70.0), cutoff
    )
    wait = label_wait(few, cutoff, chargeback_window_days=60, quantile=0.95)
    assert wait["days"] == 60 and "dispute window" in wait["method"]
    given = label_wait(few, cutoff, chargeback_window_days=60, quantile=0.95, given_days=7)
    assert given["days"] == 7 and "caller" in given["method"]
    assert given["cohort_share_within_wait"] == 0.0
