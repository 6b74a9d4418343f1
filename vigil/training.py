"""Training: labelled transactions -> Feast point-in-time features -> XGBoost -> model artifact.

Every split, early stopping, the thresholds and every figure use one label: what was known at the
label cutoff (a fraud is known once its chargeback has arrived; vigil.evaluation). The last days
are left out by a label wait chosen from the chargeback delays. The split is by time; thresholds
minimise a documented cost matrix on the validation period (globally, and per channel where the
evidence supports it); the test period is judged against a rules baseline, in counts and money,
per fraud type and channel. The same seed and data give the same booster, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from vigil import feast_repo
from vigil.artifacts import write_artifact
from vigil.costs import ACTION_CODES, CostMatrix, choose_cost_thresholds, cost_breakdown, decide
from vigil.dataset import entity_frame, historical_matrix, to_float32
from vigil.evaluation import (
    LABEL_RULE,
    aucs,
    coverage,
    known_labels,
    label_wait,
    rates,
    slices,
    value_figures,
)
from vigil.model_card import render_model_card
from vigil.world import MECHANISMS
from vigil_contracts.artifact import list_versions
from vigil_contracts.segments import SEGMENT_VALUES, Labelling
from vigil_contracts.serving_spec import FeatureServiceSpec

AMOUNT_IN_EUR = "request_features__txn_amount"
DEFAULT_MODEL_NAME = "fraud_detector"
DEFAULT_FEATURE_SERVICE = "fraud_model_v1"


MONOTONE_INCREASING = (
    "request_features__amount_to_card_avg_30d",
    "request_features__amount_zscore_card_30d",
)
"""Features the business calls "more is riskier": a larger amount against the card's own habit."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 7
    model_name: str = DEFAULT_MODEL_NAME
    version: str | None = None
    """None -> one more than the highest existing version."""
    feature_service: str = DEFAULT_FEATURE_SERVICE
    warmup_days: float = 7.0
    """Skip the first days: 30-day features are immature there."""
    label_maturity_days: float | None = None
    """The label wait: skip the last days, whose chargebacks are mostly still to come. None ->
    chosen from the chargeback delays known at the cutoff (vigil.evaluation.label_wait)."""
    chargeback_window_days: float = 60.0
    """The card scheme's dispute window: no chargeback arrives later than this after a payment."""
    label_wait_quantile: float = 0.95
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    num_boost_round: int = 400
    early_stopping_rounds: int = 40
    nthread: int = 2
    params: dict[str, Any] = field(
        default_factory=lambda: {
            "objective": "binary:logistic",
            "eval_metric": "aucpr",
            "tree_method": "hist",
            "max_depth": 5,
            "eta": 0.08,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 2,
            "lambda": 1.0,
        }
    )
    costs: CostMatrix = field(default_factory=CostMatrix)
    segment_column: str = "channel"
    """Thresholds per value of this column where the validation evidence supports it; a
    transaction field the gateway segments by (``vigil_contracts.segments.SEGMENT_VALUES``)."""
    min_segment_frauds: int = 30
    """A segment gets its own thresholds only with at least this many known validation frauds."""
    segment_held_out_check: bool = True
    """...and only if a pair chosen on the earlier half of its validation period costs less on
    the later half than the global pair (False: every segment with enough frauds gets its own;
    the check's figures are still recorded)."""
    monotone_increasing: tuple[str, ...] = MONOTONE_INCREASING
    monotone_tolerance: float = 0.01
    """Keep the constraints unless they cost more than this in validation PR AUC."""
    on_missing_mechanism: str = "warn"
    """A fraud type with no known fraud in a split: "warn" (card, metadata, CLI) or "fail"."""
    serving_policy: dict[str, Any] = field(
        default_factory=lambda: {
            "max_missing_stored_fraction": 0.6,
            "stale_is_uncertain": True,
        }
    )


class TrainingError(Exception):
    """Training cannot proceed (no data in a split, one class only, unknown service...)."""


