"""Request-time (on-demand) features: each declared once, with its one implementation.

A feature is a small function of one row's values, declared with :func:`feature` in "The
features" below: its name is the function's, its parameters name the inputs it reads, the
decorator gives its Feast type, and its place there is its place in the vector. Everything else
is generated from those declarations (:class:`Declared`): :data:`OUTPUT_FEATURES`, the stored
inputs by view (:data:`STORED_INPUTS`), the on-demand view's schema and sources in
``feature_repo/features.py``, and the forms callers use, each a loop of the same functions:
:func:`transform_row` (a dict per row), :func:`transform_columns` (Feast's python-mode batch:
training and the SDK), :func:`transform_row_vector` and :func:`transform_vector_columns` (the
encoder's row and batch). So training and serving cannot drift apart, and a feature is added in
one place (docs/adding-a-feature.md).

A parameter names one of:

- a request field (:data:`REQUEST_FIELDS`);
- a stored feature: a view's scalar (``windows.STORED_SCALARS``) or a rate (:data:`FX_RATES`);
- a windowed feature (``windows.WINDOWED``), finished at the request's instant from the view's
  stored events (a row without the view's events carries the value itself);
- an earlier feature, as it returned it (computed once per row, whoever reads it).

A function sees a missing input (an entity not in the store arrives as ``None``; offline it may
arrive as NaN; text may be "") as ``None``, never NaN, and returns a float, or None for missing;
never an exception for a missing input.

Money is compared in EUR (``vigil_contracts.money.BASE_CURRENCY``): the request's ``amount`` is
in the transaction's currency, ``eur_per_unit`` (the ``fx_rates`` view, keyed by that currency)
converts it; ``txn_amount`` and the ratios to the card's (EUR) history are in EUR. A currency
without a rate gives them missing.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, TypeVar

from vigil_contracts import windows
from vigil_contracts.local_time import local_hour

#: Request fields the gateway sends with every row, and their Feast types.
REQUEST_FIELDS: dict[str, str] = {
    "amount": "Float64",
    "txn_epoch": "Float64",
    "txn_hour": "Int64",
    "channel": "String",
    "country": "String",
    "device_present": "Int64",
}
#: Request fields that may be missing: a transaction without a known country or a device. The
#: others are required (a row without one is an error, as Feast's request source makes it).
OPTIONAL_REQUEST_FIELDS = frozenset({"country", "device_present"})

#: Stored features outside ``vigil_contracts.windows``, by view: the dated FX table.
FX_RATES: dict[str, dict[str, str]] = {"fx_rates": {"eur_per_unit": "Float64"}}

#: Feast types a request-time feature may have (the encoder's vectors hold numbers).
OUTPUT_DTYPES = frozenset({"Float64", "Int64"})

CHANNEL_CODES: dict[str, float] = {"pos": 0.0, "ecom": 1.0, "mobile": 2.0}
NIGHT_HOURS = range(6)


@dataclass(frozen=True)
class RequestFeature:
    """One request-time feature: ``compute`` of the inputs ``reads`` names, for one row."""

    name: str
    dtype: str
    reads: tuple[str, ...]
    compute: Callable[..., Any]

    @classmethod
    def of(cls, compute: Callable[..., Any], dtype: str = "Float64") -> RequestFeature:
        """The feature a function declares: its name, and its parameters' names as inputs."""
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"{compute.__name__}: dtype {dtype!r} is not one of {OUTPUT_DTYPES}")
        reads = tuple(inspect.signature(compute).parameters)
        return cls(compute.__name__, dtype, reads, compute)


_F = TypeVar("_F", bound=Callable[..., Any])
_DECLARED: list[RequestFeature] = []


def feature(dtype: str) -> Callable[[_F], _F]:
    """Declare the decorated function a request-time feature of Feast type ``dtype``, after
    those declared before it (in this module; elsewhere, a test builds a
    :class:`RequestFeature` with :meth:`RequestFeature.of`)."""

    def declare(compute: _F) -> _F:
        _DECLARED.append(RequestFeature.of(compute, dtype))
        return compute

    return declare


# --- The features ------------------------------------------------------------------------------


