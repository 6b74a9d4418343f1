"""What a decision costs the business, and the thresholds that make it cheapest.

The three actions are the three labels: approve (`not_fraud`), review (`suspicious`: step-up
authentication or an analyst) and decline (`highly_suspicious`). Thresholds are chosen to
minimise the expected cost on labelled validation rows, so they weigh money, not counts: a
declined 2,000 purchase by a good customer costs more than a declined coffee, and a missed
card-testing probe of 1.50 costs less than a missed takeover of 900.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CostMatrix:
    """Cost of each (action, truth) pair, in the transaction's currency units.

    approve fraud: the amount (the chargeback is lost); approve good: 0.
    decline fraud: 0; decline good: ``false_decline_margin`` x amount (the lost sale's margin,
    and the share of the customer's future spend that goes elsewhere) + ``false_decline_friction``
    (the call to customer service, the embarrassment at the till).
    review either: ``review_cost`` (an analyst's minutes or a step-up's drop-off); a reviewed
    fraud is stopped.
    """

    false_decline_margin: float = 0.10
    false_decline_friction: float = 5.0
    review_cost: float = 3.0
    max_review_rate: float = 0.05
    """Analyst capacity: at most this share of transactions may be sent to review."""

    def action_costs(self, y: np.ndarray, amount: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per row: the cost if approved, if reviewed, if declined."""
        fraud = y == 1
        approve = np.where(fraud, amount, 0.0)
        review = np.full(len(y), self.review_cost, dtype=np.float64)
        decline = np.where(
            fraud, 0.0, self.false_decline_margin * amount + self.false_decline_friction
        )
        return approve, review, decline


NEVER = 1.0
"""A threshold no score reaches in practice (XGBoost's logistic output stays below 1.0)."""


#: The labels of ``label_for_score`` as the action codes :func:`decide` gives.
ACTION_CODES = {"not_fraud": 0, "suspicious": 1, "highly_suspicious": 2}


def decide(score: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """0 approve, 1 review, 2 decline: the labels of ``label_for_score`` as codes
    (:data:`ACTION_CODES`)."""
    return np.where(
        score >= thresholds["highly_suspicious"],
        2,
        np.where(score >= thresholds["suspicious"], 1, 0),
    )


def cost_breakdown(
    y: np.ndarray, amount: np.ndarray, action: np.ndarray, costs: CostMatrix
) -> dict[str, float]:
    """Total cost of the given actions, split into its parts."""
    approve, review, decline = costs.action_costs(y, amount)
    fraud = y == 1
    parts = {
        "missed_fraud": float(approve[(action == 0) & fraud].sum()),
        "false_declines": float(decline[(action == 2) & ~fraud].sum()),
        "reviews": float(review[action == 1].sum()),
    }
    parts["total"] = sum(parts.values())
    parts["per_1000_transactions"] = parts["total"] / len(y) * 1000 if len(y) else 0.0
    return parts


def choose_cost_thresholds(
    y: np.ndarray, amount: np.ndarray, score: np.ndarray, costs: CostMatrix
) -> tuple[dict[str, float], float]:
    """The (suspicious, highly_suspicious) pair with the least total cost on these rows.

    Rows sorted by score, descending: the top i are declined, the next j - i reviewed, the rest
    approved. For each j the best i is a sliding-window minimum, so the search is linear. Cuts
    fall only between distinct scores, so a threshold selects exactly the rows it was costed on.
    Returns the thresholds and their total cost.
    """
    n = len(y)
    if n == 0:
        return {"suspicious": NEVER, "highly_suspicious": NEVER}, 0.0
    order = np.argsort(-score, kind="stable")
    s = score[order]
    approve, review, decline = (c[order] for c in costs.action_costs(y, amount))
    zero = np.zeros(1)
    cum_d = np.concatenate([zero, np.cumsum(decline)])
    cum_r = np.concatenate([zero, np.cumsum(review)])
    cum_a = np.concatenate([zero, np.cumsum(approve)])
    # A cut after k rows is allowed when k == 0, k == n, or row k starts a new score.
    cut_ok = np.ones(n + 1, dtype=bool)
    cut_ok[1:n] = s[1:] != s[:-1]
    # cost(i, j) = cum_d[i] + (cum_r[j] - cum_r[i]) + (cum_a[n] - cum_a[j]): for each j the
    # best i is the smallest cum_d - cum_r over the cuts the review budget allows (j - i <= B),
    # a sliding-window minimum.
    lead = np.where(cut_ok, cum_d - cum_r, np.inf)
    budget = int(costs.max_review_rate * n)
    best_i = np.zeros(n + 1, dtype=np.int64)
    window: deque[int] = deque()
    for j in range(n + 1):
        while window and lead[window[-1]] >= lead[j]:
            window.pop()
        window.append(j)
        if window[0] < j - budget:
            window.popleft()
        best_i[j] = window[0]
    total = lead[best_i] + cum_r + (cum_a[n] - cum_a)
    total = np.where(cut_ok, total, np.inf)
    j = int(np.argmin(total))
    i = int(best_i[j])

    def threshold(cut: int) -> float:
        return NEVER if cut == 0 else float(s[cut - 1])

    th = {"suspicious": threshold(j), "highly_suspicious": threshold(i)}
    th["suspicious"] = min(th["suspicious"], th["highly_suspicious"])
    return th, float(total[j])
