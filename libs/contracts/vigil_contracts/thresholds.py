"""Score -> business label, by the thresholds versioned with each model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Label = Literal["not_fraud", "suspicious", "highly_suspicious", "uncertain"]
LABELS: tuple[Label, ...] = ("not_fraud", "suspicious", "highly_suspicious", "uncertain")


def label_for_score(score: float, thresholds: Mapping[str, float]) -> Label:
    """``highly_suspicious`` at or above its threshold, then ``suspicious``, else ``not_fraud``."""
    if score >= thresholds["highly_suspicious"]:
        return "highly_suspicious"
    if score >= thresholds["suspicious"]:
        return "suspicious"
    return "not_fraud"