@feature("Float64")
def txn_amount(amount: float, eur_per_unit: float | None) -> float | None:
    """The amount in EUR; missing for a currency without a rate (never taken as EUR)."""
    return None if eur_per_unit is None else amount * eur_per_unit


@feature("Float64")
def amount_to_card_avg_30d(
    txn_amount: float | None, card_amount_avg_30d: float | None
) -> float | None:
    """The amount against the card's 30-day average (both EUR)."""
    if txn_amount is None or card_amount_avg_30d is None or card_amount_avg_30d <= 0:
        return None
    return txn_amount / card_amount_avg_30d


@feature("Float64")
def amount_zscore_card_30d(
    txn_amount: float | None, card_amount_avg_30d: float | None, card_amount_std_30d: float | None
) -> float | None:
    """How many of the card's 30-day standard deviations the amount is above its average."""
    if txn_amount is None or card_amount_avg_30d is None or card_amount_std_30d is None:
        return None
    if not card_amount_std_30d > 0:
        return None
    return (txn_amount - card_amount_avg_30d) / card_amount_std_30d


@feature("Float64")
def hour_of_day(txn_hour: int) -> float:
    """The local hour (``vigil_contracts.local_time``)."""
    return float(txn_hour)


@feature("Float64")
def is_night(txn_hour: int) -> float:
    """Local time is in :data:`NIGHT_HOURS`."""
    return 1.0 if txn_hour in NIGHT_HOURS else 0.0


@feature("Float64")
def channel_code(channel: str) -> float:
    """The channel as a number (:data:`CHANNEL_CODES`; -1 for any other)."""
    return CHANNEL_CODES.get(channel, -1.0)


@feature("Float64")
def seconds_since_card_last_txn(
    txn_epoch: float, card_last_txn_epoch: float | None, card_prev_txn_epoch: float | None
) -> float | None:
    """Seconds since the card's previous transaction: its newest one strictly before this one.
    That is the stored newest, unless the store already holds this transaction (a rescore
    after the streamer applied its decision) or later ones: then the newest of the card's
    events of the 30 days before this one, missing when it has none there."""
    if card_last_txn_epoch is None:
        return None
    if card_last_txn_epoch < txn_epoch:
        return txn_epoch - card_last_txn_epoch
    return None if card_prev_txn_epoch is None else txn_epoch - card_prev_txn_epoch


def _seen_before(txn_epoch: float, device_first_seen_epoch: float | None) -> bool:
    """The store saw the device strictly before this transaction (not only with it, or after)."""
    return device_first_seen_epoch is not None and device_first_seen_epoch < txn_epoch


@feature("Float64")
def device_age_days(
    txn_epoch: float, device_present: int | None, device_first_seen_epoch: float | None
) -> float | None:
    """Days since the store first saw the device, before this transaction; missing without a
    device or an earlier sighting."""
    if not device_present or device_first_seen_epoch is None:
        return None
    if device_first_seen_epoch >= txn_epoch:  # first seen with this transaction, or after it
        return None
    return (txn_epoch - device_first_seen_epoch) / 86400.0


@feature("Float64")
def is_new_device(
    txn_epoch: float, device_present: int | None, device_first_seen_epoch: float | None
) -> float:
    """A device was sent and the store never saw it before this transaction."""
    return 1.0 if device_present and not _seen_before(txn_epoch, device_first_seen_epoch) else 0.0


@feature("Float64")
def country_mismatch(country: str | None, card_home_country: str | None) -> float | None:
    """The transaction's country is not the card's home country; unknown when either side is
    unknown, never a guess."""
    if country is None or card_home_country is None:
        return None
    return 0.0 if country == card_home_country else 1.0


#: Every request-time feature, in vector order.
FEATURES: tuple[RequestFeature, ...] = tuple(_DECLARED)


# --- What the declarations generate -----------------------------------------------------------

_NAN = math.nan
_NONE = type(None)
_TYPES: dict[str, type] = {"Float64": float, "Int64": int, "String": str}


def _missing(value: Any) -> bool:
    """None or NaN. Plain floats and text are settled without ``math.isnan`` raising and
    catching a TypeError."""
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


def _event_list(view: str, holding: str) -> str:
    """The view's event list holding ``holding`` (``us``, ``amount``, ...)."""
    return next(name for name, (of, _) in windows.EVENT_FIELDS[view].items() if of == holding)


