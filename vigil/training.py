"""Training: labelled transactions -> Feast point-in-time features -> XGBoost -> model artifact.

Labels are taken as they were known at the end of the data (a fraud is known only once its
chargeback has arrived), the split is by time, thresholds are chosen on the validation period
from stated business targets, and every metric is measured on the later test period against a
rules baseline. The same seed and data give the same booster, byte for byte.
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
from sklearn.metrics import average_precision_score, roc_auc_score

from vigil import feast_repo
from vigil.artifacts import write_artifact
from vigil.dataset import entity_frame, historical_matrix, to_float32
from vigil.model_card import render_model_card
from vigil_contracts.artifact import list_versions
from vigil_contracts.thresholds import label_for_score

DEFAULT_MODEL_NAME = "fraud_detector"
DEFAULT_FEATURE_SERVICE = "fraud_model_v1"


@dataclass(frozen=True)
class BusinessTargets:
    """What the business asked of the labels, applied on the validation period."""

    highly_suspicious_precision: float = 0.80
    """`highly_suspicious` (decline) threshold: the lowest score reaching this precision."""
    suspicious_recall: float = 0.80
    """`suspicious` (review) threshold: the highest score still catching this share of fraud..."""
    max_review_rate: float = 0.05
    """...unless that would send more than this share of all transactions to review."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 7
    model_name: str = DEFAULT_MODEL_NAME
    version: str | None = None
    """None -> one more than the highest existing version."""
    feature_service: str = DEFAULT_FEATURE_SERVICE
    warmup_days: float = 7.0
    """Skip the first days: 30-day features are immature there."""
    label_maturity_days: float = 14.0
    """Skip the last days: most of their chargebacks have not arrived yet."""
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    num_boost_round: int = 400
    early_stopping_rounds: int = 40
    nthread: int = 2
    params: dict[str, Any] = field(default_factory=lambda: {
        "objective": "binary:logistic",
        "eval_metric": "aucpr",
        "tree_method": "hist",
        "max_depth": 5,
        "eta": 0.08,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 2,
        "lambda": 1.0,
    })
    targets: BusinessTargets = BusinessTargets()
    serving_policy: dict[str, Any] = field(default_factory=lambda: {
        "max_missing_stored_fraction": 0.6,
        "stale_is_uncertain": True,
    })


class TrainingError(Exception):
    """Training cannot proceed (no data in a split, one class only, unknown service...)."""


def rules_baseline(matrix: pd.DataFrame) -> np.ndarray:
    """A simple hand-written rule set a fraud team would start from; score = share of rules fired."""
    def col(name: str) -> pd.Series:
        return matrix[name].fillna(0.0)

    rules = [
        col("request_features__amount_to_card_avg_30d") > 5.0,
        col("card_stats__card_txn_count_1h") >= 5,
        (col("request_features__is_new_device") > 0) & (col("request_features__country_mismatch") > 0),
        (col("request_features__is_night") > 0) & (col("request_features__txn_amount") > 500),
    ]
    return np.mean(np.column_stack([r.to_numpy() for r in rules]), axis=1)


