"""MODEL_CARD.md: what a model is for, what it was trained on and how well it does, by slice.

Every figure comes from the metadata the training wrote, which was computed on labels known at
the label cutoff only; the card says so, and says where a figure cannot be had (a slice without
known fraud, a fraud type missing from a period).
"""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _money(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _served_row(name: str, period: dict[str, Any]) -> list[str]:
    """The metrics table's row of the labels as served (none for a model trained before they
    were recorded); its AUCs are the model's, the same scores."""
    served = period.get("served")
    if served is None:
        return []
    s, h = served["suspicious_or_above"], served["highly_suspicious"]
    return [
        f"| {name} | | | {_fmt(s['precision'])} | {_fmt(s['recall'])} | "
        f"{_fmt(h['precision'])} | {_fmt(h['recall'])} |"
    ]


def render_model_card(meta: dict[str, Any]) -> str:
    m = meta["metrics"]
    t, v, b = m["test"], m["validation"], m["baseline_rules_test"]
    tr = meta["training"]
    th = meta["thresholds"]
    ev = meta["evaluation"]
    wait = ev["label_wait"]
    cm = meta["cost_matrix"]
    lines = [f"# Model card: {meta['name']} version {meta['version']}", ""]
    if ev["warnings"]:
        lines += ["> **WARNING: fraud types missing from a period.**"]
        lines += [f"> - {w}" for w in ev["warnings"]]
        lines += [""]
    lines += [
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
        f"- Time-based split: train {tr['splits']['train'][0]} to {tr['splits']['train'][1]} "
        f"({tr['rows']['train']:,} rows), validation to {tr['splits']['valid'][1]} "
        f"({tr['rows']['valid']:,}), test to {tr['splits']['test'][1]} ({tr['rows']['test']:,}).",
        f"- Features: Feast feature service `{meta['feature_service']}`, "
        f"{len(meta['feature_names'])} features retrieved point-in-time "
        "(`get_historical_features`), the same definitions the encoder serves online.",
        f"- Seed {tr['seed']}; XGBoost {meta['framework']['xgboost']}, "
        f"{tr['best_iteration']} trees.",
        "",
        "## Labels: only what was known at the cutoff",
        f"- Rule, for every split, early stopping, the thresholds and every figure on this card: "
        f"`{ev['label_rule']}`, cutoff {ev['label_cutoff']}. The simulator's truth is never used; "
        "a known fraud's type is the one its investigation recorded.",
        f"- Label wait {wait['days']:g} days: the split ends that long before the cutoff. Chosen as "
        f"{wait['method']}. Chargebacks may arrive up to {wait['chargeback_window_days']:g} days "
        f"after a payment (the dispute window), so the cohort of {wait['cohort']} has all of its "
        f"chargebacks in: {wait['cohort_chargebacks']} of them"
        + (
            f", delay median {wait['cohort_delay_days']['median']} days, p95 "
            f"{wait['cohort_delay_days']['p95']}, max {wait['cohort_delay_days']['max']}"
            if "cohort_delay_days" in wait
            else ""
        )
        + f". {_pct(wait['cohort_share_within_wait'])} of them arrived within the wait.",
        "- What share of *all* frauds is known cannot be known at training time: recent frauds "
        "whose chargeback is still to come count as good customers here, mostly in the last "
        "days of the test period. They make precision look lower and false declines higher "
        "than they are; recall and the fraud amount stopped are measured on known frauds only.",
        "- Known frauds by type and period (a 0 means the card cannot speak for that type there):",
        "",
        "| period | " + " | ".join(ev["known_frauds_by_type"]["train"]) + " |",
        "|---|" + "---|" * len(ev["known_frauds_by_type"]["train"]),
    ]
    for period, counts in ev["known_frauds_by_type"].items():
        lines.append(f"| {period} | " + " | ".join(str(c) for c in counts.values()) + " |")
    lines += [
        "",
        "## Cost matrix and thresholds (chosen on the validation period)",
        f"- Approving a fraud costs its amount. Declining a good customer costs "
        f"{cm['false_decline_margin']:.0%} of the amount (the lost margin and future spend) + "
        f"{cm['false_decline_friction']:g} (friction: the call, the embarrassment). A review costs "
        f"{cm['review_cost']:g} (an analyst's minutes or a step-up's drop-off) and stops a fraud. "
        f"At most {cm['max_review_rate']:.0%} of transactions may go to review (analyst capacity).",
        f"- Global thresholds (`thresholds` in the metadata): `suspicious` at score >= "
        f"{th['suspicious']:.4f}, `highly_suspicious` at score >= {th['highly_suspicious']:.4f}: "
        "the pair with the least total cost on the validation period. They label every "
        "transaction whose segment has no pair of its own.",
    ]
    for col, segs in meta["segment_evidence"].items():
        own = meta["segment_thresholds"][col]
        lines.append(
            f"- Per `{col}` (`segment_thresholds.{col}` in the metadata): a `{col}` whose "
            "validation period holds enough known frauds, and whose own pair chosen on the "
            "earlier half of that period costs less on its later half than the global pair "
            "chosen on the same earlier half (a held-out check: a pair fitted to a few dozen "
            "frauds can cost more on new data), has its own least-cost pair, and the "
            f"gateway and the batch scorer label each transaction of that `{col}` with it; "
            f"a transaction of any other `{col}` is labelled with the global pair:"
        )
        for key, e in segs.items():
            pair = (
                f"suspicious >= {own[key]['suspicious']:.4f}, highly_suspicious >= "
                f"{own[key]['highly_suspicious']:.4f}"
                if key in own
                else e["thresholds"]
            )
            check = e.get("held_out")
            held = (
                f"; held out: {check['own_per_1000']:.0f} per 1,000 with its own pair against "
                f"{check['global_per_1000']:.0f} with the global one, over its later "
                f"{check['rows']:,} rows"
                if check is not None and key in own
                else ""
            )
            lines.append(
                f"  - `{key}`: {pair} ({e['known_frauds']} known frauds in "
                f"{e['validation_rows']:,} validation rows{held})"
            )
    lines += [
        "",
        "## Metrics (test period)",
        "*model* is labelled at the global pair; *model, as served* as the gateway labels: each "
        "transaction by its segment's own pair where it has one, else the global pair (what "
        "that costs is the *model segment thresholds* row of the money table below).",
        "",
        "| | ROC AUC | PR AUC | precision @suspicious | recall @suspicious | precision @highly | recall @highly |",
        "|---|---|---|---|---|---|---|",
        f"| model | {_fmt(t['roc_auc'])} | {_fmt(t['pr_auc'])} | "
        f"{_fmt(t['suspicious_or_above']['precision'])} | {_fmt(t['suspicious_or_above']['recall'])} | "
        f"{_fmt(t['highly_suspicious']['precision'])} | {_fmt(t['highly_suspicious']['recall'])} |",
        *_served_row("model, as served", t),
        f"| rules baseline (any rule fires) | {_fmt(b['roc_auc'])} | {_fmt(b['pr_auc'])} | "
        f"{_fmt(b['precision'])} | {_fmt(b['recall'])} | | |",
        f"| model, validation period | {_fmt(v['roc_auc'])} | {_fmt(v['pr_auc'])} | "
        f"{_fmt(v['suspicious_or_above']['precision'])} | {_fmt(v['suspicious_or_above']['recall'])} | "
        f"{_fmt(v['highly_suspicious']['precision'])} | {_fmt(v['highly_suspicious']['recall'])} |",
        *_served_row("model, as served, validation period", v),
        "",
        f"Test period: {t['n']:,} transactions, {t['fraud']:,} known frauds.",
        "",
        "## Money and expected cost (test period)",
        "The rules baseline's actions are its own least-cost thresholds on the validation period.",
        "",
        "| policy | cost | per 1,000 tx | missed fraud | false declines | reviews | fraud amount stopped "
        "| good customers declined | their amount | good share of declines |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, val in m["value_test"].items():
        c = val["cost"]
        lines.append(
            f"| {name.replace('_', ' ')} | {_money(c['total'])} | {_money(c['per_1000_transactions'])} | "
            f"{_money(c['missed_fraud'])} | {_money(c['false_declines'])} | {_money(c['reviews'])} | "
            f"{_pct(val['fraud_amount_stopped_share'])} of {_money(val['fraud_amount'])} | "
            f"{val['good_declined']} | {_money(val['good_declined_amount'])} | "
            f"{_pct(val['good_share_of_declines'])} |"
        )
    lines += [
        "",
        "## Metrics by slice (test period, as served)",
        "Labelled as the gateway labels: each transaction by its segment's own pair where it has "
        "one, else the global pair. A fraud-type slice is that type's known frauds against every "
        "known-good row.",
        "",
        "| slice | n | known fraud | ROC AUC | PR AUC | precision @suspicious | recall @suspicious "
        "| fraud amount stopped | good customers declined (amount) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in m["slices_test"].items():
        val = s["value"]
        good = (
            f"{val['good_declined']} ({_money(val['good_declined_amount'])})"
            if "good_declined" in val
            else ""
        )
        if s["no_known_fraud"]:
            lines.append(
                f"| {name} | {s['n']:,} | **0: no known fraud, nothing to measure** | "
                f"n/a | n/a | n/a | n/a | n/a | {good} |"
            )
            continue
        lines.append(
            f"| {name} | {s['n']:,} | {s['fraud']:,} | {_fmt(s['roc_auc'])} | {_fmt(s['pr_auc'])} | "
            f"{_fmt(s['suspicious_or_above_precision'])} | {_fmt(s['suspicious_or_above_recall'])} | "
            f"{_pct(val['fraud_amount_stopped_share'])} of {_money(val['fraud_amount'])} | {good} |"
        )
    mono = ev["monotone_constraints"]
    if mono["features"]:
        lines += [
            "",
            "## Monotone constraints",
            f"The business says a larger amount against the card's habit is riskier: "
            f"{', '.join(f'`{f}`' for f in mono['features'])} constrained non-decreasing. "
            f"Rule: {mono['rule']}. They were **{'kept' if mono['kept'] else 'dropped'}**.",
            "",
            "| model | trees | validation PR AUC | validation cost | test PR AUC | test cost |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in mono["comparison"].items():
            lines.append(
                f"| {name} | {r['trees']} | {_fmt(r['validation']['pr_auc'])} | "
                f"{_money(r['validation']['cost'])} | {_fmt(r['test']['pr_auc'])} | "
                f"{_money(r['test']['cost'])} |"
            )
    lines += [
        "",
        "## Limitations",
        "- Trained on synthetic data with four fraud mechanisms (docs/fraud_mechanisms.md); real",
        "  fraud adapts, so monitor drift against `reference_stats` in metadata.json and retrain.",
        "- The synthetic world is easy (see the AUCs): these figures say the pipeline measures",
        "  honestly, not that a real model would do this well.",
        "- Stored features are as fresh as the last `feast materialize`; request-time features",
        "  (amount ratios, hour, device age) are computed at request time.",
        "- A brand-new card or device has no history: those features are missing and the model",
        "  leans on request-time and merchant features.",
        f"- Labels are delayed: the last {wait['days']:g} days before the cutoff are not used, so the",
        "  freshest fraud patterns are missing from training.",
        "",
    ]
    return "\n".join(lines)
