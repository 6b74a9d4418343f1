"""Request-time (on-demand) features, as pure functions.

Feast's on-demand feature view ``request_features`` (``feature_repo/features.py``) calls
:func:`transform_columns` for training and for the SDK's online path; the encoder calls
:func:`transform_row` directly so that it never has to import Feast. Both run this one body of
code, which is what keeps training and serving from drifting apart. The encoder's batch path
uses :func:`transform_row_vector`, the same expressions without the output dict and the
per-input type dispatch, and its column form :func:`transform_vector_columns`; rows they do not
expect go to :func:`transform_row`, and tests hold the three equal on tens of thousands of rows,
so a change to one that is not made to the others fails the suite.

Missing inputs (an entity that is not in the store arrives as ``None``; offline it may arrive as
NaN) give missing outputs (``None``), never an exception.

Money is compared in EUR (``vigil_contracts.money.BASE_CURRENCY``): the request's ``amount`` is
in the transaction's currency, ``eur_per_unit`` (the ``fx_rates`` view, keyed by that currency)
converts it; ``txn_amount`` and the ratios to the card's (EUR) history are in EUR. A currency
without a rate gives them missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from vigil_contracts import windows
from vigil_contracts.local_time import local_hour

#: The card's history the amount is compared with: its windows at request time
#: (``vigil_contracts.windows``), from the card's stored events.
CARD_HISTORY: tuple[str, ...] = ("card_amount_avg_30d", "card_amount_std_30d", "card_home_country")
HISTORY_EVENTS = "card_event_us"

#: Request fields the gateway sends with every row, and their Feast types.
REQUEST_FIELDS: dict[str, str] = {
    "amount": "Float64",
    "txn_epoch": "Float64",
    "txn_hour": "Int64",
    "channel": "String",
    "country": "String",
    "device_present": "Int64",
}

#: Stored features (short names) the transform reads, by feature view.
STORED_INPUTS: dict[str, tuple[str, ...]] = {
    "card_stats": (
        "card_event_us",
        "card_event_amounts",
        "card_event_countries",
        "card_last_txn_epoch",
    ),
    "device_stats": ("device_first_seen_epoch",),
    "fx_rates": ("eur_per_unit",),
}

#: Output features, in order. All are Float64.
OUTPUT_FEATURES: tuple[str, ...] = (
    "txn_amount",
    "amount_to_card_avg_30d",
    "amount_zscore_card_30d",
    "hour_of_day",
    "is_night",
    "channel_code",
    "seconds_since_card_last_txn",
    "device_age_days",
    "is_new_device",
    "country_mismatch",
)

CHANNEL_CODES: dict[str, float] = {"pos": 0.0, "ecom": 1.0, "mobile": 2.0}
NIGHT_HOURS = range(6)


def _missing(value: Any) -> bool:
    """None or NaN. Plain floats and text are settled without ``math.isnan`` raising and
    catching a TypeError (text is most of what the encoder checks, once per row and field)."""
    if value is None:
        return True
    kind = type(value)
    if kind is float:
        return value != value
    if kind is str:
        return False
    try:
        return math.isnan(value)
    except TypeError:
        return False


def with_card_history(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """``row`` with the card's 30-day average, std and home country at the request's instant
    (:data:`CARD_HISTORY`), finished from its stored events (None for an unknown card). A row
    without the events (no ``card_event_us`` key) is taken to carry the history itself."""
    if HISTORY_EVENTS not in row:
        return row
    t_us = windows.request_us(float(row["txn_epoch"]))
    return {**row, **{name: windows.aggregate(name, row, t_us) for name in CARD_HISTORY}}


def transform_row(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Compute the on-demand features of one row from request fields and stored inputs."""
    row = with_card_history(row)
    return _transform_row(row)


