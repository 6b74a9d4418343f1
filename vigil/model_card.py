"""MODEL_CARD.md: what a model is for, what it was trained on and how well it does, by slice."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_model_card(meta: dict[str, Any]) -> str:
    m = meta["metrics"]
    t, v, b = m["test"], m["validation"], m["baseline_rules_test"]
    tr = meta["training"]
    th = meta["thresholds"]
    lines = [
        f"# Model card: {meta['name']} version {meta['version']}",
        "",
        "## Intended use",
        "Real-time scoring of card payments for fraud inside the authorisation path of a payment",
        "system, through Vigil's business API. The score is the probability that the transaction",
        "will be charged back as fraud; labels map it to actions: `not_fraud` (approve),",
        "`suspicious` (step-up authentication or manual review), `highly_suspicious` (decline).",
        "`uncertain` is returned, without a score, when the features the model needs are missing",
        "or stale, or a dependency is down: the caller applies its own fallback policy.",
        "",
        "## Out of scope",
        "- Decisions about people (credit, identity, employment); chargeback disputes.",
        "- Payment types other than card transactions (bank transfers, crypto, BNPL).",
        "- Populations unlike the training data: this model was trained on Vigil's synthetic world.",
        "",
        "## Data",
        f"- Source: `{tr['source']}` (synthetic, seeded), window {tr['data_window']['start']} to "
        f"{tr['data_window']['end']}.",
        f"- Training labels as known at {tr['data_window']['label_cutoff']}: a fraud counts once "
        "its chargeback has arrived, so recent fraud is under-labelled and the last days are left "
        "out. Validation and test are judged on matured labels (every chargeback in).",
        f"- Time-based split: train {tr['splits']['train'][0]} to {tr['splits']['train'][1]} "
        f"({tr['rows']['train']:,} rows), validation to {tr['splits']['valid'][1]} "
        f"({tr['rows']['valid']:,}), test to {tr['splits']['test'][1]} ({tr['rows']['test']:,}).",
        f"- Features: Feast feature service `{meta['feature_service']}`, "
        f"{len(meta['feature_names'])} features retrieved point-in-time "
        "(`get_historical_features`), the same definitions the encoder serves online.",
        f"- Seed {tr['seed']}; XGBoost {meta['framework']['xgboost']}, "
        f"{tr['best_iteration']} trees.",
        "",
        "## Thresholds (chosen on the validation period)",
        f"- `highly_suspicious` at score >= {th['highly_suspicious']:.4f}: the lowest score reaching "
        f"precision {meta['business_targets']['highly_suspicious_precision']:.0%}.",
        f"- `suspicious` at score >= {th['suspicious']:.4f}: recall target "
        f"{meta['business_targets']['suspicious_recall']:.0%} within a review budget of "
        f"{meta['business_targets']['max_review_rate']:.0%} of transactions.",
        "",
        "## Metrics (test period)",
        "| | ROC AUC | PR AUC | precision @suspicious | recall @suspicious | precision @highly | recall @highly |",
        "|---|---|---|---|---|---|---|",
        f"| model | {_fmt(t['roc_auc'])} | {_fmt(t['pr_auc'])} | "
        f"{_fmt(t['suspicious_or_above']['precision'])} | {_fmt(t['suspicious_or_above']['recall'])} | "
        f"{_fmt(t['highly_suspicious']['precision'])} | {_fmt(t['highly_suspicious']['recall'])} |",
        f"| rules baseline (any rule fires) | {_fmt(b['roc_auc'])} | {_fmt(b['pr_auc'])} | "
        f"{_fmt(b['precision'])} | {_fmt(b['recall'])} | | |",
        f"| model, validation period | {_fmt(v['roc_auc'])} | {_fmt(v['pr_auc'])} | "
        f"{_fmt(v['suspicious_or_above']['precision'])} | {_fmt(v['suspicious_or_above']['recall'])} | "
        f"{_fmt(v['highly_suspicious']['precision'])} | {_fmt(v['highly_suspicious']['recall'])} |",
        "",
        f"Test period: {t['n']:,} transactions, {t['fraud']:,} known frauds.",
        "",
        "## Metrics by slice (test period)",
        "| slice | n | fraud | ROC AUC | PR AUC | precision @suspicious | recall @suspicious |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in m["slices_test"].items():
        lines.append(
            f"| {name} | {s['n']:,} | {s['fraud']:,} | {_fmt(s['roc_auc'])} | {_fmt(s['pr_auc'])} | "
            f"{_fmt(s['suspicious_or_above_precision'])} | {_fmt(s['suspicious_or_above_recall'])} |"
        )
    lines += [
        "",
        "## Limitations",
        "- Trained on synthetic data with four fraud mechanisms (docs/fraud_mechanisms.md); real",
        "  fraud adapts, so monitor drift against `reference_stats` in metadata.json and retrain.",
        "- Stored features are as fresh as the last `feast materialize`; request-time features",
        "  (amount ratios, hour, device age) are computed at request time.",
        "- A brand-new card or device has no history: those features are missing and the model",
        "  leans on request-time and merchant features.",
        "- Labels are delayed (chargebacks take days to weeks): the freshest fraud patterns are",
        "  under-represented in training.",
        "",
    ]
    return "\n".join(lines)
