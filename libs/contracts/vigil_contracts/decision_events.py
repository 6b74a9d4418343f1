"""The decision event: one per fresh decision the gateway makes, on a Redis Stream.

Every consumer of the stream (the streamer today; the decision log, shadow scoring and monitoring
next) reads this one shape. An entry of the stream has three fields: ``id`` (the event id),
``v`` (the schema version) and ``event`` (the JSON of :class:`DecisionEvent`). The event id is
the transaction id and the request id that decided it (a batch decides many transactions under
one request id; a rescore is a new request): a consumer that has seen an id has seen the event.

Version 2: the vector's feature names are not in each event but in one hash beside the stream
(:data:`CONTRACTS_KEY`: feature contract -> its names), written by the gateway in the same call
that appends the first event of a contract it sends (and again when it finds Redis lost them),
so a consumer that reads an event finds its names there (:func:`contract_names`) as long as the
hash is not deleted while the stream still holds events of a contract no gateway sends any more
(the names are also in every model artifact of that contract). The names were a third of an
event. Version 1 (events written before) carries them in the event; consumers read both
(:data:`READABLE_VERSIONS`) and refuse (dead-letter) an entry of a version they do not know.
Fields added to a version later are optional (``key_id``, ``safeguards``), so consumers read
events written before them alike.
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from vigil_contracts.feature_contract import feature_contract_hash

SCHEMA_VERSION = 2
#: The versions a consumer reads (what differs: :class:`EventFeatures`' ``names``).
READABLE_VERSIONS = frozenset({1, 2})
#: Feature contract (``sha256:...``) -> the JSON list of its feature names, in model order.
CONTRACTS_KEY = "vigil:feature-contracts"
#: Default stream key (``GATEWAY_EVENTS_STREAM`` / ``STREAMER_STREAM``).
STREAM_KEY = "vigil:decisions"
#: Default dead-letter stream of the streamer (``STREAMER_DEAD_LETTER_STREAM``).
DEAD_LETTER_KEY = "vigil:decisions:dead"
#: Fields of one stream entry.
FIELD_ID, FIELD_VERSION, FIELD_EVENT = "id", "v", "event"


def contract_names(contract: str, stored: bytes | str | None) -> list[str]:
    """The feature names of ``contract`` from its entry in :data:`CONTRACTS_KEY` (``HGET``);
    ``ValueError`` when it has none or the names are not the contract's (their hash differs)."""
    if stored is None:
        raise ValueError(f"feature contract {contract} is not registered in {CONTRACTS_KEY}")
    names = json.loads(stored)  # JSONDecodeError is a ValueError
    if (
        not isinstance(names, list)
        or not all(isinstance(name, str) for name in names)
        or feature_contract_hash(names) != contract
    ):
        raise ValueError(f"the names registered for feature contract {contract} are not its")
    return names


def event_id(transaction_id: str, request_id: str) -> str:
    """The id of the event of ``transaction_id`` decided by request ``request_id``."""
    return f"{transaction_id}\x1f{request_id}"


class EventTransaction(BaseModel):
    """The transaction as the client sent it (validated), in the API's field names."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: str
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    timestamp: datetime = Field(description="Aware; the instant of the payment.")
    channel: str
    device_id: str | None = None
    ip_address: str | None = None
    country: str | None = None


class EventFeatures(BaseModel):
    """The vector the model saw (or would have): values in the order of its feature contract's
    names (None = missing), and which are missing or stale (:meth:`flags`). Absent when the
    encoder gave no vector."""

    feature_service: str
    feature_contract: str
    names: list[str] | None = Field(
        default=None,
        description="Version 1 only. Version 2 names the features by feature_contract: "
        "see CONTRACTS_KEY and contract_names.",
    )
    values: list[float | None]
    missing_at: list[int] | None = Field(
        default=None, description="Version 2: the positions of the missing values (0-based)."
    )
    stale_at: list[int] | None = Field(
        default=None, description="Version 2: the positions of the stale values (0-based)."
    )
    missing: list[bool] | None = Field(default=None, description="Version 1: a flag per value.")
    stale: list[bool] | None = Field(default=None, description="Version 1: a flag per value.")

    def flags(self) -> tuple[list[bool], list[bool]]:
        """Missing and stale, one flag per value, from either version's form."""
        n = len(self.values)

        def one(at: list[int] | None, per_value: list[bool] | None) -> list[bool]:
            if per_value is not None:
                return per_value
            out = [False] * n
            for i in at or ():
                out[i] = True
            return out

        return one(self.missing_at, self.missing), one(self.stale_at, self.stale)


class EventTimings(BaseModel):
    """Milliseconds spent, and when the answer was made (epoch seconds)."""

    encode_ms: float | None = None
    predict_ms: float | None = None
    total_ms: float
    decided_at: float


class EventSafeguards(BaseModel):
    """The non-ML safeguards that checked the transaction: their rule set's version and the
    codes of the rules that fired."""

    version: str
    fired: list[str]


class DecisionEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    event_id: str
    request_id: str
    key_id: str | None = Field(
        default=None,
        description="The id of the API key that asked (never the key; 'anonymous' when the "
        "gateway's authentication is off). None in events from before it was recorded.",
    )
    transaction: EventTransaction
    entities: dict[str, str | None] = Field(
        description="card_id, merchant_id, device_id (None without a device)."
    )
    model_name: str | None
    model_version: str | None
    score: float | None
    label: str
    reasons: list[str] = Field(description="Reason codes, in the answer's order.")
    degraded: bool
    safeguards: EventSafeguards | None = Field(
        default=None, description="None when the transaction could not be checked (no features)."
    )
    features: EventFeatures | None
    timings: EventTimings
