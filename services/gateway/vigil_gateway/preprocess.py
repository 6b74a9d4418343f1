"""Stage *preprocess*: business -> data domain. A transaction becomes the keys of the entities
the model knows (card, merchant, device) and the request-time fields its on-demand features are
computed from, as the columns of the encoder's request (row ``i`` is transaction ``i``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vigil_contracts.api import Transaction
from vigil_contracts.request_features import NO_DEVICE_ID, request_columns


def to_encode_columns(transactions: Sequence[Transaction]) -> dict[str, dict[str, list[Any]]]:
    """The entity keys and request-time fields of ``transactions``, as an
    ``EncodeColumnsRequest``'s columns."""
    has_device = [t.device_id is not None for t in transactions]
    return {
        "entities": {
            "card_id": [t.card_id for t in transactions],
            "merchant_id": [t.merchant_id for t in transactions],
            "device_id": [
                t.device_id if t.device_id is not None else NO_DEVICE_ID for t in transactions
            ],
            # The amount's currency keys its rate to EUR (the fx_rates view).
            "currency": [t.currency for t in transactions],
        },
        # An absent country is sent empty, which the shared transform reads as unknown (the
        # country-mismatch feature is then missing, as in training), never as a mismatch.
        "request": request_columns(
            [t.amount for t in transactions],
            [t.timestamp for t in transactions],
            [t.channel for t in transactions],
            [t.country or "" for t in transactions],
            has_device,
        ),
    }


def to_encode_row(transaction: Transaction) -> dict[str, Any]:
    """One transaction as an ``EncodeRow`` (the row form of :func:`to_encode_columns`)."""
    columns = to_encode_columns([transaction])
    return {
        part: {name: values[0] for name, values in fields.items()}
        for part, fields in columns.items()
    }
