"""The business API of the gateway: what a client sends and what it gets back.

A transaction is validated here, once, so that the gateway, the UI and any client library agree on
what is acceptable. Only pydantic and the standard library are imported (see ``__init__``).
"""

from __future__ import annotations

import re
import socket
import time
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from vigil_contracts.money import MINOR_UNITS, fits_minor_units, minor_units
from vigil_contracts.problems import Problem
from vigil_contracts.thresholds import Label

#: How far in the future a transaction's timestamp may lie (clock skew between a terminal and us).
MAX_FUTURE_SKEW = timedelta(days=1)

Channel = Literal["pos", "ecom", "mobile"]
CHANNELS: tuple[str, ...] = ("pos", "ecom", "mobile")

# RFC 3339 section 5.6 date-time, offset required ("Z" or +hh:mm). Python's ``fromisoformat``
# accepts much more (no offset, week dates, compact forms), so the shape is checked first.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_MAX_FUTURE_SKEW_S = MAX_FUTURE_SKEW.total_seconds()


def _parse_rfc3339(value: Any) -> datetime:
    if isinstance(value, str):
        match = _RFC3339.match(value)
        if match is None:
            raise ValueError(
                "must be an RFC 3339 date-time with a UTC offset, e.g. 2024-05-01T13:45:00Z "
                "or 2024-05-01T15:45:00+02:00"
            )
        text = value
        fraction = match.group(1)  # the only "." of the text, if any
        if fraction is not None and len(fraction) > 7:
            # Python keeps microseconds; nanosecond clocks are legal RFC 3339.
            text = text.replace(fraction, fraction[:7], 1)
        if "z" in text or "t" in text:
            text = text.replace("z", "Z").replace("t", "T")
        try:
            # Aware: the pattern demands an offset.
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"is not a valid date-time ({exc})") from None
    elif isinstance(value, datetime):
        parsed = value
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("must carry a UTC offset (timezone-aware), e.g. a trailing Z")
    else:  # a ValueError, not a TypeError: pydantic reports only that as invalid input
        raise ValueError("must be an RFC 3339 date-time string")  # noqa: TRY004
    # Seconds rather than datetimes: the same test, without building "now" as a datetime.
    if parsed.timestamp() - time.time() > _MAX_FUTURE_SKEW_S:
        raise ValueError("is more than one day in the future")
    return parsed


Timestamp = Annotated[
    datetime,
    BeforeValidator(_parse_rfc3339),
    # Keep the payer's own offset when the transaction is echoed or hashed.
    PlainSerializer(
        lambda dt: dt.isoformat().replace("+00:00", "Z"), return_type=str, when_used="json"
    ),
]


def _ipv4_as_int(value: Any) -> Any:
    """A dotted-quad IPv4 address as its integer, read by the C library (``inet_pton``, which
    accepts exactly the forms ``ipaddress`` does: four decimal octets, no leading zeros, nothing
    around them); anything else is left to ``IPvAnyAddress`` as it came. ``ipaddress`` parses
    text in Python (~4 us, a tenth of a batch item's validation); from an int it is immediate."""
    if type(value) is str and value.count(".") == 3:
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big")
        except (OSError, ValueError):
            pass
    return value


IpAddress = Annotated[
    IPvAnyAddress,
    BeforeValidator(_ipv4_as_int),
    # What is accepted, in JSON Schema's own formats (pydantic's "ipvanyaddress" is not one).
    WithJsonSchema(
        {
            "type": "string",
            "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
            "examples": ["192.0.2.10", "2001:db8::1"],
        }
    ),
]
TransactionId = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_\-:.]{1,64}$", examples=["tx-2024-000123"])
]
EntityId = Annotated[str, Field(min_length=1, max_length=128)]


def _iso_4217(value: str) -> str:
    if minor_units(value) is None:
        raise ValueError("is not an ISO 4217 currency code")
    return value


# The schema lists the codes (what is accepted, exactly); validation checks the same table.
Currency = Annotated[
    str,
    Field(pattern=r"^[A-Z]{3}$", json_schema_extra={"enum": sorted(MINOR_UNITS)}),
    AfterValidator(_iso_4217),
]


def _amount_fits_its_currency() -> dict[str, Any]:
    """The schema of "no more decimals than the currency has": the amount a multiple of the
    currency's minor unit, chosen by the currency (JSON Schema's if/then)."""
    by_digits: dict[int, list[str]] = {}
    for code, digits in sorted(MINOR_UNITS.items()):
        by_digits.setdefault(digits, []).append(code)
    return {
        "allOf": [
            {
                "if": {"properties": {"currency": {"enum": codes}}, "required": ["currency"]},
                "then": {"properties": {"amount": {"multipleOf": 10.0**-digits if digits else 1}}},
            }
            for digits, codes in sorted(by_digits.items())
        ]
    }


