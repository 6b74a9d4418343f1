"""The vocabulary of ``uncertain`` answers: their reason codes, their texts, and whether each
means that one of Vigil's own dependencies failed (``degraded``).

``degraded: true`` is for an operator to alert on: the encoder, the predictor or the time budget
failed Vigil. An entity with too little history (a brand-new card) is answered ``uncertain``
too, but nothing of Vigil's is broken then, so it is not degraded.
"""

from __future__ import annotations

from vigil_gateway.errors import DownstreamError

FEATURES_UNAVAILABLE = "FEATURES_UNAVAILABLE"
FEATURES_STALE = "FEATURES_STALE"
FEATURES_MISSING = "FEATURES_MISSING"
MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
FEATURE_CONTRACT_MISMATCH = "FEATURE_CONTRACT_MISMATCH"
TIMEOUT = "TIMEOUT"
CURRENCY_UNSUPPORTED = "CURRENCY_UNSUPPORTED"
TRANSACTION_TOO_OLD = "TRANSACTION_TOO_OLD"
TRANSACTION_BEFORE_FEATURES = "TRANSACTION_BEFORE_FEATURES"

TEXT = {
    FEATURES_UNAVAILABLE: "the transaction's features could not be fetched, so it was not scored",
    FEATURES_STALE: "some of the card, merchant or device history is out of date, so a score would not be reliable",
    FEATURES_MISSING: "too little card, merchant or device history is available to score reliably",
    MODEL_UNAVAILABLE: "the fraud model could not be reached, so the transaction was not scored",
    FEATURE_CONTRACT_MISMATCH: "the model and the feature encoder disagree on the features, so the transaction was not scored",
    TIMEOUT: "scoring did not finish within its time budget",
    CURRENCY_UNSUPPORTED: "no exchange rate to EUR is known for this currency, so the amount cannot be judged",
    TRANSACTION_TOO_OLD: "the transaction is older than the scoring horizon: the card, merchant and device "
    "history held now is not what was known when it happened",
    TRANSACTION_BEFORE_FEATURES: "the transaction happened before the newest card, merchant or "
    "device history held now, by more than the allowed lateness: that history describes a later moment",
}

# Uncertain for what the data says (too little history, a currency Vigil has no rate for, a
# transaction from before the horizon or before its features), not for a failure of Vigil: not
# degraded. (Stale features
# are degraded: keeping them fresh is Vigil's own job, and a late materialization is its failure.)
NOT_DEGRADED = frozenset(
    {FEATURES_MISSING, CURRENCY_UNSUPPORTED, TRANSACTION_TOO_OLD, TRANSACTION_BEFORE_FEATURES}
)


def is_degraded(code: str) -> bool:
    return code not in NOT_DEGRADED


class Unscorable(Exception):
    """No transaction of a stage's input can be scored: the reason code and the dependency's
    error (raised by the encode and predict stages, answered by the pipeline)."""

    def __init__(self, code: str, error: DownstreamError) -> None:
        super().__init__(code)
        self.code = code
        self.error = error