def rules_baseline(matrix: pd.DataFrame) -> np.ndarray:
    """A simple hand-written rule set a fraud team would start from; score = share of rules fired."""

    def col(name: str) -> pd.Series:
        return matrix[name].fillna(0.0)

    rules = [
        col("request_features__amount_to_card_avg_30d") > 5.0,
        col("card_windows__card_txn_count_1h") >= 5,
        (col("request_features__is_new_device") > 0)
        & (col("request_features__country_mismatch") > 0),
        (col("request_features__is_night") > 0) & (col("request_features__txn_amount") > 500),
    ]
    return np.mean(np.column_stack([r.to_numpy() for r in rules]), axis=1)


def _label_metrics(
    y: np.ndarray, score: np.ndarray, thresholds: dict[str, float]
) -> dict[str, Any]:
    return {
        "suspicious_or_above": rates(y, score >= thresholds["suspicious"]),
        "highly_suspicious": rates(y, score >= thresholds["highly_suspicious"]),
    }


def reference_stats(matrix: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """Per-feature distribution on the training set, the reference for drift monitoring."""
    stats: dict[str, dict[str, float | None]] = {}
    qs = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    for name in matrix.columns:
        col = matrix[name]
        present = col.dropna()
        entry: dict[str, float | None] = {"missing_rate": float(col.isna().mean())}
        if len(present):
            entry.update(
                mean=float(present.mean()),
                std=float(present.std(ddof=0)),
                min=float(present.min()),
                max=float(present.max()),
            )
            entry.update({f"p{int(q * 100)}": float(v) for q, v in present.quantile(qs).items()})
        stats[name] = entry
    return stats


def _next_version(models_dir: Path, name: str) -> str:
    numeric = [int(v) for v in list_versions(models_dir, name) if v.isdigit()]
    return str(max(numeric, default=0) + 1)


def _booster(
    config: TrainConfig,
    spec: FeatureServiceSpec,
    dtrain: xgb.DMatrix,
    dvalid: xgb.DMatrix,
    monotone: tuple[str, ...],
) -> tuple[xgb.Booster, dict[str, Any]]:
    params = dict(config.params, seed=config.seed, nthread=config.nthread)
    if monotone:
        params["monotone_constraints"] = (
            "(" + ",".join("1" if name in monotone else "0" for name in spec.feature_names) + ")"
        )
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=config.num_boost_round,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=config.early_stopping_rounds,
        verbose_eval=False,
    )
    # Keep exactly the best iteration so the saved booster is what was validated.
    return booster[: booster.best_iteration + 1], params


