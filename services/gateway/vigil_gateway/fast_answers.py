"""Saves: validating a ``not_fraud`` answer again (half its cost in a batch of legitimate
transactions). Held equal: at import, and by a test, the shortcut must make the very object the
constructor makes; where it does not (another pydantic), the constructor is used.

Most answers are ``not_fraud``, and every field of one is valid by construction (the id of a
validated transaction, a score from the predictor, the one baseline reason, a model reference).
The shortcut fills the instance as pydantic's own constructor does, without validating. Whether
an answer is ``not_fraud`` is the caller's to decide (postprocess: below the ``suspicious``
threshold of the transaction's own pair, and no safeguard fired); nothing here knows thresholds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from vigil_contracts.api import ModelRef, Reason, SafeguardsRef, ScoreResponse

logger = logging.getLogger(__name__)

_new_object = object.__new__
_set_attribute = object.__setattr__
_FIELDS_SET = frozenset(
    ("transaction_id", "label", "score", "reasons", "model", "degraded", "safeguards", "request_id")
)


def _not_fraud_fast(
    transaction_id: str,
    score: float,
    reason: Reason,
    model: ModelRef,
    safeguards: SafeguardsRef,
    request_id: str,
) -> ScoreResponse:
    answer = _new_object(ScoreResponse)
    _set_attribute(
        answer,
        "__dict__",
        {
            "transaction_id": transaction_id,
            "label": "not_fraud",
            "score": float(score),
            "reasons": [reason],
            "model": model,
            "degraded": False,
            "safeguards": safeguards,
            "request_id": request_id,
            "cached": False,
        },
    )
    _set_attribute(answer, "__pydantic_fields_set__", set(_FIELDS_SET))
    _set_attribute(answer, "__pydantic_extra__", None)
    _set_attribute(answer, "__pydantic_private__", None)
    return answer


def not_fraud_validated(
    transaction_id: str,
    score: float,
    reason: Reason,
    model: ModelRef,
    safeguards: SafeguardsRef,
    request_id: str,
) -> ScoreResponse:
    """The public path: the answer as ``ScoreResponse``'s constructor makes it."""
    return ScoreResponse(
        transaction_id=transaction_id,
        label="not_fraud",
        score=score,
        reasons=[reason],
        model=model,
        degraded=False,
        safeguards=safeguards,
        request_id=request_id,
    )


def _same(a: ScoreResponse, b: ScoreResponse) -> bool:
    return (
        type(a) is type(b)
        and a.__dict__ == b.__dict__
        and a.__pydantic_fields_set__ == b.__pydantic_fields_set__
        and (a.__pydantic_extra__, a.__pydantic_private__)
        == (b.__pydantic_extra__, b.__pydantic_private__)
        and a.model_dump_json() == b.model_dump_json()
    )


def _choose() -> Callable[[str, float, Reason, ModelRef, SafeguardsRef, str], ScoreResponse]:
    args = (
        "t-1",
        0.125,
        Reason(code="NO_RISK_SIGNAL", text="x"),
        ModelRef(name="m", version="1"),
        SafeguardsRef(version="1"),
        "r-1",
    )
    try:
        if _same(_not_fraud_fast(*args), not_fraud_validated(*args)):
            return _not_fraud_fast
    except Exception:
        logger.debug("the not_fraud shortcut failed its check", exc_info=True)
    logger.warning("the not_fraud shortcut does not match this pydantic; answers are validated")
    return not_fraud_validated


not_fraud = _choose()
"""A ``not_fraud`` answer (the shortcut, or the constructor where the two differ)."""