class Transaction(BaseModel):
    """One payment to score."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=False, json_schema_extra=_amount_fits_its_currency()
    )

    transaction_id: TransactionId = Field(
        description="The client's id of the transaction; also the idempotency key (1-64 of A-Za-z0-9_-:.)."
    )
    card_id: EntityId = Field(description="Token of the paying card.")
    merchant_id: EntityId = Field(description="Id of the acquiring merchant.")
    # The currency comes before the amount: the amount's decimals are checked against it.
    currency: Currency = Field(
        description=(
            "ISO 4217 code of the amount's currency, e.g. EUR. Features compare amounts in EUR, "
            "converted at the rate of the transaction's day."
        )
    )
    amount: float = Field(
        gt=0,
        le=1e9,
        allow_inf_nan=False,
        strict=True,
        description="Amount in the currency's major unit, with no more decimals than the "
        "currency has (2 for EUR, 0 for JPY, 3 for KWD); > 0 and at most 1e9.",
    )
    timestamp: Timestamp = Field(
        description="When the payment happened: RFC 3339 with an offset. Local time (the hour of "
        "day, night) is this instant in the time zone of `country`, whatever offset it is "
        "written with; without a country (or one Vigil has no zone for), the offset written here."
    )
    channel: Channel = Field(description="pos (card present), ecom (web) or mobile (app).")
    ip_address: IpAddress | None = Field(default=None, description="Payer's IP address, if known.")
    device_id: EntityId | None = Field(
        default=None, description="Payer's device fingerprint, if known."
    )
    country: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166-1 alpha-2 country of the transaction.",
    )

    @field_validator("amount")
    @classmethod
    def _in_minor_units(cls, amount: float, info: ValidationInfo) -> float:
        currency = info.data.get("currency")  # absent when the currency itself was refused
        digits = minor_units(currency) if currency is not None else None
        if digits is not None and not fits_minor_units(amount, digits):
            raise ValueError(f"has more decimals than {currency} has ({digits})")
        return amount


class Reason(BaseModel):
    """Why the model answered as it did, in business words."""

    code: str = Field(description="Stable machine-readable code, e.g. AMOUNT_HIGH_FOR_CARD.")
    text: str = Field(description="Human-readable explanation.")
    feature: str | None = Field(default=None, description="The model feature behind the reason.")
    value: float | None = Field(
        default=None, description="That feature's value for this transaction."
    )
    contribution: float | None = Field(
        default=None, description="The feature's contribution to the score, in log-odds."
    )


class ModelRef(BaseModel):
    name: str
    version: str | None = Field(description="None only when no model metadata was ever obtained.")


class SafeguardsRef(BaseModel):
    """The non-ML safeguards that checked a transaction: the rule set's version and the rules
    that fired (each also given as the answer's first reasons)."""

    version: str = Field(description="Version of the safeguard rule set.")
    fired: list[str] = Field(default_factory=list, description="Codes of the rules that fired.")


class ScoreResponse(BaseModel):
    """The decision about one transaction."""

    transaction_id: str
    label: Label
    score: float | None = Field(description="Probability of fraud in [0, 1]; null when uncertain.")
    reasons: list[Reason]
    model: ModelRef
    degraded: bool = Field(
        description=(
            "True only when one of Vigil's own dependencies (feature encoder, model, the time budget) "
            "failed and the answer fell back to `uncertain`: alert on this. An entity with too little "
            "history is `uncertain` with reason `FEATURES_MISSING` and `degraded: false`."
        )
    )
    safeguards: SafeguardsRef | None = Field(
        default=None,
        description=(
            "The rules beside the model: they can only raise a label's caution (`not_fraud` -> "
            "`suspicious` or more). Null when the transaction could not be checked (no features)."
        ),
    )
    request_id: str
    cached: bool = Field(
        default=False, description="True when this is the stored decision of an earlier request."
    )


class BatchRequest(BaseModel):
    """Many transactions; each item is validated on its own so one bad item fails only itself."""

    model_config = ConfigDict(extra="forbid")

    transactions: list[Any] = Field(
        min_length=1,
        description=(
            "Transactions, each meant to be an object of the single-score `Transaction` schema; "
            "the server caps the count. Any JSON value is accepted as an item: an item that is "
            "not a valid transaction (a missing or malformed field) is answered in its own slot "
            "of `results` with `status: 422` and the problem, and the other items are scored."
        ),
        json_schema_extra={
            "items": {
                "description": "A `Transaction`; an invalid one is answered 422 in its own result slot.",
            }
        },
    )


class BatchItemResult(BaseModel):
    """The outcome for the transaction at ``index``: a decision, or the problem with that item."""

    index: int = Field(ge=0)
    status: int = Field(description="HTTP status this item would have had on its own.")
    result: ScoreResponse | None = None
    error: Problem | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BatchItemResult:
        if (self.result is None) == (self.error is None):
            raise ValueError("exactly one of result and error must be set")
        return self


class BatchResponse(BaseModel):
    request_id: str
    results: list[BatchItemResult] = Field(description="One per input transaction, in input order.")