def _rates(y: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    tp = float(np.sum(flagged & (y == 1)))
    n_flag = float(np.sum(flagged))
    n_pos = float(np.sum(y == 1))
    return {
        "precision": tp / n_flag if n_flag else 0.0,
        "recall": tp / n_pos if n_pos else 0.0,
        "alert_rate": n_flag / len(y) if len(y) else 0.0,
    }


def _aucs(y: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    if len(np.unique(y)) < 2:
        return {"roc_auc": None, "pr_auc": None}
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
    }


def choose_thresholds(y: np.ndarray, score: np.ndarray, targets: BusinessTargets) -> dict[str, float]:
    """Pick both thresholds on validation scores from the business targets."""
    order = np.argsort(-score, kind="stable")
    s, t = score[order], y[order]
    tp = np.cumsum(t == 1)
    k = np.arange(1, len(s) + 1)
    precision = tp / k
    recall = tp / max(1, int(np.sum(y == 1)))
    # Only cut between distinct scores, so a threshold flags exactly the first k rows.
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    ok_high = last_of_tie & (precision >= targets.highly_suspicious_precision)
    high = float(s[np.nonzero(ok_high)[0].max()]) if ok_high.any() else 1.0
    ok_rec = last_of_tie & (recall >= targets.suspicious_recall) & (k / len(s) <= targets.max_review_rate)
    if ok_rec.any():
        sus = float(s[np.nonzero(ok_rec)[0].min()])
    else:  # recall target out of reach within the review budget: spend the budget
        within = last_of_tie & (k / len(s) <= targets.max_review_rate)
        sus = float(s[np.nonzero(within)[0].max()]) if within.any() else high
    sus = min(sus, high)
    return {"suspicious": round(sus, 6), "highly_suspicious": round(high, 6)}


def _label_metrics(y: np.ndarray, score: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    return {
        "suspicious_or_above": _rates(y, score >= thresholds["suspicious"]),
        "highly_suspicious": _rates(y, score >= thresholds["highly_suspicious"]),
    }


AMOUNT_BANDS = [(0, 10, "<10"), (10, 100, "10-100"), (100, 1000, "100-1000"), (1000, np.inf, ">=1000")]


def slice_metrics(frame: pd.DataFrame, thresholds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Metrics per channel and per amount band on the test period."""
    out: dict[str, dict[str, Any]] = {}
    bands = pd.cut(frame["amount"], [b[0] for b in AMOUNT_BANDS] + [np.inf], right=False,
                   labels=[b[2] for b in AMOUNT_BANDS])
    for kind, keys in (("channel", frame["channel"]), ("amount", bands)):
        for key in sorted(keys.dropna().unique(), key=str):
            part = frame[keys == key]
            y, s = part["label"].to_numpy(), part["score"].to_numpy()
            out[f"{kind}={key}"] = {
                "n": len(part), "fraud": int(y.sum()), **_aucs(y, s),
                **{f"{k}_{m}": v for k, r in _label_metrics(y, s, thresholds).items() for m, v in r.items()},
            }
    return out


def reference_stats(matrix: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """Per-feature distribution on the training set, the reference for drift monitoring."""
    stats: dict[str, dict[str, float | None]] = {}
    qs = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    for name in matrix.columns:
        col = matrix[name]
        present = col.dropna()
        entry: dict[str, float | None] = {"missing_rate": float(col.isna().mean())}
        if len(present):
            entry.update(mean=float(present.mean()), std=float(present.std(ddof=0)),
                         min=float(present.min()), max=float(present.max()))
            entry.update({f"p{int(q * 100)}": float(v) for q, v in present.quantile(qs).items()})
        stats[name] = entry
    return stats


def _next_version(models_dir: Path, name: str) -> str:
    numeric = [int(v) for v in list_versions(models_dir, name) if v.isdigit()]
    return str(max(numeric, default=0) + 1)


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
    raw = pd.read_parquet(raw_path)
    if raw.empty:
        raise TrainingError(f"{raw_path} holds no transactions")
    start, end = raw["event_timestamp"].min(), raw["event_timestamp"].max()
    label_cutoff = end
    lo = start + pd.Timedelta(days=config.warmup_days)
    hi = end - pd.Timedelta(days=config.label_maturity_days)
    if hi <= lo:
        raise TrainingError("the data window is too short for the warm-up and label maturity")
    frame = raw[(raw["event_timestamp"] >= lo) & (raw["event_timestamp"] < hi)].copy()
    # Training sees a fraud as fraud only once its chargeback has arrived by the cutoff, as a
    # real team would. Validation and test are scored against matured labels (every chargeback
    # in), which a real team gets by waiting out the chargeback window before judging a model:
    # judging against immature labels would call caught-but-not-yet-reported fraud a false alarm.
    known = frame["chargeback_timestamp"].notna() & (frame["chargeback_timestamp"] <= label_cutoff)
    frame["label"] = ((frame["is_fraud"] == 1) & known).astype(int)
    frame["matured_label"] = (frame["is_fraud"] == 1).astype(int)

    progress(f"point-in-time features for {len(frame):,} transactions (Feast get_historical_features)")
    store = feast_repo.open_store(repo)
    entities = entity_frame(frame)
    matrix = historical_matrix(store, spec, entities, progress=lambda done, total: progress(
        f"  {done:,}/{total:,} rows"))
    frame = frame.set_index(frame["transaction_id"].astype(str))

    b1 = lo + (hi - lo) * config.split[0]
    b2 = lo + (hi - lo) * (config.split[0] + config.split[1])
    ts = frame["event_timestamp"]
    parts = {"train": ts < b1, "valid": (ts >= b1) & (ts < b2), "test": ts >= b2}
    for name, mask in parts.items():
        if frame.loc[mask, "label" if name == "train" else "matured_label"].nunique() < 2:
            raise TrainingError(f"the {name} period holds a single class; generate more data")

    def dmatrix(mask: pd.Series, label: str = "matured_label") -> xgb.DMatrix:
        return xgb.DMatrix(to_float32(matrix[mask.to_numpy()]), label=frame.loc[mask, label].to_numpy(),
                           missing=np.nan, feature_names=spec.feature_names, nthread=config.nthread)

    dtrain = dmatrix(parts["train"], "label")
    dvalid, dtest = dmatrix(parts["valid"]), dmatrix(parts["test"])
    params = dict(config.params, seed=config.seed, nthread=config.nthread)
    progress(f"training XGBoost on {dtrain.num_row():,} rows, {dtrain.num_col()} features")
    booster = xgb.train(
        params, dtrain, num_boost_round=config.num_boost_round, evals=[(dvalid, "valid")],
        early_stopping_rounds=config.early_stopping_rounds, verbose_eval=False,
    )
    # Keep exactly the best iteration so the saved booster is what was validated.
    booster = booster[: booster.best_iteration + 1]

    y_valid = dvalid.get_label().astype(int)
    s_valid = booster.predict(dvalid)
    thresholds = choose_thresholds(y_valid, s_valid, config.targets)

    test_frame = frame[parts["test"]].copy()
    y_test = dtest.get_label().astype(int)
    s_test = booster.predict(dtest)
    test_frame["score"] = s_test
    test_frame["label"] = y_test
    base = rules_baseline(matrix[parts["test"].to_numpy()])
    metrics = {
        "test": {**_aucs(y_test, s_test), **_label_metrics(y_test, s_test, thresholds),
                 "n": len(y_test), "fraud": int(y_test.sum())},
        "validation": {**_aucs(y_valid, s_valid), **_label_metrics(y_valid, s_valid, thresholds),
                       "n": len(y_valid), "fraud": int(y_valid.sum())},
        "baseline_rules_test": {**_aucs(y_test, base), **_rates(y_test, base > 0)},
        "slices_test": slice_metrics(test_frame, thresholds),
        "label_distribution_test": {
            lbl: int(np.sum([label_for_score(float(s), thresholds) == lbl for s in s_test]))
            for lbl in ("not_fraud", "suspicious", "highly_suspicious")
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
        "business_targets": asdict(config.targets),
        "serving_policy": config.serving_policy,
        "training": {
            "seed": config.seed,
            "params": params,
            "best_iteration": int(booster.num_boosted_rounds()),
            "data_window": {"start": start.strftime(fmt), "end": end.strftime(fmt),
                            "label_cutoff": label_cutoff.strftime(fmt)},
            "labels": {"train": "known at label_cutoff (chargeback arrived)",
                       "valid_test": "matured (every chargeback arrived)"},
            "splits": {"train": [lo.strftime(fmt), b1.strftime(fmt)],
                       "valid": [b1.strftime(fmt), b2.strftime(fmt)],
                       "test": [b2.strftime(fmt), hi.strftime(fmt)]},
            "rows": {p: int(m.sum()) for p, m in parts.items()},
            "source": str(raw_path),
        },
        "metrics": metrics,
        "reference_stats": reference_stats(matrix[parts["train"].to_numpy()]),
    }
    card = render_model_card(metadata)
    write_artifact(model_dir, booster, metadata, card)
    progress(f"wrote {model_dir}")
    return model_dir


def headline(metadata: dict[str, Any]) -> str:
    """The model card's headline figures, one line each."""
    m = metadata["metrics"]
    t, b = m["test"], m["baseline_rules_test"]
    return "\n".join([
        f"model {metadata['name']} v{metadata['version']} ({metadata['feature_service']}, "
        f"{len(metadata['feature_names'])} features)",
        f"test ROC AUC {t['roc_auc']:.3f}  PR AUC {t['pr_auc']:.3f}  "
        f"(rules baseline: ROC AUC {b['roc_auc']:.3f}  PR AUC {b['pr_auc']:.3f})",
        f"thresholds suspicious >= {metadata['thresholds']['suspicious']:.4f}  "
        f"highly_suspicious >= {metadata['thresholds']['highly_suspicious']:.4f}",
        f"at suspicious: precision {t['suspicious_or_above']['precision']:.2f} recall "
        f"{t['suspicious_or_above']['recall']:.2f}; at highly_suspicious: precision "
        f"{t['highly_suspicious']['precision']:.2f} recall {t['highly_suspicious']['recall']:.2f}",
    ])


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