def _segment_thresholds(
    valid: pd.DataFrame, config: TrainConfig
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Thresholds per segment where the validation period supports them.

    A segment gets its own pair only with at least ``min_segment_frauds`` known frauds, and only
    if it also holds up on transactions it was not chosen on: a pair chosen on the segment's
    earlier half of the validation period must cost less on its later half than the global pair
    chosen on the same earlier half. A pair fitted to a few dozen frauds can cost more on new
    data than the global one (on the demo's world one did: 103 against 81 per 1,000 test
    transactions). An adopted segment's pair is then chosen on its whole validation period, as
    the global pair is."""
    costs = config.costs
    when = valid["event_timestamp"]
    earlier = (when <= when.quantile(0.5, interpolation="lower")).to_numpy()
    if earlier.all():  # every row at one instant: halves by row order
        earlier = np.arange(len(valid)) < len(valid) // 2

    def arrays(part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            part["label"].to_numpy(),
            part["amount"].to_numpy(dtype=np.float64),
            part["score"].to_numpy(),
        )

    global_early, _ = choose_cost_thresholds(*arrays(valid[earlier]), costs)
    own: dict[str, dict[str, float]] = {}
    evidence: dict[str, dict[str, Any]] = {}
    column = valid[config.segment_column].astype(str).to_numpy()
    for key in sorted(set(column)):
        mask = column == key
        part = valid[mask]
        y, amount, score = arrays(part)
        entry: dict[str, Any] = {"validation_rows": len(part), "known_frauds": int(y.sum())}
        evidence[key] = entry
        if y.sum() < config.min_segment_frauds:
            entry["thresholds"] = (
                f"global (fewer than {config.min_segment_frauds} known frauds in validation)"
            )
            continue
        own_early, _ = choose_cost_thresholds(*arrays(valid[mask & earlier]), costs)
        y_late, amount_late, score_late = arrays(valid[mask & ~earlier])
        held_out = {
            "rows": len(y_late),
            "known_frauds": int(y_late.sum()),
            "own_per_1000": cost_breakdown(
                y_late, amount_late, decide(score_late, own_early), costs
            )["per_1000_transactions"],
            "global_per_1000": cost_breakdown(
                y_late, amount_late, decide(score_late, global_early), costs
            )["per_1000_transactions"],
        }
        entry["held_out"] = held_out
        if (
            held_out["own_per_1000"] < held_out["global_per_1000"]
            or not config.segment_held_out_check
        ):
            own[key], _ = choose_cost_thresholds(y, amount, score, costs)
            entry["thresholds"] = "own"
        else:
            entry["thresholds"] = (
                "global (a pair of its own, chosen on the earlier half of validation, cost "
                f"{held_out['own_per_1000']:.0f} per 1,000 of its later transactions against "
                f"{held_out['global_per_1000']:.0f} with the global pair)"
            )
    return own, evidence


def served_actions(
    frame: pd.DataFrame, column: str, own: dict[str, dict[str, float]], global_th: dict[str, float]
) -> np.ndarray:
    """Each row's action (``decide``'s codes) as the gateway and the batch scorer label it: by
    its ``column`` value's own pair where it has one, else the global pair
    (``vigil_contracts.segments.Labelling``, the one rule they all use)."""
    labelling = Labelling(global_th, {column: own})
    return np.fromiter(
        (
            ACTION_CODES[labelling.label(float(score), {column: str(value)})]
            for score, value in zip(frame["score"], frame[column], strict=True)
        ),
        dtype=np.int64,
        count=len(frame),
    )


def _action_metrics(y: np.ndarray, action: np.ndarray) -> dict[str, Any]:
    """:func:`_label_metrics` of actions already taken (``decide``'s codes)."""
    return {
        "suspicious_or_above": rates(y, action >= 1),
        "highly_suspicious": rates(y, action == 2),
    }


def train(
    raw_path: Path,
    repo: Path,
    models_dir: Path,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Train a model on the raw transactions at ``raw_path`` and write its artifact."""
    spec = feast_repo.load_serving_spec(repo).feature_services.get(config.feature_service)
    if spec is None:
        raise TrainingError(f"feature service {config.feature_service!r} is not in the registry")
    if config.segment_column not in SEGMENT_VALUES:  # its pairs could not be served
        raise TrainingError(
            f"segment_column must be one of {', '.join(SEGMENT_VALUES)} (what the gateway can "
            f"segment by), got {config.segment_column!r}"
        )
    if config.on_missing_mechanism not in ("warn", "fail"):
        raise TrainingError(
            f"on_missing_mechanism must be 'warn' or 'fail', got {config.on_missing_mechanism!r}"
        )
    raw = pd.read_parquet(raw_path)
    if raw.empty:
        raise TrainingError(f"{raw_path} holds no transactions")
    start, end = raw["event_timestamp"].min(), raw["event_timestamp"].max()
    label_cutoff = end
    wait = label_wait(
        raw,
        label_cutoff,
        config.chargeback_window_days,
        config.label_wait_quantile,
        config.label_maturity_days,
    )
    progress(f"label wait {wait['days']:g} days: {wait['method']}")
    lo = start + pd.Timedelta(days=config.warmup_days)
    hi = end - pd.Timedelta(days=wait["days"])
    if hi <= lo:
        raise TrainingError(
            f"the data window ({(end - start).days} days) is too short for the warm-up "
            f"({config.warmup_days:g} days) and the label wait ({wait['days']:g} days)"
        )
    frame = raw[(raw["event_timestamp"] >= lo) & (raw["event_timestamp"] < hi)].copy()
    # One label for every split and every figure: what was known at the cutoff. The simulator's
    # truth (is_fraud) is never used; fraud_mechanism only names the type of a known fraud.
    frame["label"] = known_labels(frame, label_cutoff)

    b1 = lo + (hi - lo) * config.split[0]
    b2 = lo + (hi - lo) * (config.split[0] + config.split[1])
    ts = frame["event_timestamp"]
    parts = {
        name: mask.to_numpy()
        for name, mask in (
            ("train", ts < b1),
            ("valid", (ts >= b1) & (ts < b2)),
            ("test", ts >= b2),
        )
    }
    period = {"train": "training", "valid": "validation", "test": "test"}
    mechanisms = {name: coverage(frame[mask], MECHANISMS) for name, mask in parts.items()}
    warnings = [
        f"the {period[name]} period holds no known {m} fraud: "
        + (
            "the model never saw it"
            if name == "train"
            else "no figure on this card says how the model does on it"
        )
        for name, counts in mechanisms.items()
        for m, k in counts.items()
        if k == 0
    ]
    for w in warnings:
        progress(f"WARNING: {w}")
    if warnings and config.on_missing_mechanism == "fail":
        raise TrainingError("; ".join(warnings))
    for name, mask in parts.items():
        if frame.loc[mask, "label"].nunique() < 2:
            raise TrainingError(f"the {name} period holds a single class; generate more data")

    progress(
        f"point-in-time features for {len(frame):,} transactions (Feast get_historical_features)"
    )
    store = feast_repo.open_store(repo)
    entities = entity_frame(frame)
    matrix = historical_matrix(
        store, spec, entities, progress=lambda done, total: progress(f"  {done:,}/{total:,} rows")
    )
    frame = frame.set_index(frame["transaction_id"].astype(str))
    # Money on the card (costs, amounts stopped, bands) is in EUR, as the features compare it:
    # the amount in EUR is the model's own input (the amount as paid is in its currency).
    frame["amount_paid"] = frame["amount"]
    frame["amount"] = matrix[AMOUNT_IN_EUR].reindex(frame.index).to_numpy(dtype=np.float64)

    def dmatrix(mask: np.ndarray) -> xgb.DMatrix:
        return xgb.DMatrix(
            to_float32(matrix[mask]),
            label=frame.loc[mask, "label"].to_numpy(),
            missing=np.nan,
            feature_names=spec.feature_names,
            nthread=config.nthread,
        )

    dtrain, dvalid, dtest = dmatrix(parts["train"]), dmatrix(parts["valid"]), dmatrix(parts["test"])
    valid = frame[parts["valid"]].copy()
    test = frame[parts["test"]].copy()
    y_valid, y_test = valid["label"].to_numpy(), test["label"].to_numpy()
    amt_valid = valid["amount"].to_numpy(dtype=np.float64)
    amt_test = test["amount"].to_numpy(dtype=np.float64)
    costs = config.costs

    # Train with and without the "more is riskier" constraints; the choice is made on the
    # validation period, the test figures of both are only reported.
    monotone = tuple(f for f in config.monotone_increasing if f in spec.feature_names)
    candidates: dict[str, Any] = {}
    for variant, constraint in (("unconstrained", ()), ("monotone", monotone)):
        if variant == "monotone" and not monotone:
            continue
        progress(
            f"training XGBoost ({variant}) on {dtrain.num_row():,} rows, {dtrain.num_col()} features"
        )
        booster, params = _booster(config, spec, dtrain, dvalid, constraint)
        sv, st = booster.predict(dvalid), booster.predict(dtest)
        th, _ = choose_cost_thresholds(y_valid, amt_valid, sv, costs)
        candidates[variant] = {
            "booster": booster,
            "params": params,
            "s_valid": sv,
            "s_test": st,
            "thresholds": th,
            "report": {
                "trees": int(booster.num_boosted_rounds()),
                "validation": {
                    **aucs(y_valid, sv),
                    "cost": cost_breakdown(y_valid, amt_valid, decide(sv, th), costs)["total"],
                },
                "test": {
                    **aucs(y_test, st),
                    "cost": cost_breakdown(y_test, amt_test, decide(st, th), costs)["total"],
                },
            },
        }
    chosen = "unconstrained"
    if "monotone" in candidates:
        pr = {k: c["report"]["validation"]["pr_auc"] or 0.0 for k, c in candidates.items()}
        if pr["monotone"] >= pr["unconstrained"] - config.monotone_tolerance:
            chosen = "monotone"
    monotone_report = {
        "features": list(monotone),
        "kept": chosen == "monotone",
        "rule": (
            f"kept unless validation PR AUC drops by more than {config.monotone_tolerance} "
            "against the unconstrained model"
        ),
        "comparison": {k: c["report"] for k, c in candidates.items()},
    }
    progress(
        f"monotone constraints on {list(monotone)}: {'kept' if chosen == 'monotone' else 'dropped'}"
    )
    best = candidates[chosen]
    booster, params, s_valid, s_test = (
        best["booster"],
        best["params"],
        best["s_valid"],
        best["s_test"],
    )
    thresholds = best["thresholds"]
    valid["score"], test["score"] = s_valid, s_test
    own, evidence = _segment_thresholds(valid, config)

    base_valid = rules_baseline(matrix[parts["valid"]])
    base = rules_baseline(matrix[parts["test"]])
    base_th, _ = choose_cost_thresholds(y_valid, amt_valid, base_valid, costs)
    served_test = served_actions(test, config.segment_column, own, thresholds)
    served_valid = served_actions(valid, config.segment_column, own, thresholds)
    policies = {
        "model_global_thresholds": decide(s_test, thresholds),
        "model_segment_thresholds": served_test,
        "rules_baseline": decide(base, base_th),
        "approve_everything": np.zeros(len(y_test), dtype=np.int64),
    }
    metrics = {
        "test": {
            **aucs(y_test, s_test),
            **_label_metrics(y_test, s_test, thresholds),
            "served": _action_metrics(y_test, served_test),
            "n": len(y_test),
            "fraud": int(y_test.sum()),
        },
        "validation": {
            **aucs(y_valid, s_valid),
            **_label_metrics(y_valid, s_valid, thresholds),
            "served": _action_metrics(y_valid, served_valid),
            "n": len(y_valid),
            "fraud": int(y_valid.sum()),
        },
        "baseline_rules_test": {
            **aucs(y_test, base),
            **rates(y_test, base > 0),
            "thresholds": base_th,
        },
        "value_test": {k: value_figures(y_test, amt_test, a, costs) for k, a in policies.items()},
        "slices_test": slices(test, served_test, costs, MECHANISMS),
        # The labels as served (each channel's own pair where it has one).
        "label_distribution_test": {
            lbl: int(np.sum(served_test == code)) for lbl, code in ACTION_CODES.items()
        },
    }

    version = config.version or _next_version(models_dir, config.model_name)
    model_dir = models_dir / config.model_name / version
    if model_dir.exists():
        raise TrainingError(f"{model_dir} exists already: versions are immutable")
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    metadata = {
        "name": config.model_name,
        "version": version,
        "created_at": datetime.now(UTC).strftime(fmt),
        "framework": {"xgboost": xgb.__version__},
        "feature_service": spec.name,
        "feature_names": spec.feature_names,
        "feature_spec": spec.model_dump(),
        "thresholds": thresholds,
        "segment_thresholds": {config.segment_column: own},
        "segment_evidence": {config.segment_column: evidence},
        "cost_matrix": {**asdict(costs), "fraud_loss": "the amount of an approved fraud"},
        "serving_policy": config.serving_policy,
        "evaluation": {
            "label_rule": LABEL_RULE,
            "label_cutoff": label_cutoff.strftime(fmt),
            "label_wait": wait,
            "known_frauds_by_type": mechanisms,
            "warnings": warnings,
            "monotone_constraints": monotone_report,
        },
        "training": {
            "seed": config.seed,
            "params": params,
            "best_iteration": int(booster.num_boosted_rounds()),
            "data_window": {
                "start": start.strftime(fmt),
                "end": end.strftime(fmt),
                "label_cutoff": label_cutoff.strftime(fmt),
            },
            "labels": {
                "train": "known at label_cutoff (chargeback arrived)",
                "valid_test": "known at label_cutoff (chargeback arrived)",
            },
            "splits": {
                "train": [lo.strftime(fmt), b1.strftime(fmt)],
                "valid": [b1.strftime(fmt), b2.strftime(fmt)],
                "test": [b2.strftime(fmt), hi.strftime(fmt)],
            },
            "rows": {p: int(m.sum()) for p, m in parts.items()},
            "source": str(raw_path),
        },
        "metrics": metrics,
        "reference_stats": reference_stats(matrix[parts["train"]]),
    }
    card = render_model_card(metadata)
    write_artifact(model_dir, booster, metadata, card)
    progress(f"wrote {model_dir}")
    return model_dir


def _share(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def headline(metadata: dict[str, Any]) -> str:
    """The model card's headline figures, a few lines each."""
    m = metadata["metrics"]
    t, b = m["test"], m["baseline_rules_test"]
    ev = metadata["evaluation"]
    wait = ev["label_wait"]
    value = m["value_test"]
    cm = metadata["cost_matrix"]
    g = value["model_segment_thresholds"]  # as served: each channel's own pair where it has one

    def auc(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [
        f"model {metadata['name']} v{metadata['version']} ({metadata['feature_service']}, "
        f"{len(metadata['feature_names'])} features)",
        f"labels: known at {ev['label_cutoff']} (chargeback arrived); label wait {wait['days']:g} days "
        f"({wait['method']}; {_share(wait['cohort_share_within_wait'])} of the complete cohort's "
        f"{wait['cohort_chargebacks']} chargebacks arrived within it)",
        f"test: {t['n']:,} transactions, {t['fraud']:,} known frauds; ROC AUC {auc(t['roc_auc'])}  "
        f"PR AUC {auc(t['pr_auc'])}  (rules baseline: ROC AUC {auc(b['roc_auc'])}  PR AUC {auc(b['pr_auc'])})",
        f"cost matrix: missed fraud = its amount; false decline = {cm['false_decline_margin']:.0%} of the "
        f"amount + {cm['false_decline_friction']:g}; review = {cm['review_cost']:g} "
        f"(at most {cm['max_review_rate']:.0%} of transactions)",
        f"thresholds (least cost on validation): suspicious >= {metadata['thresholds']['suspicious']:.4f}  "
        f"highly_suspicious >= {metadata['thresholds']['highly_suspicious']:.4f}",
    ]
    for col, segs in metadata["segment_evidence"].items():
        own = metadata["segment_thresholds"][col]
        lines.append(
            f"  per {col}: "
            + "; ".join(
                f"{k} "
                + (
                    f"{own[k]['suspicious']:.4f}/{own[k]['highly_suspicious']:.4f}"
                    if k in own
                    else "global"
                )
                + f" ({e['known_frauds']} known validation frauds)"
                for k, e in segs.items()
            )
        )
    lines.append(
        "expected cost on the test period, per 1,000 transactions: "
        + ", ".join(
            f"{name.replace('_', ' ')} {v['cost']['per_1000_transactions']:,.0f}"
            for name, v in value.items()
        )
    )
    lines.append(
        f"money, as served: {_share(g['fraud_amount_stopped_share'])} of the known fraud amount "
        f"({g['fraud_amount']:,.0f}) stopped, {_share(g['fraud_amount_declined_share'])} declined; "
        f"{g['good_declined']} good customers declined ({g['good_declined_amount']:,.0f}, "
        f"{_share(g['good_share_of_declines'])} of {g['declines']} declines); {g['reviews']} reviews"
    )
    sl = m["slices_test"]
    lines.append(
        "by fraud type (known frauds, share of their amount stopped): "
        + "; ".join(
            f"{k.split('=', 1)[1]} {s['fraud']} ({_share(s['value']['fraud_amount_stopped_share'])})"
            for k, s in sl.items()
            if k.startswith("fraud_type=")
        )
    )
    lines.append(
        "by channel (known frauds, amount stopped, good customers declined): "
        + "; ".join(
            f"{k.split('=', 1)[1]} {s['fraud']} ({_share(s['value']['fraud_amount_stopped_share'])}, "
            f"{s['value']['good_declined']})"
            for k, s in sl.items()
            if k.startswith("channel=")
        )
    )
    mono = ev["monotone_constraints"]
    if mono["features"]:
        cmp = mono["comparison"]
        lines.append(
            f"monotone constraints ({', '.join(f.split('__')[-1] for f in mono['features'])}): "
            f"{'kept' if mono['kept'] else 'dropped'}; validation PR AUC "
            + " vs ".join(f"{k} {auc(c['validation']['pr_auc'])}" for k, c in cmp.items())
        )
    lines += [f"WARNING: {w}" for w in ev["warnings"]]
    return "\n".join(lines)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
