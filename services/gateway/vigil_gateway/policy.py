"""Stage *policy*: whether each feature vector is complete and fresh enough to be scored.

The policy's numbers come with the model (``serving_policy`` in its metadata): a model trained
with few missing values must not be trusted on a vector that is mostly holes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import compress
from typing import Protocol

from vigil_contracts.feature_contract import short_name
from vigil_gateway.model_metadata import ServingPolicy, is_stored
from vigil_gateway.uncertain import (
    CURRENCY_UNSUPPORTED,
    FEATURES_MISSING,
    FEATURES_STALE,
    TRANSACTION_BEFORE_FEATURES,
    TRANSACTION_TOO_OLD,
)

__all__ = ["FEATURES_MISSING", "FEATURES_STALE", "policy_verdict", "screen", "stored_mask"]

# The amount in EUR: missing only when the amount's currency has no rate (the fx_rates view).
AMOUNT_IN_BASE_CURRENCY = "txn_amount"


class EncodedRow(Protocol):
    """What the policy reads of an encoded row (``vigil_contracts.encoding.EncodedRow``, the
    encoder client's ``EncodedVector``, or its ``BinaryRow`` whose flags are 0/1 bytes)."""

    @property
    def missing(self) -> Sequence[bool] | bytes: ...

    @property
    def stale(self) -> Sequence[bool] | bytes: ...

    @property
    def age_seconds(self) -> Sequence[float | None]: ...


def stored_mask(feature_names: Sequence[str]) -> list[bool]:
    return [is_stored(name) for name in feature_names]


@lru_cache(maxsize=16)
def _stored_mask_of(feature_names: tuple[str, ...]) -> list[bool]:
    """:func:`stored_mask`, once per feature order (every request of a model has the same)."""
    return stored_mask(feature_names)


@lru_cache(maxsize=16)
def _position(feature_names: tuple[str, ...], short: str) -> int | None:
    return next((j for j, name in enumerate(feature_names) if short_name(name) == short), None)


def policy_verdict(row: EncodedRow, stored: Sequence[bool], policy: ServingPolicy) -> str | None:
    """``None`` when the row may be scored, else the reason code of an ``uncertain`` answer."""
    # ``1 in`` finds a True flag in a list of booleans and a 1 in bytes alike, in C.
    if policy.stale_is_uncertain and 1 in row.stale:
        return FEATURES_STALE
    if 1 not in row.missing:
        return None
    n_stored = sum(stored)
    if n_stored:
        missing = sum(compress(row.missing, stored))
        if missing / n_stored > policy.max_missing_stored_fraction:
            return FEATURES_MISSING
    return None


def _newest_row(row: EncodedRow, stored: Sequence[bool], now: float) -> float:
    """When the newest stored row behind ``row`` was stamped (UTC seconds; -inf: none)."""
    ages = [age for age, kept in zip(row.age_seconds, stored, strict=True) if kept]
    known = [age for age in ages if age is not None and age == age]  # None and NaN: no row
    return now - min(known) if known else float("-inf")


class EncodedBatch(Protocol):
    @property
    def feature_names(self) -> Sequence[str]: ...

    @property
    def rows(self) -> Sequence[EncodedRow]: ...


def screen(
    encoded: EncodedBatch,
    rows: Sequence[int],
    policy: ServingPolicy,
    *,
    epochs: Sequence[float] = (),
    not_before: float | None = None,
    now: float = 0.0,
    max_lead_s: float | None = None,
) -> tuple[list[int], dict[int, str]]:
    """The rows that may be scored, and the reason code of each row that may not. A row whose
    transaction (``epochs[i]``, UTC seconds) happened before ``not_before`` is too old for the
    features the store holds now; one that happened more than ``max_lead_s`` before the newest
    of its stored rows (``now`` minus the youngest age of its stored features) came after
    them."""
    names = tuple(encoded.feature_names)
    stored = _stored_mask_of(names)
    amount = _position(names, AMOUNT_IN_BASE_CURRENCY)
    scorable: list[int] = []
    held: dict[int, str] = {}
    for i in rows:
        row = encoded.rows[i]
        if not_before is not None and epochs[i] < not_before:
            verdict: str | None = TRANSACTION_TOO_OLD
        elif (
            max_lead_s is not None
            # Only a transaction older than the lead can be that far behind its features: a
            # live one (stamped about now) is settled by this one comparison.
            and epochs[i] < now - max_lead_s
            and _newest_row(row, stored, now) > epochs[i] + max_lead_s
        ):
            verdict = TRANSACTION_BEFORE_FEATURES
        elif amount is not None and row.missing[amount]:
            verdict = CURRENCY_UNSUPPORTED
        else:
            verdict = policy_verdict(row, stored, policy)
        if verdict is None:
            scorable.append(i)
        else:
            held[i] = verdict
    return scorable, held
