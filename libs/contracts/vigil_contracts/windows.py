"""Request-time windows: every windowed feature declared once, and its one implementation.

"In the last hour" means the hour before the transaction being scored: the events of the entity
with time in ``(t - w, t)``, strictly before ``t`` (an event at the same instant is not counted).
Cards and devices make this possible by storing their recent events (:data:`EVENT_FIELDS`:
their times in µs and what the features read of them), kept as Feast arrays, oldest first, over
the view's longest window and at most :data:`EVENT_CAP` of them; the window is finished at
request time ``t`` from those events (Tecton's "continuous" sliding windows).

Merchants are Zipf-popular: per-row event lists of theirs grow with the square of the traffic.
The merchant view is **tiled** instead (:data:`TILES`): it stores time-bucketed partial
aggregates at two granularities, hour tiles over the last 25 UTC hours (count, small-amount
count) and day tiles over the last 8 UTC days (count, EUR amount sum, local-night count), each
level as Feast arrays, oldest first, keyed by the tile's index (``us // unit``). A tiled window
of ``k`` units at ``t`` is the tiles with index in ``[U(t) - k, U(t)]``: the 24h window runs
from the start of the UTC hour 24 hours before ``t``, the 7d window from the start of the UTC
day 7 days before; the stored row is the merchant's newest strictly before ``t`` (stamped
``T + 1 µs <= t``), so its tiles hold only events before ``t`` (a transaction scored after
later ones of its merchant were stored would see those in its own hour or day tile: the encoder
cuts that row's tiles again at ``t``, ``entity_rows.tiles_before``). Tiles are sums, so a
distinct count does not tile: the merchant has none.

:data:`WINDOWED` declares each feature (name, view, window, aggregate, the event field or tile
sum it reads, Feast type); :func:`window_row` computes one entity's features at one instant (the
encoder's form) and :func:`window_columns` many at once, vectorised (offline frames). A test
holds the two equal bit for bit on many rows: both add in stored order, so sums, means and
standard deviations are the same floats.

An entity with no stored state (unknown) gives missing features (None), as a missing stored
value does today, and so does a card or device with no stored event before ``t`` that was first
seen at or after ``t`` (its stored first sighting, :data:`FIRST_SEEN`): at ``t`` it was
unknown, as a transaction scored again once the streamer stored it must see (the row then holds
the transaction itself). A known entity whose window holds no event gives 0 for counts, sums and
distinct counts, and None for a mean, std, max, share or mode (there is none).

Imports only the standard library and numpy (for the vectorised form, imported when used).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from math import sqrt
from operator import add, mul
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: At most this many of an entity's most recent events are kept per list (pipeline and streamer
#: alike); a window holding more is computed over the newest EVENT_CAP.
EVENT_CAP = 1000

#: Amounts below this (EUR) are "small": card-testing probes are tiny.
SMALL_AMOUNT = 5.0

_US_PER_HOUR = 3_600 * 1_000_000
WINDOWS_US: dict[str, int] = {
    "1h": _US_PER_HOUR,
    "24h": 24 * _US_PER_HOUR,
    "7d": 7 * 24 * _US_PER_HOUR,
    "30d": 30 * 24 * _US_PER_HOUR,
}

#: Per event view: its event lists (short name -> (what it holds, Feast element type)). ``us``
#: is the event time (µs since the epoch); ids and countries are "" when the event has none.
EVENT_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "card_stats": {
        "card_event_us": ("us", "Int64"),
        "card_event_amounts": ("amount", "Float64"),
        "card_event_merchants": ("merchant", "String"),
        "card_event_devices": ("device", "String"),
        "card_event_countries": ("country", "String"),
    },
    "device_stats": {
        "device_event_us": ("us", "Int64"),
        "device_event_cards": ("card", "String"),
        "device_event_countries": ("country", "String"),
    },
}


@dataclass(frozen=True)
class TileLevel:
    """One granularity of a tiled view: tiles of ``unit_us`` (index ``us // unit_us``) serving
    the ``window`` (``k`` units: tiles ``[U(t) - k, U(t)]``, so ``k + 1`` are kept), each tile
    its list of sums (list name -> (what it sums, Feast element type)); ``index`` is the tile's
    index, ``count`` its events, ``small`` those with an EUR amount below :data:`SMALL_AMOUNT`,
    ``amount`` their EUR amounts, ``night`` those at local night."""

    unit_us: int
    window: str
    lists: dict[str, tuple[str, str]]

    @property
    def units(self) -> int:
        """``k``: how many whole units before the current one the window reaches back."""
        return WINDOWS_US[self.window] // self.unit_us

    @property
    def index_list(self) -> str:
        return next(name for name, (what, _) in self.lists.items() if what == "index")


#: Per tiled view: its tile levels, finest first.
TILES: dict[str, tuple[TileLevel, ...]] = {
    "merchant_stats": (
        TileLevel(
            _US_PER_HOUR,
            "24h",
            {
                "merchant_hour_index": ("index", "Int64"),
                "merchant_hour_count": ("count", "Int64"),
                "merchant_hour_small": ("small", "Int64"),
            },
        ),
        TileLevel(
            24 * _US_PER_HOUR,
            "7d",
            {
                "merchant_day_index": ("index", "Int64"),
                "merchant_day_count": ("count", "Int64"),
                "merchant_day_amount": ("amount", "Float64"),
                "merchant_day_night": ("night", "Int64"),
            },
        ),
    ),
}

#: Every view, in order (card, merchant, device).
VIEWS: tuple[str, ...] = ("card_stats", "merchant_stats", "device_stats")


def stored_lists(view: str) -> dict[str, tuple[str, str]]:
    """A view's stored lists (name -> (what it holds, Feast element type)): its event lists, or
    its tile levels' lists one level after the other."""
    if view in TILES:
        return {name: spec for level in TILES[view] for name, spec in level.lists.items()}
    return EVENT_FIELDS[view]


def list_groups(view: str) -> dict[str, tuple[str, ...]]:
    """A view's stored lists grouped by the lists of one length (key list -> its group): the
    event lists under the time list, or each tile level's lists under its index list."""
    if view in TILES:
        return {level.index_list: tuple(level.lists) for level in TILES[view]}
    times = next(name for name, (of, _) in EVENT_FIELDS[view].items() if of == "us")
    return {times: tuple(EVENT_FIELDS[view])}


#: Per view: its stored features that are not windows (name -> Feast type), after the events.
STORED_SCALARS: dict[str, dict[str, str]] = {
    "card_stats": {"card_last_txn_epoch": "Float64", "card_first_seen_epoch": "Float64"},
    "merchant_stats": {},
    "device_stats": {"device_first_seen_epoch": "Float64"},
}

#: Per event view: its entity's first sighting (epoch seconds), a stored scalar. At a ``t``
#: with no stored event before it and at or before the first sighting, the entity was unknown.
#: (A merchant's tiles hold sums, not times: its row cannot tell, and has no such scalar; the
#: encoder reads its first sighting from its history, ``entity_rows.tiles_before``.)
FIRST_SEEN: dict[str, str] = {
    "card_stats": "card_first_seen_epoch",
    "device_stats": "device_first_seen_epoch",
}


def first_seen_us(stored: Any) -> int | None:
    """A stored first sighting (epoch seconds) in µs, as :func:`request_us` reads an instant;
    None when not stored (None, NaN, pandas' NA)."""
    try:
        seconds = float(stored)
    except (TypeError, ValueError):
        return None
    return None if seconds != seconds else round(seconds * 1_000_000)


def _unknown_at(times: Sequence[int], t_us: int, first_us: int | None) -> bool:
    """No stored event before ``t_us`` and first seen at or after it: unknown at ``t_us``."""
    return first_us is not None and first_us >= t_us and (not times or times[0] >= t_us)


def stored_features(view: str) -> dict[str, str]:
    """Everything a view stores, in order (name -> Feast type): its event or tile lists, then its
    scalars. Feast's schema, the offline table and the streamer's rows are this."""
    return {
        **{name: f"Array({dtype})" for name, (_, dtype) in stored_lists(view).items()},
        **STORED_SCALARS[view],
    }


@dataclass(frozen=True)
class Windowed:
    """One windowed feature: ``how`` of event field ``of`` over the last ``window``; in a tiled
    view, of tile sum ``of`` over the tiles of the level serving ``window`` (count: the events'
    count; mean and share: the sum of ``of`` over that count)."""

    name: str
    view: str
    window: str
    how: str  # count | sum | mean | std | max | distinct | mode | share | share_small | last
    of: str | None
    dtype: str  # Feast type of the output
    output: bool = True
    """A model input (an output of the view's on-demand view, if numeric); False: read only by
    request-time features."""

    @property
    def window_us(self) -> int:
        return WINDOWS_US[self.window]


_DTYPE = {
    "count": "Int64",
    "distinct": "Int64",
    "sum": "Float64",
    "mean": "Float64",
    "std": "Float64",
    "max": "Float64",
    "share": "Float64",
    "share_small": "Float64",
    "mode": "String",
    "last": "Float64",
}


def _w(
    name: str, view: str, window: str, how: str, of: str | None = None, output: bool = True
) -> Windowed:
    return Windowed(name, view, window, how, of, _DTYPE[how], output)


#: Every windowed feature, in the order the views list them.
WINDOWED: tuple[Windowed, ...] = (
    _w("card_txn_count_1h", "card_stats", "1h", "count"),
    _w("card_txn_count_24h", "card_stats", "24h", "count"),
    _w("card_txn_count_7d", "card_stats", "7d", "count"),
    _w("card_amount_sum_24h", "card_stats", "24h", "sum", "amount"),
    _w("card_amount_avg_30d", "card_stats", "30d", "mean", "amount"),
    _w("card_amount_std_30d", "card_stats", "30d", "std", "amount"),
    _w("card_amount_max_30d", "card_stats", "30d", "max", "amount"),
    _w("card_distinct_merchants_24h", "card_stats", "24h", "distinct", "merchant"),
    _w("card_distinct_devices_30d", "card_stats", "30d", "distinct", "device"),
    _w("card_distinct_countries_30d", "card_stats", "30d", "distinct", "country"),
    _w("card_home_country", "card_stats", "30d", "mode", "country"),
    # The card's newest transaction strictly before this one (epoch seconds), for the
    # request-time gap to it when the stored row already holds this transaction or later ones.
    _w("card_prev_txn_epoch", "card_stats", "30d", "last", "us", output=False),
    # merchant_stats is tiled (TILES): 24h windows read its hour tiles, 7d its day tiles.
    _w("merchant_txn_count_24h", "merchant_stats", "24h", "count"),
    _w("merchant_txn_count_7d", "merchant_stats", "7d", "count"),
    _w("merchant_amount_avg_7d", "merchant_stats", "7d", "mean", "amount"),
    _w("merchant_night_share_7d", "merchant_stats", "7d", "share", "night"),
    _w("merchant_small_amount_share_24h", "merchant_stats", "24h", "share", "small"),
    _w("device_txn_count_24h", "device_stats", "24h", "count"),
    _w("device_distinct_cards_7d", "device_stats", "7d", "distinct", "card"),
    _w("device_distinct_countries_7d", "device_stats", "7d", "distinct", "country"),
)


def view_features(view: str) -> tuple[Windowed, ...]:
    return tuple(f for f in WINDOWED if f.view == view)


def longest_window_us(view: str) -> int:
    """A view's longest window (µs)."""
    return max(f.window_us for f in view_features(view))


def history_us(view: str) -> int:
    """How far before its newest event an entity's newest row reads events (µs): an event
    view's longest window; a tiled view's coarsest tiles, from the start of the oldest kept."""
    if view in TILES:
        return max((level.units + 1) * level.unit_us for level in TILES[view])
    return longest_window_us(view)


def tile_level(f: Windowed) -> TileLevel:
    """The tile level a tiled view's feature reads: the one serving its window."""
    return next(level for level in TILES[f.view] if level.window == f.window)


def _tile_list(level: TileLevel, what: str) -> str:
    return next(name for name, (w, _) in level.lists.items() if w == what)


def _check_tiled() -> None:
    for f in WINDOWED:
        if f.view not in TILES:
            continue
        level = tile_level(f)  # StopIteration: a window no level serves
        sums = {w for w, _ in level.lists.values()}
        if f.how not in ("count", "sum", "mean", "share") or (
            f.of is not None and f.of not in sums
        ):
            raise ValueError(f"{f.name}: {f.how} of {f.of!r} does not tile")


_check_tiled()


def _field_lists(view: str) -> dict[str, str]:
    """Event field (``us``, ``amount``, ...) -> the view's list of it."""
    return {of: name for name, (of, _) in EVENT_FIELDS[view].items()}


# Per view, computed once (the encoder calls these per row): its time list, its features'
# names; for a tiled view (name, aggregate, index list, count list, sum list read, units back,
# unit) of each feature.
_TIMES = {view: _field_lists(view)["us"] for view in EVENT_FIELDS}
_NAMES = {view: tuple(f.name for f in view_features(view)) for view in VIEWS}
_BY_NAME = {f.name: f for f in WINDOWED}
_TILE_PLANS = {
    view: tuple(
        (
            f.name,
            f.how,
            (level := tile_level(f)).index_list,
            _tile_list(level, "count"),
            None if f.of is None else _tile_list(level, f.of),
            level.units,
            level.unit_us,
        )
        for f in view_features(view)
    )
    for view in TILES
}


def _aggregate(how: str, values: Sequence[Any], n: int) -> Any:
    """``how`` of the ``n`` events of a window (``values`` their field, in time order). Sums
    add in stored order, one after the other (``reduce(add)``, not ``sum``, whose float
    summation Python may change), as :func:`window_columns` does."""
    if how == "count":
        return n
    if how == "sum":
        return reduce(add, values, 0.0)
    if how == "distinct":
        return len(set(filter(None, values)))
    if n == 0:
        return None
    if how == "mean" or how == "std":
        mean = reduce(add, values, 0.0) / n
        if how == "mean":
            return mean
        if max(values) == min(values):
            return 0.0  # exactly: a rounded mean must not make equal amounts look spread
        deviations = [x - mean for x in values]
        return sqrt(reduce(add, map(mul, deviations, deviations), 0.0) / n)  # ddof=0
    if how == "max":
        return max(values)
    if how == "share":
        return reduce(add, values, 0) / n
    if how == "share_small":
        return sum(1 for x in values if x < SMALL_AMOUNT) / n
    if how == "last":  # the newest event time (µs), as epoch seconds
        return values[-1] / 1_000_000
    if how == "mode":  # most frequent non-empty value; ties -> lexicographically smallest
        candidates = sorted(set(filter(None, values)))
        if len(candidates) <= 8:  # few (a card's countries): one C count each is cheapest
            # max keeps the first of equal counts: the smallest, as the candidates are sorted.
            return max(candidates, key=values.count, default=None)
        counts = Counter(filter(None, values))
        return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    raise ValueError(f"unknown aggregate {how!r}")


@dataclass(frozen=True)
class _EventPlan:
    """Some features of an event view, computed together: each feature's aggregate, the list it
    reads (None: a count) and the slots of its window's start and of its slice of that list,
    so one row bisects each window once and slices each list once per window."""

    times: str
    features: tuple[tuple[str, str | None, int, int, int], ...]  # how, list, w_us, slots
    windows: int
    slices: int
    longest_us: int
    empty: tuple[Any, ...]  # the values of a known entity with no event in any window

    @classmethod
    def of(cls, view: str, names: Sequence[str]) -> _EventPlan:
        fields = _field_lists(view)
        by_window: dict[int, int] = {}
        by_slice: dict[tuple[str, int], int] = {}
        features = []
        for name in names:
            f = _BY_NAME[name]
            values_list = None if f.of is None or f.how == "count" else fields[f.of]
            w = by_window.setdefault(f.window_us, len(by_window))
            k = -1 if values_list is None else by_slice.setdefault((values_list, w), len(by_slice))
            features.append((f.how, values_list, f.window_us, w, k))
        empty = tuple(_aggregate(f.how, (), 0) for f in map(_BY_NAME.__getitem__, names))
        longest = max(w_us for _, _, w_us, _, _ in features)
        return cls(fields["us"], tuple(features), len(by_window), len(by_slice), longest, empty)

    def values(
        self, events: Mapping[str, Any], times: list[Any], t_us: int, first_us: int | None = None
    ) -> list[Any]:
        """The features at ``t_us`` of an entity with stored state (``times`` its event times,
        ``events`` its lists by name: lists, or anything :func:`events_of` reads; ``first_us``
        its first sighting, when stored)."""
        hi = bisect_left(times, t_us)  # events strictly before t
        if hi == 0 and _unknown_at(times, t_us, first_us):
            return [None] * len(self.features)
        if hi == 0 or times[hi - 1] <= t_us - self.longest_us:
            return [*self.empty]  # no event in the longest window, so in none
        starts: list[int] = [-1] * self.windows
        slices: list[Any] = [None] * self.slices
        out: list[Any] = []
        for how, values_list, w_us, w, k in self.features:
            lo = starts[w]
            if lo < 0:
                lo = starts[w] = bisect_right(times, t_us - w_us, 0, hi)  # events after t - w
            if values_list is None:
                out.append(hi - lo)
                continue
            values = slices[k]
            if values is None:
                stored = events[values_list]
                if type(stored) is not list:
                    stored = events_of(stored) or []
                values = slices[k] = stored[lo:hi]
            out.append(_aggregate(how, values, hi - lo))
        return out


def window_row(
    view: str,
    events: Mapping[str, Any],
    t_us: int,
    outputs_only: bool = False,
    first_us: int | None = None,
) -> dict[str, Any]:
    """The view's windowed features at instant ``t_us`` from one entity's stored events
    (list name -> list, oldest first); all None when the entity has no state (``us`` list
    None). ``outputs_only``: only its on-demand view's outputs (:func:`view_outputs`). A tiled
    view's ``events`` are its tile lists (its outputs are all numeric)."""
    if view in TILES:
        return _tile_row(view, events, t_us)
    names = _OUTPUTS[view] if outputs_only else _NAMES[view]
    times = events.get(_TIMES[view])
    if times is None:
        return dict.fromkeys(names)
    values = _event_plan(view, names).values(events, times, t_us, first_us)
    return dict(zip(names, values, strict=True))


def _tile_row(view: str, tiles: Mapping[str, Any], t_us: int) -> dict[str, Any]:
    """:func:`window_row` of a tiled view: each feature over its level's tiles with index in
    ``[U(t) - units, U(t)]`` (a tiled view has only numeric outputs)."""
    plans = _TILE_PLANS[view]
    if tiles.get(plans[0][2]) is None:
        return {plan[0]: None for plan in plans}
    out: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name, how, index_list, count_list, sum_list, units, unit_us in plans:
        span = spans.get(index_list)
        if span is None:
            index = tiles[index_list]
            u = t_us // unit_us
            span = spans[index_list] = (bisect_left(index, u - units), bisect_right(index, u))
        lo, hi = span
        n = 0
        for c in tiles[count_list][lo:hi]:
            n += c
        if how == "count":
            out[name] = n
            continue
        assert sum_list is not None
        total: Any = 0.0 if how == "sum" else 0  # int sums (night, small) stay exact
        for x in tiles[sum_list][lo:hi]:
            total += x
        out[name] = float(total) if how == "sum" else (None if n == 0 else total / n)
    return out


def window_columns(
    view: str,
    offsets: Mapping[str, np.ndarray],
    events: Mapping[str, np.ndarray],
    t_us: np.ndarray,
) -> dict[str, np.ndarray]:
    """:func:`window_row` of many entities at once, vectorised.

    Row ``i``'s lists of one group (:func:`list_groups`, keyed by its key list) are
    ``events[name][offsets[key][i]:offsets[key][i + 1]]`` (the lists flattened, each oldest
    first; each ``offsets[key]`` has one more entry than there are rows, int64); an empty slice
    is a row with no events (tiles); a row without state must be masked by the caller. Returns
    feature -> array: int64 for counts, float64 (NaN for None) for numbers, object (None for
    none) for modes.
    """
    import numpy as np

    if view in TILES:
        return _tile_columns(view, offsets, events, t_us)
    fields = _field_lists(view)
    times_offsets = offsets[fields["us"]]
    n = len(times_offsets) - 1
    lengths = np.diff(times_offsets)
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    times = np.asarray(events[fields["us"]], dtype=np.int64)
    t_row = np.repeat(np.asarray(t_us, dtype=np.int64), lengths)
    before = times < t_row
    out: dict[str, np.ndarray] = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for f in view_features(view):
        inside = before & (times > t_row - f.window_us)
        count = np.bincount(row[inside], minlength=n).astype(np.int64)
        if f.how == "count":
            out[f.name] = count
            continue
        assert f.of is not None
        values = events[fields[f.of]]
        if f.how in ("distinct", "mode"):
            if f.of not in codes:
                codes[f.of] = _factorize(values)
            code, uniques = codes[f.of]
            keep = inside & (code > 0)  # code 0 is "" (no value)
            n_codes = np.int64(len(uniques))
            pair, pair_count = np.unique(row[keep] * n_codes + code[keep], return_counts=True)
            pair_row = pair // n_codes
            if f.how == "distinct":
                out[f.name] = np.bincount(pair_row, minlength=n).astype(np.int64)
                continue
            # Per row: highest count, then smallest code (codes follow sorted values).
            order = np.lexsort((pair % n_codes, -pair_count, pair_row))
            first = np.ones(len(order), dtype=bool)
            first[1:] = pair_row[order][1:] != pair_row[order][:-1]
            best = order[first]
            mode = np.full(n, None, dtype=object)
            mode[pair_row[best]] = uniques[pair[best] % n_codes]
            out[f.name] = mode
            continue
        x = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            if f.how == "sum":
                out[f.name] = np.bincount(row[inside], weights=x[inside], minlength=n)
            elif f.how in ("mean", "std"):
                mean = np.bincount(row[inside], weights=x[inside], minlength=n) / count
                if f.how == "mean":
                    out[f.name] = mean
                else:
                    d = x[inside] - mean[row[inside]]
                    std = np.sqrt(np.bincount(row[inside], weights=d * d, minlength=n) / count)
                    top, bottom = np.full(n, -np.inf), np.full(n, np.inf)
                    np.maximum.at(top, row[inside], x[inside])
                    np.minimum.at(bottom, row[inside], x[inside])
                    out[f.name] = np.where(top == bottom, 0.0, std)
            elif f.how == "max":
                top = np.full(n, -np.inf)
                np.maximum.at(top, row[inside], x[inside])
                out[f.name] = np.where(count > 0, top, np.nan)
            elif f.how == "share":
                out[f.name] = np.bincount(row[inside], weights=x[inside], minlength=n) / count
            elif f.how == "share_small":
                small = inside & (x < SMALL_AMOUNT)
                out[f.name] = np.bincount(row[small], minlength=n) / count
            elif f.how == "last":
                top = np.full(n, -np.inf)
                np.maximum.at(top, row[inside], x[inside])
                out[f.name] = np.where(count > 0, top / 1_000_000, np.nan)
            else:
                raise ValueError(f"unknown aggregate {f.how!r}")
    return out


def _tile_columns(
    view: str,
    offsets: Mapping[str, np.ndarray],
    tiles: Mapping[str, np.ndarray],
    t_us: np.ndarray,
) -> dict[str, np.ndarray]:
    """:func:`window_columns` of a tiled view (:func:`_tile_row`, vectorised; bincount adds
    in stored order, as the row form)."""
    import numpy as np

    t = np.asarray(t_us, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for name, how, index_list, count_list, sum_list, units, unit_us in _TILE_PLANS[view]:
        group = np.asarray(offsets[index_list], dtype=np.int64)
        n = len(group) - 1
        lengths = np.diff(group)
        row = np.repeat(np.arange(n, dtype=np.int64), lengths)
        index = np.asarray(tiles[index_list], dtype=np.int64)
        u = np.repeat(t // unit_us, lengths)
        inside = (index >= u - units) & (index <= u)
        counts = np.asarray(tiles[count_list], dtype=np.int64)[inside]
        count = np.bincount(row[inside], weights=counts, minlength=n).astype(np.int64)
        if how == "count":
            out[name] = count
            continue
        assert sum_list is not None
        x = np.asarray(tiles[sum_list], dtype=np.float64)[inside]
        total = np.bincount(row[inside], weights=x, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = total if how == "sum" else np.where(count > 0, total / count, np.nan)
    return out


def _factorize(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Codes of text values in sorted order, "" always code 0 (no value)."""
    import numpy as np

    uniques, code = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    if len(uniques) == 0 or uniques[0] != "":
        uniques = np.concatenate(([""], uniques))
        code = code + 1
    return code.reshape(-1).astype(np.int64), uniques.astype(object)


# --- request time: the forms Feast's on-demand views and the encoder call -----------------------


def request_us(txn_epoch: float) -> int:
    """The request's instant in integer µs (``txn_epoch`` is seconds, as the gateway sends it)."""
    return round(txn_epoch * 1_000_000)


def events_of(value: Any) -> list[Any] | None:
    """A stored event list as a list; None when the entity has no state (None, NaN)."""
    if value is None:
        return None
    if type(value) is list:
        return value
    if isinstance(value, float) or type(value).__name__ == "NAType":
        return None  # NaN / pandas' NA: offline, a transaction whose entity has no row yet
    tolist = getattr(value, "tolist", None)  # numpy / arrow arrays from offline frames
    return list(tolist() if tolist is not None else value)


def aggregate(name: str, events: Mapping[str, Any], t_us: int) -> Any:
    """One windowed feature (by name) at ``t_us`` from one entity's events (or tiles); None
    when the entity has no state."""
    return aggregate_many((name,), events, t_us)[0]


def aggregate_many(names: tuple[str, ...], events: Mapping[str, Any], t_us: int) -> list[Any]:
    """Windowed features of one view (by name) at ``t_us`` from one entity's events (or
    tiles), computed together (:func:`aggregate` of each); all None when it has no state."""
    view = _BY_NAME[names[0]].view
    if view in TILES:
        row = window_row(view, {k: events_of(events.get(k)) for k in stored_lists(view)}, t_us)
        return [row[name] for name in names]
    times = events_of(events.get(_TIMES[view]))
    if times is None:
        return [None] * len(names)
    return _event_plan(view, names).values(events, times, t_us)


_EVENT_PLANS: dict[tuple[str, ...], _EventPlan] = {}


def _event_plan(view: str, names: tuple[str, ...]) -> _EventPlan:
    plan = _EVENT_PLANS.get(names)
    if plan is None:
        plan = _EVENT_PLANS[names] = _EventPlan.of(view, names)
    return plan


#: Request field the windows read (beside the view's event lists).
REQUEST_FIELD = "txn_epoch"


def view_outputs(view: str) -> tuple[str, ...]:
    """The numeric windowed features of a view: the outputs of its on-demand view."""
    return _OUTPUTS[view]


_OUTPUTS = {
    view: tuple(f.name for f in view_features(view) if f.output and f.dtype != "String")
    for view in VIEWS
}


def transform_row(view: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The on-demand view of ``view``'s windows for one row (stored lists, first sighting,
    ``txn_epoch``)."""
    events = {name: events_of(row.get(name)) for name in stored_lists(view)}
    first_us = first_seen_us(row.get(FIRST_SEEN[view])) if view in FIRST_SEEN else None
    t_us = request_us(float(row[REQUEST_FIELD]))
    return window_row(view, events, t_us, outputs_only=True, first_us=first_us)


def transform_reads(view: str) -> frozenset[str]:
    """What the on-demand view of ``view``'s windows reads of a row: its stored lists, its first
    sighting (an event view's) and the request's instant."""
    first = (FIRST_SEEN[view],) if view in FIRST_SEEN else ()
    return frozenset((*stored_lists(view), *first, REQUEST_FIELD))


#: Results of a tiled view kept by :func:`transform_vector` (one per merchant and hour met).
TILED_KEPT = 4096


def transform_vector(view: str) -> Any:
    """:func:`transform_row`'s outputs as vector entries (float; NaN for missing): the
    encoder's form. An event view reads each list as it comes (a list, or anything
    :func:`events_of` reads) without first gathering them into a mapping."""
    names = view_outputs(view)
    nan = float("nan")
    if view in TILES:
        lists = tuple(stored_lists(view))
        units = tuple(level.unit_us for level in TILES[view])
        # A tiled row's outputs depend only on its tile lists and its tiles' indices at t, and
        # a batch holds many rows of a popular merchant in one hour: those share one result.
        # Keyed by the lists' identity (the encoder decodes equal bytes to one list); an entry
        # keeps its lists alive, so no other list can take their ids while it is there.
        done: dict[tuple[int, ...], tuple[tuple[Any, ...], list[float]]] = {}

        def tiled(row: Mapping[str, Any]) -> list[float]:
            stored = tuple(map(row.get, lists))
            t_us = request_us(float(row[REQUEST_FIELD]))
            key = (*map(id, stored), *[t_us // unit for unit in units])
            hit = done.get(key)
            if hit is not None:
                return [*hit[1]]
            events = dict(zip(lists, map(events_of, stored), strict=True))
            out = window_row(view, events, t_us, True)
            vector = [nan if (v := out[name]) is None else float(v) for name in names]
            if len(done) >= TILED_KEPT:
                done.clear()
            done[key] = (stored, vector)
            return [*vector]

        return tiled
    plan = _event_plan(view, names)
    times_list = plan.times
    missing = [nan] * len(names)
    first_seen = FIRST_SEEN[view]

    def vector(row: Mapping[str, Any]) -> list[float]:
        times = row.get(times_list)
        if type(times) is not list:
            times = events_of(times)
            if times is None:
                return [*missing]
        t_us = request_us(float(row[REQUEST_FIELD]))
        values = plan.values(row, times, t_us, first_seen_us(row.get(first_seen)))
        return [nan if v is None else float(v) for v in values]

    return vector


def transform_columns(
    view: str, columns: Mapping[str, Sequence[Any]], names: Sequence[str] | None = None
) -> dict[str, list[Any]]:
    """Column-wise :func:`transform_row` (Feast's python-mode batch): vectorised over many
    rows (training frames), the same values as row by row (a test holds them equal). ``names``:
    the features wanted (default: the view's outputs)."""
    import numpy as np

    names = view_outputs(view) if names is None else tuple(names)
    t = columns[REQUEST_FIELD]
    n = len(t)
    specs = stored_lists(view)
    lists: dict[str, list[Any]] = {name: [events_of(v) for v in columns[name]] for name in specs}
    first = next(iter(specs))
    known = [i for i in range(n) if lists[first][i] is not None]
    if view in FIRST_SEEN and (seen := columns.get(FIRST_SEEN[view])) is not None:
        # No stored event before t and first seen at or after it: unknown at t (missing).
        times = lists[_TIMES[view]]
        known = [
            i
            for i in known
            if not _unknown_at(times[i], request_us(float(t[i])), first_seen_us(seen[i]))
        ]
    out: dict[str, list[Any]] = {name: [None] * n for name in names}
    if not known:
        return out
    offsets: dict[str, np.ndarray] = {}
    for key in list_groups(view):
        lengths = np.array([len(lists[key][i]) for i in known], dtype=np.int64)
        offsets[key] = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    flat: dict[str, np.ndarray] = {}
    for name, (_, dtype) in specs.items():
        kind = {"Int64": np.int64, "Float64": np.float64, "String": object}[dtype]
        values = [v for i in known for v in lists[name][i]]
        flat[name] = np.array(values, dtype=kind) if values else np.zeros(0, dtype=kind)
    t_us = np.array([request_us(float(t[i])) for i in known], dtype=np.int64)
    computed = window_columns(view, offsets, flat, t_us)
    for name in names:
        f = _BY_NAME[name]
        values = computed[name].tolist()
        column = out[name]
        for j, i in enumerate(known):
            v = values[j]
            column[i] = int(v) if f.dtype == "Int64" else (None if v is None or v != v else v)
    return out


#: Batches smaller than this are computed row by row (numpy's fixed cost is not worth it).
COLUMNS_MIN_ROWS = 16


def transform_vector_columns(
    view: str, columns: Mapping[str, Sequence[Any]]
) -> list[list[float]] | None:
    """:func:`transform_vector` of many rows given as columns, vectorised: the outputs as
    columns (float; NaN for missing); None for a batch better done row by row."""
    if len(columns[REQUEST_FIELD]) < COLUMNS_MIN_ROWS:
        return None
    nan = float("nan")
    out = transform_columns(view, columns)
    return [[nan if v is None else float(v) for v in out[name]] for name in view_outputs(view)]


def feast_columns(view: str, inputs: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """:func:`transform_columns` as Feast's on-demand view hands it out: a missing float is NaN
    (``feast apply`` infers each output's type from a sample row, where None is no type); a
    missing count stays None."""
    nan = float("nan")
    out = transform_columns(view, inputs)
    return {
        name: values
        if _BY_NAME[name].dtype == "Int64"
        else [nan if v is None else v for v in values]
        for name, values in out.items()
    }
