"""Each touched entity's newest online row, built from its state in Redis with no pandas.

A card's or device's row is ``vigil_contracts.entity_rows.newest_row`` of its events (a test
holds it equal to the batch pipeline's rows): the history script returns only what that row
reads (its window's members, newest ``EVENT_CAP``, and the first sighting), and a member's
decoding (JSON, local time for ``night``) is cached: members never change. The streamer holds
the windows it read or made (:class:`Windows`), so a batch touching an entity again at the
version it holds a window for builds the row from it without reading it back. A tiled entity's
(a merchant's) row is its tiles' running sums, which the script adds each new transaction to
(:func:`tile_args`) and returns: ``entity_rows.tile_lists`` of them, as the pipeline's (sums are
order-independent but for a float sum's last bits); the tiles no row can read any more are
dropped (:func:`tiled_row` names them), so a few dozen are kept whatever its traffic.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vigil_contracts import entity_rows, windows
from vigil_contracts.entity_history import KINDS, HistoryRecord

#: How far back each kind's row reads (µs; a merchant's from the start of its oldest day tile):
#: its history is kept that long (plus the allowed lateness), beside its first sighting.
WINDOW_US: dict[str, int] = {key: windows.history_us(view) for key, view in KINDS.items()}
#: How many of the newest members each kind's row reads (-1: all, a tiled view's).
CAP: dict[str, int] = {
    key: -1 if view in windows.TILES else windows.EVENT_CAP for key, view in KINDS.items()
}
#: Per tiled kind (merchants): its view's tile levels, finest first.
TILED: dict[str, tuple[windows.TileLevel, ...]] = {
    key: windows.TILES[view] for key, view in KINDS.items() if view in windows.TILES
}
#: Feast type of every stored feature.
DTYPES: dict[str, str] = {
    name: dtype for view in KINDS.values() for name, dtype in windows.stored_features(view).items()
}

Row = tuple[int, dict[str, Any]]  # (stamp in µs, feature -> value)


@lru_cache(maxsize=200_000)
def event(member: bytes) -> entity_rows.Event:
    """A history member as the views' event lists read it."""
    r = HistoryRecord.decode(member)
    return entity_rows.event(r.t_us, r.amount_eur, r.card_id, r.merchant_id, r.device_id, r.country)


def newest_row(join_key: str, members: Sequence[bytes], first: bytes) -> Row:
    """The entity's newest row from its window's members (oldest first) and its first one."""
    return entity_rows.newest_row(KINDS[join_key], [event(m) for m in members], event(first).us)


@dataclass(slots=True)
class Window:
    """What an entity's newest row read of its history at one version: its window's members
    (time, member, event; in the history's order: time, then member) and its first sighting."""

    version: int
    first_us: int
    entries: list[tuple[int, bytes, entity_rows.Event]]


