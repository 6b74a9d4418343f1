"""An entity's newest online row, built directly from its events: the streamer's rows.

The batch pipeline (``vigil.pipeline``) emits, vectorised, one row per transaction of every
entity; the streamer needs only each touched entity's newest, which is a selection from the
entity's own events: at its newest time ``T``, the events with time in ``(T - w, T]`` for the
view's longest window ``w``, oldest first, ties in the order given (the pipeline's: its input
order; the streamer's: its history's, time then transaction), at most ``EVENT_CAP`` (the newest),
plus the scalars (``T`` and the first sighting, in epoch seconds) and the stamp ``T + 1 µs``.
A tiled view (merchants, ``vigil_contracts.windows.TILES``) stores instead, per level, the sums
of its events' tiles from ``U(T) - units`` to ``U(T)`` (every event, no cap; tiles are sums, so
the order events arrive in changes nothing but a float sum's last bits).
``tests/test_entity_rows.py`` holds it equal to the pipeline's rows on a generated world (ties,
the cap, the first sighting, a merchant with more events than the cap).

Standard library only.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from vigil_contracts.local_time import local_hour
from vigil_contracts.request_features import NIGHT_HOURS
from vigil_contracts.windows import (
    EVENT_CAP,
    EVENT_FIELDS,
    FIRST_SEEN,
    SMALL_AMOUNT,
    STORED_SCALARS,
    TILES,
    TileLevel,
    longest_window_us,
)

#: A row describes the state after its newest transaction, so it is stamped just after it.
ROW_DELAY_US = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WINDOW_US = {view: longest_window_us(view) for view in EVENT_FIELDS}
_FIELDS = {view: tuple(EVENT_FIELDS[view].items()) for view in EVENT_FIELDS}


@dataclass(frozen=True, slots=True)
class Event:
    """One transaction as the views' event lists hold it (attribute = event field name)."""

    us: int
    amount: float  # EUR
    card: str
    merchant: str
    device: str  # "" without one
    country: str  # "" without one
    night: int  # 1 when local time is in NIGHT_HOURS


def event(
    t_us: int,
    amount_eur: float,
    card_id: str,
    merchant_id: str,
    device_id: str | None,
    country: str | None,
) -> Event:
    """The :class:`Event` of a transaction (night by its country's local time, as the pipeline)."""
    hour = local_hour(_EPOCH + timedelta(microseconds=t_us), country)
    return Event(
        t_us,
        amount_eur,
        card_id,
        merchant_id,
        device_id or "",
        country or "",
        1 if hour in NIGHT_HOURS else 0,
    )


def newest_row(
    view: str, events: Sequence[Event], first_seen_us: int | None = None
) -> tuple[int, dict[str, Any]]:
    """``(stamp µs, stored features in the view's order)`` of the entity's newest row.

    ``events``: the entity's events ordered by time (ties in their order), at least every one
    in its newest row's window; ``first_seen_us``: its first sighting (default: the first
    event's time). ``events`` must not be empty.
    """
    newest = events[-1].us
    if view in TILES:
        tiled: dict[str, Any] = {}
        for level in TILES[view]:
            tiled.update(tiles(level, events, newest))
        return newest + ROW_DELAY_US, tiled
    times = [e.us for e in events]
    start = max(bisect_right(times, newest - _WINDOW_US[view]), len(events) - EVENT_CAP)
    kept = events[start:]
    features: dict[str, Any] = {
        name: [getattr(e, of) for e in kept] for name, (of, _) in _FIELDS[view]
    }
    if "card_last_txn_epoch" in STORED_SCALARS[view]:
        features["card_last_txn_epoch"] = newest / 1e6
    if view in FIRST_SEEN:
        first = events[0].us if first_seen_us is None else first_seen_us
        features[FIRST_SEEN[view]] = first / 1e6
    return newest + ROW_DELAY_US, features