def _marker(view: str) -> str:
    """The list whose presence in a row says the view's state is given (its events' times, or
    a tiled view's first tile index)."""
    if view in windows.TILES:
        return next(iter(windows.list_groups(view)))
    return _event_list(view, "us")


def _lists_read(w: windows.Windowed) -> set[str]:
    """The view's stored lists a windowed feature is finished from (a tiled view's: all)."""
    if w.view in windows.TILES:
        return set(windows.stored_lists(w.view))
    return {_event_list(w.view, "us"), *(() if w.of is None else (_event_list(w.view, w.of),))}


def _reader(name: str, dtype: str, required: bool) -> Callable[[Mapping[str, Any]], Any]:
    """How any row's value of an input becomes what the functions see: a required one converted
    (absent: KeyError), an optional one None when missing (None, NaN or "")."""
    convert = _TYPES[dtype]
    if required:
        return lambda row: convert(row[name])
    return lambda row: None if _missing(v := row.get(name)) or v == "" else convert(v)


@dataclass(frozen=True)
class _Input:
    name: str
    dtype: str
    required: bool
    view: str | None  # None: a request field
    windowed: bool  # finished from the view's events


def _inputs(features: Sequence[RequestFeature]) -> dict[str, _Input]:
    """Every input the features read, in the order first read, found where it is declared."""
    stored = {
        name: (view, dtype)
        for view, scalars in {**windows.STORED_SCALARS, **FX_RATES}.items()
        for name, dtype in scalars.items()
    }
    windowed = {w.name: w for w in windows.WINDOWED}
    inputs: dict[str, _Input] = {}
    earlier: set[str] = set()
    for f in features:
        if f.name in earlier or f.name in REQUEST_FIELDS or f.name in stored:
            raise ValueError(f"{f.name} is declared twice (a feature or an input)")
        if f.name in windowed:
            raise ValueError(f"{f.name} is a windowed feature (vigil_contracts.windows)")
        if not f.reads:
            raise ValueError(f"{f.name} reads no input")
        for name in f.reads:
            if name in inputs or name in earlier:
                continue
            if name in REQUEST_FIELDS:
                required = name not in OPTIONAL_REQUEST_FIELDS
                inputs[name] = _Input(name, REQUEST_FIELDS[name], required, None, False)
            elif name in stored:
                view, dtype = stored[name]
                inputs[name] = _Input(name, dtype, False, view, False)
            elif name in windowed:
                w = windowed[name]
                inputs[name] = _Input(name, w.dtype, False, w.view, True)
            else:
                raise ValueError(
                    f"{f.name} reads {name!r}: no request field, stored or windowed feature, "
                    "nor a feature declared before it"
                )
        earlier.add(f.name)
    return inputs


