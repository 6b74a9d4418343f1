"""The serving policy: whether a feature vector is complete and fresh enough to be scored.

The policy's numbers come with the model (``serving_policy`` in its metadata): a model trained
with few missing values must not be trusted on a vector that is mostly holes.
"""

from __future__ import annotations

from collections.abc import Sequence

from vigil_contracts.encoding import EncodedRow

from vigil_gateway.model_metadata import ServingPolicy, is_stored

FEATURES_STALE = "FEATURES_STALE"
FEATURES_MISSING = "FEATURES_MISSING"


def stored_mask(feature_names: Sequence[str]) -> list[bool]:
    return [is_stored(name) for name in feature_names]


def policy_verdict(row: EncodedRow, stored: Sequence[bool], policy: ServingPolicy) -> str | None:
    """``None`` when the row may be scored, else the reason code of an ``uncertain`` answer."""
    if policy.stale_is_uncertain and any(row.stale):
        return FEATURES_STALE
    n_stored = sum(stored)
    if n_stored:
        missing = sum(1 for is_st, miss in zip(stored, row.missing) if is_st and miss)
        if missing / n_stored > policy.max_missing_stored_fraction:
            return FEATURES_MISSING
    return None