def _transform_row(row: Mapping[str, Any]) -> dict[str, float | None]:
    paid = float(row["amount"])
    rate: Any = row.get("eur_per_unit")
    amount = None if _missing(rate) else paid * float(rate)
    epoch = float(row["txn_epoch"])
    hour = int(row["txn_hour"])
    # Any, not Any | None: _missing() has ruled None out wherever these meet arithmetic.
    avg: Any = row.get("card_amount_avg_30d")
    std: Any = row.get("card_amount_std_30d")
    last: Any = row.get("card_last_txn_epoch")
    home = row.get("card_home_country")
    first_seen: Any = row.get("device_first_seen_epoch")
    device_present = int(row.get("device_present") or 0)

    ratio = None if amount is None or _missing(avg) or float(avg) <= 0 else amount / float(avg)
    zscore = None
    if amount is not None and not (_missing(avg) or _missing(std)) and float(std) > 0:
        zscore = (amount - float(avg)) / float(std)
    since_last = None if _missing(last) else max(0.0, epoch - float(last))
    device_age = None
    if device_present and not _missing(first_seen):
        device_age = max(0.0, epoch - float(first_seen)) / 86400.0
    is_new_device = 1.0 if device_present and _missing(first_seen) else 0.0
    country = row.get("country")
    mismatch = None  # unknown when either side is unknown, never a guess
    if not (_missing(home) or home == "" or _missing(country) or country == ""):
        mismatch = 0.0 if str(country) == str(home) else 1.0
    return {
        "txn_amount": amount,
        "amount_to_card_avg_30d": ratio,
        "amount_zscore_card_30d": zscore,
        "hour_of_day": float(hour),
        "is_night": 1.0 if hour in NIGHT_HOURS else 0.0,
        "channel_code": CHANNEL_CODES.get(str(row.get("channel")), -1.0),
        "seconds_since_card_last_txn": since_last,
        "device_age_days": device_age,
        "is_new_device": is_new_device,
        "country_mismatch": mismatch,
    }


_NAN = math.nan
_FLOAT_OR_NONE = frozenset({float, type(None)})
_TEXT_OR_NONE = frozenset({str, type(None)})
_INT_OR_NONE = frozenset({int, type(None)})


def _vector(outputs: Mapping[str, float | None]) -> list[float]:
    # A finite number as a float; None, NaN and inf are missing: NaN (NaN - NaN and inf - inf
    # are NaN, which is not 0).
    return [
        _NAN if value is None or value - value != 0.0 else float(value)
        for value in map(outputs.__getitem__, OUTPUT_FEATURES)
    ]


def transform_row_vector(row: Mapping[str, Any]) -> list[float]:
    """:func:`transform_row`'s outputs as vector entries, in ``OUTPUT_FEATURES`` order: a finite
    float, or NaN where :func:`transform_row` gives None, NaN or inf.

    The encoder's form. Rows as it builds them (request fields of their dtypes, stored inputs a
    float, text or None) are computed here with the same expressions, without the output dict
    and the per-input type dispatch; any other row is handed to :func:`transform_row` itself.
    A test holds the two equal on many rows, missing, NaN, empty and odd inputs included.
    """
    if HISTORY_EVENTS in row:
        if type(row.get("txn_epoch")) is not float:
            return _vector(transform_row(row))
        row = with_card_history(row)
    get = row.get
    # An absent required field is not a float or an int either: transform_row then raises.
    paid = get("amount")
    rate = get("eur_per_unit")
    epoch = get("txn_epoch")
    hour = get("txn_hour")
    # Any, not Any | None: the type tests below and the None tests further down rule None out
    # wherever these meet arithmetic (mypy does not follow `type(x) in ...` or avg_missing).
    avg: Any = get("card_amount_avg_30d")
    std: Any = get("card_amount_std_30d")
    last: Any = get("card_last_txn_epoch")
    home = get("card_home_country")
    first_seen: Any = get("device_first_seen_epoch")
    device_present = get("device_present")
    country = get("country")
    channel = get("channel")
    if not (
        type(paid) is float
        and paid - paid == 0.0
        and type(rate) in _FLOAT_OR_NONE
        and type(epoch) is float
        and epoch - epoch == 0.0
        and type(hour) is int
        and type(channel) is str
        and type(device_present) in _INT_OR_NONE
        and type(avg) in _FLOAT_OR_NONE
        and type(std) in _FLOAT_OR_NONE
        and type(last) in _FLOAT_OR_NONE
        and type(first_seen) in _FLOAT_OR_NONE
        and type(home) in _TEXT_OR_NONE
        and type(country) in _TEXT_OR_NONE
    ):
        return _vector(_transform_row(row))

    # From here every input is a float or None (None or NaN = missing), an int, or text or None.
    nan = _NAN
    amount = nan if rate is None or rate != rate else paid * rate
    avg_missing = avg is None or avg != avg or amount != amount
    ratio = nan if avg_missing or avg <= 0 else amount / avg
    zscore = nan
    if not (avg_missing or std is None or std != std) and std > 0:
        zscore = (amount - avg) / std
    since_last = nan if last is None or last != last else max(0.0, epoch - last)
    first_seen_missing = first_seen is None or first_seen != first_seen
    device_age = nan
    if device_present and not first_seen_missing:
        device_age = max(0.0, epoch - first_seen) / 86400.0
    return [
        amount if amount - amount == 0.0 else nan,
        ratio if ratio - ratio == 0.0 else nan,
        zscore if zscore - zscore == 0.0 else nan,
        float(hour),
        1.0 if hour in NIGHT_HOURS else 0.0,
        CHANNEL_CODES.get(channel, -1.0),
        since_last if since_last - since_last == 0.0 else nan,
        device_age if device_age - device_age == 0.0 else nan,
        1.0 if device_present and first_seen_missing else 0.0,
        nan if not home or not country else (0.0 if country == home else 1.0),
    ]