class Windows:
    """The windows this streamer last read or made, per entity, holding at most ``size`` events
    in all (least recently used windows dropped first; 0 holds none): a bound on memory, whatever
    the entities' traffic.

    The history script adds a batch's transactions and, when the history was at the version a
    window is held for, answers "=" instead of reading the window back: the held window with the
    added transactions is the new one (the window ends at the newest, which only moves forward,
    so no member outside the held window, older than it or beyond the cap, can come into it).
    That saves Redis the window's read and reply and the streamer their decoding, on every batch
    that touches an entity again. A version names one state of a history (each change moves it
    by a random step, ``vigil stream-seed`` too), so a window held for it is that state's, even
    when another replica or a restored snapshot moved the history in between."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._held: OrderedDict[tuple[str, str], Window] = OrderedDict()
        self.events = 0
        """Events held in all."""

    def version(self, key: tuple[str, str]) -> int:
        """The version a window of ``key`` is held for; -1 when none is."""
        held = self._held.get(key)
        return -1 if held is None else held.version

    def read(
        self, key: tuple[str, str], version: int, first: bytes, newest_first: Sequence[bytes]
    ) -> Row:
        """The newest row of a window read back (members newest first), held from now on."""
        events = [event(m) for m in reversed(newest_first)]
        entries = [(e.us, m, e) for m, e in zip(reversed(newest_first), events, strict=True)]
        held = Window(version, event(first).us, entries)
        self._hold(key, held)
        return entity_rows.newest_row(KINDS[key[0]], events, held.first_us)

    def extend(self, key: tuple[str, str], version: int, added: Sequence[bytes]) -> Row:
        """The newest row of the held window with ``added`` members (added to the history by
        the call that moved it to ``version``), held from now on."""
        held = self._held[key]
        entries = held.entries
        self.events -= len(entries)
        for member in added:
            e = event(member)
            insort(entries, (e.us, member, e))
            held.first_us = min(held.first_us, e.us)
        newest = entries[-1][0]
        start = bisect_right(entries, (newest - WINDOW_US[key[0]], _AFTER_ANY_MEMBER))
        if CAP[key[0]] >= 0:
            start = max(start, len(entries) - CAP[key[0]])
        del entries[:start]
        held.version = version
        self._hold(key, held)
        return entity_rows.newest_row(KINDS[key[0]], [e for _, _, e in entries], held.first_us)

    def still(self, key: tuple[str, str], version: int) -> None:
        """The history of ``key`` is at ``version`` and unchanged by this batch: a window held
        for another version is dropped."""
        held = self._held.get(key)
        if held is not None and held.version != version:
            del self._held[key]
            self.events -= len(held.entries)

    def settle(self) -> None:
        """Drop the least recently used windows beyond the bound: called after a batch, so
        that no window a batch's script calls were told of is dropped before its answer."""
        while self.events > self.size:
            _, held = self._held.popitem(last=False)
            self.events -= len(held.entries)

    def _hold(self, key: tuple[str, str], held: Window) -> None:
        if self.size <= 0:
            return
        previous = self._held.get(key)
        if previous is not None and previous is not held:
            self.events -= len(previous.entries)
        self._held[key] = held
        self._held.move_to_end(key)
        self.events += len(held.entries)


#: Sorts after every history member (JSON text: its first byte is "[").
_AFTER_ANY_MEMBER = b"\xff"


def tile_args(join_key: str, member: bytes, when: int) -> list[Any]:
    """What the tiles script adds for one transaction: its tile index at each level, then its
    sums (``entity_rows.TILE_SUMS`` but the count, which is 1): small, EUR amount, night."""
    e = event(member)
    return [
        *(when // level.unit_us for level in TILED[join_key]),
        int(e.amount < windows.SMALL_AMOUNT),
        repr(e.amount),
        e.night,
    ]


def tiled_row(join_key: str, newest_us: int, sums: Sequence[bytes]) -> tuple[Row, list[bytes]]:
    """A tiled entity's newest row from its newest time and its tile sums (field, value, ...
    as the tiles script returns them: field ``<level>:<index>:<sum>``), and the fields of the
    tiles no row can read any more (older than the newest's window at their level), to drop."""
    levels = TILED[join_key]
    oldest = [newest_us // level.unit_us - level.units for level in levels]
    tiles: list[dict[int, list[Any]]] = [{} for _ in levels]
    unread: list[bytes] = []
    for field, value in zip(sums[::2], sums[1::2], strict=True):
        at, index, what = map(int, field.split(b":"))
        if index < oldest[at]:
            unread.append(field)
            continue
        tile = tiles[at].setdefault(index, [0, 0, 0.0, 0])
        tile[what] = float(value) if what == _AMOUNT else int(value)
    features: dict[str, Any] = {}
    for level_tiles, level in zip(tiles, levels, strict=True):
        features.update(entity_rows.tile_lists(level, level_tiles, newest_us))
    return (newest_us + entity_rows.ROW_DELAY_US, features), unread


_AMOUNT = entity_rows.TILE_SUMS.index("amount")