class Declared:
    """Everything generated from declarations of request-time features (:data:`FEATURES`; a
    test builds one with an extra feature): their names, inputs and the four forms.

    Each form reads a row's inputs (any row: :meth:`row`, :meth:`columns`; the encoder's rows,
    of their types, faster: :meth:`row_vector`, :meth:`vector_columns`), finishes the windows
    read from the views' events once per row, then calls each feature's function once per row
    in declaration order, keeping its value for the features after it that read it.
    """

    def __init__(self, features: Sequence[RequestFeature]) -> None:
        self.features = tuple(features)
        self.outputs: tuple[str, ...] = tuple(f.name for f in self.features)
        self.inputs: tuple[_Input, ...] = tuple(_inputs(self.features).values())
        self._names = tuple(i.name for i in self.inputs)
        # A row's values: its inputs, then each feature's as it is computed.
        slots = {name: k for k, name in enumerate([*self._names, *self.outputs])}
        self._calls = tuple(
            (f.compute, tuple(map(slots.__getitem__, f.reads))) for f in self.features
        )
        self._getters = tuple((compute, itemgetter(*k), len(k) == 1) for compute, k in self._calls)
        self._readers = tuple(_reader(i.name, i.dtype, i.required) for i in self.inputs)
        # The encoder's types: a float, int or str (None too where the input may be missing);
        # of those, NaN numbers and "" texts are read as missing, and its required numbers are
        # finite.
        self._gates = tuple(
            frozenset({_TYPES[i.dtype]} if i.required else {_TYPES[i.dtype], _NONE})
            for i in self.inputs
        )
        optional = [(k, i.dtype) for k, i in enumerate(self.inputs) if not i.required]
        self._nan_slots = tuple(k for k, dtype in optional if dtype == "Float64")
        self._text_slots = tuple(k for k, dtype in optional if dtype == "String")
        self._finite_slots = tuple(
            k for k, i in enumerate(self.inputs) if i.required and i.dtype == "Float64"
        )

        #: Windowed inputs by view, and the view's event lists they are finished from.
        self.windowed: dict[str, tuple[str, ...]] = {}
        lists: dict[str, set[str]] = {}
        for w in windows.WINDOWED:
            if w.name in self._names:
                self.windowed[w.view] = (*self.windowed.get(w.view, ()), w.name)
                lists.setdefault(w.view, set()).update(_lists_read(w))
        self._event_lists = {
            view: tuple(name for name in windows.stored_lists(view) if name in read)
            for view, read in lists.items()
        }
        self._times = {view: _marker(view) for view in self.windowed}
        self._windowed_slots = {
            view: tuple((slots[name], name) for name in windowed)
            for view, windowed in self.windowed.items()
        }

        #: Stored features read (short names), by feature view, in the views' own order.
        self.stored_inputs: dict[str, tuple[str, ...]] = {}
        stored = {*self._names, *(name for read in lists.values() for name in read)}
        for view in [*windows.VIEWS, *FX_RATES]:
            order = FX_RATES[view] if view in FX_RATES else windows.stored_features(view)
            if names := tuple(name for name in order if name in stored):
                self.stored_inputs[view] = names

    # -- reading inputs

    def _with_windows(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """``row`` with its windowed inputs finished at its instant from the views' events
        (None for an entity without state); a view whose events it lacks is taken as given."""
        views = [view for view, times in self._times.items() if times in row]
        if not views:
            return row
        t_us = windows.request_us(float(row[windows.REQUEST_FIELD]))
        finished = dict(row)
        for view in views:
            names = self.windowed[view]
            finished.update(zip(names, windows.aggregate_many(names, row, t_us), strict=True))
        return finished

    def _with_windows_columns(
        self, columns: Mapping[str, Sequence[Any]]
    ) -> Mapping[str, Sequence[Any]] | None:
        """:meth:`_with_windows` of many rows as columns (None: request times not floats)."""
        views = [view for view, times in self._times.items() if times in columns]
        if not views:
            return columns
        epoch = columns[windows.REQUEST_FIELD]
        if not set(map(type, epoch)) <= {float}:
            return None
        t_us = [windows.request_us(e) for e in epoch]
        out = dict(columns)
        for view in views:
            lists = self._event_lists[view]
            rows = [
                dict(zip(lists, row, strict=True))
                for row in zip(*map(columns.__getitem__, lists), strict=True)
            ]
            names = self.windowed[view]
            finished = [
                windows.aggregate_many(names, r, t) for r, t in zip(rows, t_us, strict=True)
            ]
            for k, name in enumerate(names):
                out[name] = [values[k] for values in finished]
        return out

    # -- computing

    def _evaluate(self, values: list[Any]) -> list[Any]:
        """One row's features from its inputs (in ``inputs`` order; each feature's value is
        appended to them, for the features after it)."""
        append = values.append
        for compute, get, single in self._getters:
            append(compute(get(values)) if single else compute(*get(values)))
        return values[len(self._names) :]

    def _evaluate_columns(self, inputs: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """:meth:`_evaluate` of many rows, one feature at a time over their columns."""
        columns: list[Any] = [*inputs]
        for compute, slots in self._calls:
            columns.append(list(map(compute, *[columns[k] for k in slots])))
        return columns[len(self._names) :]

    # -- the forms

    def row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The features of one row of any types (request fields and stored inputs by short
        name): a value, or None (or NaN) for missing."""
        row = self._with_windows(row)
        return dict(
            zip(self.outputs, self._evaluate([read(row) for read in self._readers]), strict=True)
        )

    def columns(self, columns: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """:meth:`row` of many rows given as columns (Feast's python-mode batch shape); an
        absent column is None in every row."""
        names = [*self._names]
        for view, times in self._times.items():
            if times in columns:  # finished from its events, not given
                names = [n for n in names if n not in self.windowed[view]] + [
                    *self._event_lists[view]
                ]
        if windows.REQUEST_FIELD not in names and self.windowed:
            names.append(windows.REQUEST_FIELD)
        n = len(next(iter(columns.values()), ()))
        out: dict[str, list[Any]] = {name: [] for name in self.outputs}
        appends = [out[name].append for name in self.outputs]
        for i in range(n):
            row = {name: (columns[name][i] if name in columns else None) for name in names}
            for append, value in zip(appends, self.row(row).values(), strict=True):
                append(value)
        return out

    def feast_columns(self, inputs: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        """:meth:`columns` as Feast's on-demand view hands it out: a missing float is NaN
        (``feast apply`` infers each output's type from a sample row, where None is no type)."""
        nan = _NAN
        dtypes = {f.name: f.dtype for f in self.features}
        return {
            name: values if dtypes[name] != "Float64" else [nan if v is None else v for v in values]
            for name, values in self.columns(inputs).items()
        }

    def row_vector(self, row: Mapping[str, Any]) -> list[float]:
        """:meth:`row`'s outputs as vector entries: a finite float, or NaN where :meth:`row`
        gives None, NaN or inf. A row of the encoder's types (each input a float, int or str as
        its Feast type says, or None where it may be missing) is read without converting."""
        values = [*map(row.get, self._names)]
        for view, times in self._times.items():
            if times in row:
                t_us = windows.request_us(float(row[windows.REQUEST_FIELD]))
                finished = windows.aggregate_many(self.windowed[view], row, t_us)
                for (k, _), value in zip(self._windowed_slots[view], finished, strict=True):
                    values[k] = value
        if all(map(frozenset.__contains__, self._gates, map(type, values))):
            for k in self._nan_slots:
                if values[k] != values[k]:
                    values[k] = None
            for k in self._text_slots:
                if not values[k]:
                    values[k] = None
        else:
            row = self._with_windows(row)
            values = [read(row) for read in self._readers]
        # NaN - NaN and inf - inf are NaN, which is not 0.
        return [_NAN if v is None or v - v != 0.0 else float(v) for v in self._evaluate(values)]

    def vector_columns(self, columns: Mapping[str, Sequence[Any]]) -> list[list[float]] | None:
        """:meth:`row_vector` of many rows given as columns (input -> one value per row): the
        outputs as columns; None when a column is absent or not of the encoder's types (then
        compute the rows one by one). Its required numbers are finite (their sum is, which a
        batch whose sum overflows also leaves to the rows)."""
        try:
            with_windows = self._with_windows_columns(columns)
            if with_windows is None:
                return None
            given = [*map(with_windows.__getitem__, self._names)]
        except KeyError:
            return None
        if not all(set(map(type, c)) <= gate for c, gate in zip(given, self._gates, strict=True)):
            return None
        for k in self._finite_slots:
            if (total := sum(given[k])) - total != 0.0:
                return None
        for k in self._nan_slots:
            given[k] = [v if v == v else None for v in given[k]]
        for k in self._text_slots:
            given[k] = [v or None for v in given[k]]
        nan = _NAN
        return [
            [nan if v is None or v - v != 0.0 else float(v) for v in column]
            for column in self._evaluate_columns(given)
        ]


#: The forms of :data:`FEATURES`.
DECLARED = Declared(FEATURES)
#: Output features, in vector order.
OUTPUT_FEATURES: tuple[str, ...] = DECLARED.outputs
#: Stored features (short names) the features read, by feature view.
STORED_INPUTS: dict[str, tuple[str, ...]] = DECLARED.stored_inputs
#: The card's history the amount is compared with: its windows at request time, from its events.
CARD_HISTORY: tuple[str, ...] = DECLARED.windowed["card_stats"]
HISTORY_EVENTS = _event_list("card_stats", "us")

transform_row = DECLARED.row
transform_columns = DECLARED.columns
feast_columns = DECLARED.feast_columns
transform_row_vector = DECLARED.row_vector
transform_vector_columns = DECLARED.vector_columns


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
