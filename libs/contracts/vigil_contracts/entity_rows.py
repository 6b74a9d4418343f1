"""What each online row holds, declared once, and one entity's newest row built from its events.

The batch pipeline (``vigil.pipeline``) computes, vectorised, one row per transaction of every
entity from these declarations; the streamer needs only each touched entity's newest row, which
:func:`newest_row` builds from the entity's own events in plain Python: at its newest time ``T``
every windowed feature reads the events with time in ``(T - w, T]`` (ties at ``T`` included,
whatever their order), the row is stamped ``T + 1 µs``, and the first sighting is the entity's
first event. ``tests/test_entity_rows.py`` holds it equal to the pipeline's newest rows on a
generated world (ties, long gaps, first sightings, several currencies).

Standard library only.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter, mul
from typing import Any, NamedTuple

from vigil_contracts.local_time import local_hour
from vigil_contracts.request_features import NIGHT_HOURS

_US_PER_HOUR = 3_600 * 1_000_000
#: The windows' lengths (µs); a window ends at (and includes) the entity's own transaction.
WINDOWS_US: dict[str, int] = {
    "1h": _US_PER_HOUR,
    "24h": 24 * _US_PER_HOUR,
    "7d": 7 * 24 * _US_PER_HOUR,
    "30d": 30 * 24 * _US_PER_HOUR,
}
SMALL_AMOUNT = 5.0  # EUR: card-testing probes are tiny amounts
ROW_DELAY_US = 1  # a row describes the state after t_i, so it becomes visible just after t_i


class Feature(NamedTuple):
    """How a feature is made: ``op`` over the events of the last ``window`` (``of`` an event
    field for distinct counts and the mode)."""

    op: str
    window: str | None = None
    of: str | None = None


#: Every view's features, in the order of the feature views in features.py. Ops: count, sum,
#: mean, std (population), max (of EUR amounts), distinct (non-null values of ``of``), mode
#: (most frequent non-null ``of``, ties -> smallest), night_share, small_share, last_epoch
#: (the newest transaction's time, s), first_seen_epoch (the first sighting's time, s).
FEATURES: dict[str, dict[str, Feature]] = {
    "card_stats": {
        "card_txn_count_1h": Feature("count", "1h"),
        "card_txn_count_24h": Feature("count", "24h"),
        "card_txn_count_7d": Feature("count", "7d"),
        "card_amount_sum_24h": Feature("sum", "24h"),
        "card_amount_avg_30d": Feature("mean", "30d"),
        "card_amount_std_30d": Feature("std", "30d"),
        "card_amount_max_30d": Feature("max", "30d"),
        "card_distinct_merchants_24h": Feature("distinct", "24h", "merchant_id"),
        "card_distinct_devices_30d": Feature("distinct", "30d", "device_id"),
        "card_distinct_countries_30d": Feature("distinct", "30d", "country"),
        "card_last_txn_epoch": Feature("last_epoch"),
        "card_home_country": Feature("mode", "30d", "country"),
    },
    "merchant_stats": {
        "merchant_txn_count_24h": Feature("count", "24h"),
        "merchant_txn_count_7d": Feature("count", "7d"),
        "merchant_amount_avg_7d": Feature("mean", "7d"),
        "merchant_distinct_cards_24h": Feature("distinct", "24h", "card_id"),
        "merchant_night_share_7d": Feature("night_share", "7d"),
        "merchant_small_amount_share_24h": Feature("small_share", "24h"),
    },
    "device_stats": {
        "device_txn_count_24h": Feature("count", "24h"),
        "device_distinct_cards_7d": Feature("distinct", "7d", "card_id"),
        "device_distinct_countries_7d": Feature("distinct", "7d", "country"),
        "device_first_seen_epoch": Feature("first_seen_epoch"),
    },
}

_DTYPE_OF_OP = {"count": "Int64", "distinct": "Int64", "mode": "String"}
#: Feast type name of every feature.
FEATURE_TYPES: dict[str, str] = {
    name: _DTYPE_OF_OP.get(f.op, "Float64")
    for view in FEATURES.values()
    for name, f in view.items()
}
#: Feature names of each view, in order.
FEATURE_TABLES: dict[str, tuple[str, ...]] = {view: tuple(fs) for view, fs in FEATURES.items()}
#: The longest window each view's row reads (µs).
LONGEST_WINDOW_US: dict[str, int] = {
    view: max(WINDOWS_US[f.window] for f in fs.values() if f.window)
    for view, fs in FEATURES.items()
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Event:
    """One transaction as the rows read it (amount in EUR). ``night`` (local time in
    NIGHT_HOURS, by the one local-time rule) is worked out on first use: only merchants' rows
    read it, and it costs more than the rest of an event."""

    __slots__ = ("_night", "amount_eur", "card_id", "country", "device_id", "merchant_id", "t_us")

    def __init__(
        self,
        t_us: int,
        amount_eur: float,
        card_id: str,
        merchant_id: str,
        device_id: str | None,
        country: str | None,
    ) -> None:
        self.t_us = t_us
        self.amount_eur = amount_eur
        self.card_id = card_id
        self.merchant_id = merchant_id
        self.device_id = device_id
        self.country = country
        self._night: bool | None = None

    @property
    def night(self) -> bool:
        if self._night is None:
            hour = local_hour(_EPOCH + timedelta(microseconds=self.t_us), self.country)
            self._night = hour in NIGHT_HOURS
        return self._night


# The per-element work below is C-level (map, attrgetter, Counter, fsum): a hot entity's window
# holds thousands of events and is read again by every batch that touches it.
_T_US = attrgetter("t_us")
_AMOUNT = attrgetter("amount_eur")
_NIGHT = attrgetter("night")
_SMALL = SMALL_AMOUNT.__gt__  # SMALL_AMOUNT > a, i.e. a < SMALL_AMOUNT


def _std(amounts: list[float]) -> float:
    """Population standard deviation (two passes, exactly rounded sums); exactly 0 when every
    amount is the same (as the pipeline's rolling kernel gives it)."""
    if min(amounts) == max(amounts):
        return 0.0
    deviations = list(map((math.fsum(amounts) / len(amounts)).__rsub__, amounts))
    return math.sqrt(math.fsum(map(mul, deviations, deviations)) / len(amounts))


def _mode(values: Iterable[str | None]) -> str | None:
    """The most frequent non-null value, ties -> the smallest; None without one."""
    counts = Counter(values)
    counts.pop(None, None)
    if not counts:
        return None
    return min(counts, key=lambda v: (-counts[v], v))


def newest_row(
    view: str, events: Sequence[Event], first_seen_us: int | None = None
) -> tuple[int, dict[str, Any]]:
    """``(stamp µs, features in the view's order)`` of the entity's newest row.

    ``events``: the entity's events ordered by time (not empty), at least every one in the
    newest row's longest window; ``first_seen_us``: its first sighting (default: the first
    event's time).
    """
    newest = events[-1].t_us
    times = list(map(_T_US, events))
    windows: dict[str, Sequence[Event]] = {}
    amounts: dict[str, list[float]] = {}
    features: dict[str, Any] = {}
    for name, f in FEATURES[view].items():
        if f.op == "last_epoch":
            features[name] = newest / 1e6
            continue
        if f.op == "first_seen_epoch":
            features[name] = (times[0] if first_seen_us is None else first_seen_us) / 1e6
            continue
        assert f.window is not None
        if f.window not in windows:
            windows[f.window] = events[bisect_right(times, newest - WINDOWS_US[f.window]) :]
            amounts[f.window] = list(map(_AMOUNT, windows[f.window]))
        kept, money = windows[f.window], amounts[f.window]
        if f.op == "count":
            features[name] = len(kept)
        elif f.op == "sum":
            features[name] = math.fsum(money)
        elif f.op == "mean":
            features[name] = math.fsum(money) / len(money)
        elif f.op == "std":
            features[name] = _std(money)
        elif f.op == "max":
            features[name] = max(money)
        elif f.op == "distinct":
            assert f.of is not None
            values = set(map(attrgetter(f.of), kept))
            features[name] = len(values) - (None in values)
        elif f.op == "mode":
            assert f.of is not None
            features[name] = _mode(map(attrgetter(f.of), kept))
        elif f.op == "night_share":
            features[name] = sum(map(_NIGHT, kept)) / len(kept)
        elif f.op == "small_share":
            features[name] = sum(map(_SMALL, money)) / len(money)
        else:
            raise ValueError(f"unknown op {f.op!r} of {name}")
    return newest + ROW_DELAY_US, features