#: What each tile sums, in the order a tile's sums are kept (:func:`tile_sums`).
TILE_SUMS: tuple[str, ...] = ("count", "small", "amount", "night")


def tile_sums(level: TileLevel, events: Iterable[Event]) -> dict[int, list[Any]]:
    """Each tile's sums (:data:`TILE_SUMS`) of ``events`` at one level, by tile index (a float
    sum adds in the order given)."""
    unit = level.unit_us
    sums: dict[int, list[Any]] = {}
    for e in events:
        index = e.us // unit
        tile = sums.get(index)
        if tile is None:
            tile = sums[index] = [0, 0, 0.0, 0]
        tile[0] += 1
        tile[1] += e.amount < SMALL_AMOUNT
        tile[2] += e.amount
        tile[3] += e.night
    return sums


def tile_lists(
    level: TileLevel, sums: Mapping[int, Sequence[Any]], newest_us: int
) -> dict[str, list[Any]]:
    """One tile level's stored lists at newest time ``newest_us`` from its tiles' sums (index ->
    sums in :data:`TILE_SUMS` order): the tiles with index in ``[U - units, U]``, oldest first."""
    newest = newest_us // level.unit_us
    order = sorted(i for i in sums if newest - level.units <= i <= newest)
    out: dict[str, list[Any]] = {}
    for name, (of, _) in level.lists.items():
        if of == "index":
            out[name] = order
        else:
            at = TILE_SUMS.index(of)
            out[name] = [sums[i][at] for i in order]
    return out


def tiles(level: TileLevel, events: Sequence[Event], newest_us: int) -> dict[str, list[Any]]:
    """One tile level's lists at newest time ``newest_us`` from ``events`` (any order; a float
    sum adds in the order given): its tiles with index in ``[U - units, U]``, oldest first."""
    oldest = (newest_us // level.unit_us - level.units) * level.unit_us
    return tile_lists(level, tile_sums(level, (e for e in events if e.us >= oldest)), newest_us)


def tiles_before(
    view: str,
    stored: Mapping[str, Sequence[Any]],
    t_us: int,
    later: Iterable[Event],
    first_us: int | None = None,
) -> dict[str, list[Any] | None]:
    """A tiled view's stored lists as its row just before ``t_us`` held them, from a newer row's
    (``stored``: list name -> list) and the events that row holds at or after ``t`` (``later``:
    time in ``[t, T]`` for its newest ``T``; others are left out): at each level the tiles
    before ``t``'s own as stored (they end before ``t``), ``t``'s own with ``later``'s sums
    taken out (and dropped if it then holds none), no later tile. What a transaction scored
    again once its merchant's row holds it (or later ones) must see: that row's tiles count
    them. Counts are exact; an EUR sum differs from one added up to ``t`` in its last bits.
    An entity first seen (``first_us``) at or after ``t`` had no row before it: every list is
    None (unknown at ``t``, as a card or device then is; its windows are missing)."""
    if first_us is not None and first_us >= t_us:
        return {name: None for level in TILES[view] for name in level.lists}
    after = [e for e in later if e.us >= t_us]
    out: dict[str, list[Any] | None] = {}
    for level in TILES[view]:
        unit = level.unit_us
        own = t_us // unit
        index = stored[level.index_list]
        keep = bisect_left(index, own)
        lists = {name: list(stored[name][:keep]) for name in level.lists}
        if keep < len(index) and index[keep] == own:
            taken = tile_sums(level, (e for e in after if e.us // unit == own))
            minus = taken.get(own, [0] * len(TILE_SUMS))
            left = {
                name: stored[name][keep] - (0 if of == "index" else minus[TILE_SUMS.index(of)])
                for name, (of, _) in level.lists.items()
            }
            if any(left[name] > 0 for name, (of, _) in level.lists.items() if of == "count"):
                for name, value in left.items():
                    lists[name].append(value)
        out.update(lists)
    return out
