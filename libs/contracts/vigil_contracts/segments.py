"""Which pair of thresholds labels a transaction: its segment's own, or the model's global pair.

Training chooses a pair per value of one transaction field, the segment column (the channel),
where the validation period holds enough known frauds, and the artifact records them beside the
global pair as ``segment_thresholds: {column: {value: {"suspicious": s, "highly_suspicious": h}}}``.
A transaction whose segment has a pair is labelled by it, any other by ``thresholds``. The
gateway and the batch scorer label by this one rule; the predictor refuses an artifact whose
segments it cannot serve, rather than let a model card promise a pair nothing applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vigil_contracts.api import CHANNELS
from vigil_contracts.thresholds import Label, label_for_score

SEGMENT_VALUES: dict[str, tuple[str, ...]] = {"channel": CHANNELS}
"""The transaction fields thresholds may be segmented by, and every value each can take."""

Pair = Mapping[str, float]
SegmentThresholds = Mapping[str, Mapping[str, Pair]]


def unservable(segment_thresholds: Mapping[str, Mapping[str, object]]) -> str | None:
    """Why these segment thresholds cannot be applied as written, or None when they can: more
    than one column (a transaction would have two pairs), a column that is not a segmentable
    transaction field, or a value no transaction has (its pair would never apply)."""
    if len(segment_thresholds) > 1:
        return f"segment_thresholds names {len(segment_thresholds)} columns; at most one is served"
    for column, pairs in segment_thresholds.items():
        values = SEGMENT_VALUES.get(column)
        if values is None:
            return (
                f"segment_thresholds.{column}: transactions are segmented by "
                f"{', '.join(SEGMENT_VALUES)} only"
            )
        unknown = sorted(set(pairs) - set(values))
        if unknown:
            return (
                f"segment_thresholds.{column}: no transaction has {column} "
                f"{', '.join(unknown)} (they have {', '.join(values)})"
            )
    return None


@dataclass(frozen=True)
class Labelling:
    """A model version's thresholds as they label transactions: the pair of the transaction's
    segment where the version has one, else its global pair."""

    thresholds: Pair
    segment_thresholds: SegmentThresholds = field(default_factory=dict)
    lowest_suspicious: float = field(init=False)
    """The lowest ``suspicious`` threshold of any pair that can label a transaction: a score
    below it is ``not_fraud`` whatever the transaction's segment. The global pair counts unless
    every value of the segment column has its own pair."""

    def __post_init__(self) -> None:
        problem = unservable(self.segment_thresholds)
        if problem is not None:
            raise ValueError(problem)
        pairs = [p for by_value in self.segment_thresholds.values() for p in by_value.values()]
        covered = any(
            set(SEGMENT_VALUES[column]) <= set(by_value)
            for column, by_value in self.segment_thresholds.items()
        )
        if not covered:
            pairs.append(self.thresholds)
        object.__setattr__(self, "lowest_suspicious", min(p["suspicious"] for p in pairs))

    def pair_for(self, fields: Mapping[str, Any]) -> Pair:
        """The pair that labels the transaction whose fields (by name) are ``fields``."""
        for column, pairs in self.segment_thresholds.items():
            pair = pairs.get(fields.get(column, ""))
            if pair is not None:
                return pair
        return self.thresholds

    def label(self, score: float, fields: Mapping[str, Any]) -> Label:
        return label_for_score(score, self.pair_for(fields))