_FLOAT = frozenset({float})
_INT = frozenset({int})
_TEXT = frozenset({str})


def transform_vector_columns(columns: Mapping[str, Sequence[Any]]) -> list[list[float]] | None:
    """:func:`transform_row_vector` of many rows at once, given as columns (input name -> one
    value per row): the outputs as columns, in ``OUTPUT_FEATURES`` order; None when a column is
    absent or not of the shape :func:`transform_row_vector` computes itself (then compute the
    rows one by one).

    The encoder's batch form: one type test per column instead of eleven per row, and each
    output a comprehension over its inputs, with the very expressions of
    :func:`transform_row_vector` (``max(0.0, d)`` spelled ``d if d > 0.0 else 0.0``, which is
    the same value for every float). A test holds it equal to it row for row.
    """
    try:
        if HISTORY_EVENTS in columns:
            with_history = _with_card_history_columns(columns)
            if with_history is None:
                return None
            columns = with_history
        paid, epoch, hour = columns["amount"], columns["txn_epoch"], columns["txn_hour"]
        rate = columns["eur_per_unit"]
        channel, country = columns["channel"], columns["country"]
        device_present = columns["device_present"]
        avg, std = columns["card_amount_avg_30d"], columns["card_amount_std_30d"]
        last, home = columns["card_last_txn_epoch"], columns["card_home_country"]
        first_seen = columns["device_first_seen_epoch"]
    except KeyError:
        return None
    if not (
        set(map(type, paid)) <= _FLOAT
        and set(map(type, epoch)) <= _FLOAT
        and set(map(type, rate)) <= _FLOAT_OR_NONE
        and set(map(type, hour)) <= _INT
        and set(map(type, channel)) <= _TEXT
        and set(map(type, device_present)) <= _INT_OR_NONE
        and set(map(type, avg)) <= _FLOAT_OR_NONE
        and set(map(type, std)) <= _FLOAT_OR_NONE
        and set(map(type, last)) <= _FLOAT_OR_NONE
        and set(map(type, first_seen)) <= _FLOAT_OR_NONE
        and set(map(type, home)) <= _TEXT_OR_NONE
        and set(map(type, country)) <= _TEXT_OR_NONE
    ):
        return None
    # Every amount and epoch finite: then so are their sums, unless a sum overflows (that batch
    # goes row by row).
    if not ((total := sum(paid)) - total == 0.0 and (total := sum(epoch)) - total == 0.0):
        return None

    nan = _NAN
    # None and NaN rates give NaN amounts (``x * nan``); an overflow to inf is NaN too.
    amount = [
        nan if r is None else (a if (a := x * r) - a == 0.0 else nan)
        for x, r in zip(paid, rate, strict=True)
    ]
    # None, NaN and values <= 0 fail "a > 0.0"; a finite float or an inf is what remains.
    ratio = [
        nan if a is None or not a > 0.0 or x != x else (r if (r := x / a) - r == 0.0 else nan)
        for x, a in zip(amount, avg, strict=True)
    ]
    zscore = [
        nan
        if a is None or a != a or s is None or not s > 0.0 or x != x
        else (z if (z := (x - a) / s) - z == 0.0 else nan)
        for x, a, s in zip(amount, avg, std, strict=True)
    ]
    since_last = [
        nan
        if t is None or t != t
        else ((d if d - d == 0.0 else nan) if (d := e - t) > 0.0 else 0.0)
        for e, t in zip(epoch, last, strict=True)
    ]
    device_age = [
        nan
        if not p or f is None or f != f
        else ((g if (g := d / 86400.0) - g == 0.0 else nan) if (d := e - f) > 0.0 else 0.0)
        for e, f, p in zip(epoch, first_seen, device_present, strict=True)
    ]
    code = CHANNEL_CODES.get
    return [
        amount,
        ratio,
        zscore,
        list(map(float, hour)),
        [1.0 if h in NIGHT_HOURS else 0.0 for h in hour],
        [code(c, -1.0) for c in channel],
        since_last,
        device_age,
        [
            1.0 if p and (f is None or f != f) else 0.0
            for f, p in zip(first_seen, device_present, strict=True)
        ],
        [
            nan if not h or not c else (0.0 if c == h else 1.0)
            for h, c in zip(home, country, strict=True)
        ],
    ]


