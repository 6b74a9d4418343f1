"""Judging a model only on what was known at the label cutoff.

A fraud is known once its chargeback has arrived. Every figure a model card gives is computed
against that rule (:func:`known_labels`), so it can be recomputed from the raw data and the
cutoff recorded in the artifact, and it never uses the simulator's truth. The price is the
label wait: rows younger than it are left out, because most of their chargebacks are still to
come. :func:`label_wait` chooses it from delays observed before the cutoff.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from vigil.costs import CostMatrix, cost_breakdown

LABEL_RULE = "fraud = chargeback_timestamp is not null and chargeback_timestamp <= cutoff"
"""The label every split (train, validation, test) and every figure uses."""

MIN_COHORT_CHARGEBACKS = 30
"""Fewer chargebacks than this in the complete cohort: too few to take a quantile from."""

AMOUNT_BANDS = [
    (0, 10, "<10"),
    (10, 100, "10-100"),
    (100, 1000, "100-1000"),
    (1000, np.inf, ">=1000"),
]


def known_labels(raw: pd.DataFrame, cutoff: pd.Timestamp) -> pd.Series:
    """1 where the transaction's chargeback had arrived by ``cutoff`` (:data:`LABEL_RULE`)."""
    cb = raw["chargeback_timestamp"]
    return (cb.notna() & (cb <= cutoff)).astype(int)


def label_wait(
    raw: pd.DataFrame,
    cutoff: pd.Timestamp,
    chargeback_window_days: float,
    quantile: float,
    given_days: float | None = None,
) -> dict[str, Any]:
    """How long to wait before a transaction's label is trusted, and why.

    Chargebacks may arrive up to ``chargeback_window_days`` after the payment (the card scheme's
    dispute window, a documented business fact). So for payments older than that window at the
    cutoff every chargeback is in, and their delays are a complete, uncensored sample: the wait
    is its ``quantile``, rounded up to whole days. Delays of younger payments would be cut short
    by the cutoff and would make the wait look shorter than it is, so they are not used.
    Without enough such payments the wait is the whole dispute window. ``given_days`` overrides
    the choice (the caller's own wait); the share of the cohort within it is still reported.
    """
    cb = raw["chargeback_timestamp"]
    ts = raw["event_timestamp"]
    complete = (
        (ts <= cutoff - pd.Timedelta(days=chargeback_window_days)) & cb.notna() & (cb <= cutoff)
    )
    delays = ((cb[complete] - ts[complete]).dt.total_seconds() / 86_400).to_numpy()
    n = len(delays)
    out: dict[str, Any] = {
        "chargeback_window_days": chargeback_window_days,
        "quantile": quantile,
        "cohort": f"payments at least {chargeback_window_days:g} days old at the cutoff",
        "cohort_chargebacks": n,
    }
    if n:
        out["cohort_delay_days"] = {
            "median": round(float(np.median(delays)), 1),
            "p95": round(float(np.quantile(delays, 0.95)), 1),
            "max": round(float(delays.max()), 1),
        }
    if given_days is not None:
        days = float(given_days)
        out["method"] = "given by the caller (TrainConfig.label_maturity_days)"
    elif n >= MIN_COHORT_CHARGEBACKS:
        days = float(math.ceil(np.quantile(delays, quantile)))
        out["method"] = (
            f"p{quantile * 100:g} of the chargeback delays of the complete cohort, "
            "rounded up to whole days"
        )
    else:
        days = float(chargeback_window_days)
        out["method"] = (
            f"the whole dispute window: only {n} chargebacks in the complete cohort "
            f"(fewer than {MIN_COHORT_CHARGEBACKS})"
        )
    out["days"] = days
    out["cohort_share_within_wait"] = float(np.mean(delays <= days)) if n else None
    return out


def aucs(y: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    if len(np.unique(y)) < 2:
        return {"roc_auc": None, "pr_auc": None}
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
    }


