"""The feature contract: a hash of the ordered feature names a model was trained on; and how
a feature's full name (``view__feature``, Feast's ``full_feature_names``) is read.

The encoder stamps it on every vector and the predictor refuses a vector whose stamp differs from
the model's, so a vector in the wrong order can never be scored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence


def feature_contract_hash(feature_names: Sequence[str]) -> str:
    """Return ``sha256:<hex>`` of the ordered feature names (order matters)."""
    canonical = json.dumps(list(feature_names), separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def short_name(feature: str) -> str:
    """``card_stats__card_txn_count_1h`` -> ``card_txn_count_1h`` (a name without a view stays)."""
    return feature.split("__", 1)[-1]