def _with_card_history_columns(
    columns: Mapping[str, Sequence[Any]],
) -> Mapping[str, Sequence[Any]] | None:
    """:func:`with_card_history` of many rows as columns (None: epochs that are not floats)."""
    epoch = columns["txn_epoch"]
    if not set(map(type, epoch)) <= _FLOAT:
        return None
    names = STORED_INPUTS["card_stats"][:3]  # the events the history reads
    history: dict[str, list[Any]] = {name: [] for name in CARD_HISTORY}
    for e, *lists in zip(epoch, *(columns[name] for name in names), strict=True):
        t_us = windows.request_us(e)
        row = dict(zip(names, lists, strict=True))
        for name, values in history.items():
            values.append(windows.aggregate(name, row, t_us))
    return {**columns, **history}


def transform_columns(columns: Mapping[str, list[Any]]) -> dict[str, list[float | None]]:
    """Column-wise form of :func:`transform_row` (Feast's python-mode batch shape)."""
    needed = list(REQUEST_FIELDS) + [f for fs in STORED_INPUTS.values() for f in fs]
    if HISTORY_EVENTS not in columns:  # the card's history given as it is (see with_card_history)
        needed = [f for f in needed if not f.startswith("card_event_")] + list(CARD_HISTORY)
    n = len(columns["amount"])
    out: dict[str, list[float | None]] = {name: [] for name in OUTPUT_FEATURES}
    for i in range(n):
        row = {name: (columns[name][i] if name in columns else None) for name in needed}
        for name, value in transform_row(row).items():
            out[name].append(value)
    return out


#: Entity value used when a transaction has no device: it is never in the store, so the device
#: features come back missing, exactly as in training.
NO_DEVICE_ID = "__no_device__"


def request_columns(
    amounts: Sequence[float],
    timestamps: Sequence[datetime],
    channels: Sequence[str],
    countries: Sequence[str],
    device_present: Sequence[bool],
) -> dict[str, list[Any]]:
    """Business transactions -> their request-time fields, one column per field (what a batch
    is sent to the encoder as); :func:`request_fields` is this for one transaction.

    The hour of day is local time by the one rule of :mod:`vigil_contracts.local_time`: the
    instant in the time zone of the transaction's country (the offset it was written with when
    the country has no zone there).
    """
    return {
        "amount": [float(amount) for amount in amounts],
        "txn_epoch": [timestamp.timestamp() for timestamp in timestamps],
        "txn_hour": [
            local_hour(timestamp, country)
            for timestamp, country in zip(timestamps, countries, strict=True)
        ],
        "channel": list(channels),
        "country": list(countries),
        "device_present": [1 if present else 0 for present in device_present],
    }


def request_fields(
    amount: float, timestamp: datetime, channel: str, country: str, device_present: bool
) -> dict[str, float | int | str]:
    """Business transaction -> request-time fields; the one mapping training and the gateway
    share (:func:`request_columns` of one transaction)."""
    columns = request_columns((amount,), (timestamp,), (channel,), (country,), (device_present,))
    return {name: values[0] for name, values in columns.items()}