def rates(y: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    tp = float(np.sum(flagged & (y == 1)))
    n_flag = float(np.sum(flagged))
    n_pos = float(np.sum(y == 1))
    return {
        "precision": tp / n_flag if n_flag else 0.0,
        "recall": tp / n_pos if n_pos else 0.0,
        "alert_rate": n_flag / len(y) if len(y) else 0.0,
    }


def value_figures(
    y: np.ndarray, amount: np.ndarray, action: np.ndarray, costs: CostMatrix
) -> dict[str, Any]:
    """Money, not counts: fraud stopped, good customers' money declined, and the total cost."""
    fraud, good = y == 1, y == 0
    caught, declined = action >= 1, action == 2
    fraud_amount = float(amount[fraud].sum())
    return {
        "n": len(y),
        "known_fraud": int(fraud.sum()),
        "fraud_amount": fraud_amount,
        "fraud_amount_stopped": float(amount[fraud & caught].sum()),
        "fraud_amount_stopped_share": (
            float(amount[fraud & caught].sum()) / fraud_amount if fraud_amount else None
        ),
        "fraud_amount_declined_share": (
            float(amount[fraud & declined].sum()) / fraud_amount if fraud_amount else None
        ),
        "declines": int(declined.sum()),
        "good_declined": int((good & declined).sum()),
        "good_declined_amount": float(amount[good & declined].sum()),
        "good_share_of_declines": (
            float((good & declined).sum()) / float(declined.sum()) if declined.any() else None
        ),
        "reviews": int((action == 1).sum()),
        "cost": cost_breakdown(y, amount, action, costs),
    }


def coverage(frame: pd.DataFrame, mechanisms: tuple[str, ...]) -> dict[str, int]:
    """Known frauds per fraud type (the type an investigation put on each known fraud)."""
    known = frame[frame["label"] == 1]
    counts = known["fraud_mechanism"].value_counts()
    return {m: int(counts.get(m, 0)) for m in mechanisms}


def slices(
    frame: pd.DataFrame,
    action_all: np.ndarray,
    costs: CostMatrix,
    mechanisms: tuple[str, ...],
) -> dict[str, dict[str, Any]]:
    """Figures per fraud type, channel and amount band; ``frame`` has label, score, amount;
    ``action_all`` is each row's action as served (``decide``'s codes: 0 approve, 1 review,
    2 decline), so a channel's slice shows what its own thresholds do.

    A fraud-type slice is that type's known frauds against every known-good row (which fraud
    type a good row "belongs to" means nothing); a slice without known fraud says so.
    """
    out: dict[str, dict[str, Any]] = {}
    y_all = frame["label"].to_numpy()
    good = y_all == 0
    for m in mechanisms:
        sel = good | ((y_all == 1) & (frame["fraud_mechanism"] == m).to_numpy())
        out[f"fraud_type={m}"] = _slice(frame[sel], action_all[sel], costs, fraud_only_value=True)
    bands = pd.cut(
        frame["amount"],
        [b[0] for b in AMOUNT_BANDS] + [np.inf],
        right=False,
        labels=[b[2] for b in AMOUNT_BANDS],
    )
    for kind, keys in (("channel", frame["channel"]), ("amount", bands)):
        for key in sorted(keys.dropna().unique(), key=str):
            sel = (keys == key).to_numpy()
            out[f"{kind}={key}"] = _slice(frame[sel], action_all[sel], costs)
    return out


def _slice(
    part: pd.DataFrame,
    action: np.ndarray,
    costs: CostMatrix,
    fraud_only_value: bool = False,
) -> dict[str, Any]:
    y, s = part["label"].to_numpy(), part["score"].to_numpy()
    amount = part["amount"].to_numpy(dtype=np.float64)
    entry: dict[str, Any] = {"n": len(part), "fraud": int(y.sum()), **aucs(y, s)}
    for name, flagged in (("suspicious_or_above", action >= 1), ("highly_suspicious", action == 2)):
        entry.update({f"{name}_{k}": v for k, v in rates(y, flagged).items()})
    value = value_figures(y, amount, action, costs)
    if fraud_only_value:  # the good rows are shared by every fraud-type slice
        value = {
            k: value[k]
            for k in (
                "known_fraud",
                "fraud_amount",
                "fraud_amount_stopped",
                "fraud_amount_stopped_share",
                "fraud_amount_declined_share",
            )
        }
    entry["value"] = value
    entry["no_known_fraud"] = bool(y.sum() == 0)
    return entry
