"""Each touched entity's newest online row, built from its state in Redis with no pandas.

A card's or device's row is ``vigil_contracts.entity_rows.newest_row`` of its events (a test
holds it equal to the batch pipeline's rows): the history script returns only what that row
reads (its window's members, newest ``EVENT_CAP``, and the first sighting), and a member's
decoding (JSON, local time for ``night``) is cached: members never change, and a hot entity's
window is read again by every batch that touches it. A tiled entity's (a merchant's) row is its
tiles' running sums, which the script adds each new transaction to (:func:`tile_args`) and
returns, at most a few dozen tiles whatever its traffic: ``entity_rows.tile_lists`` of them, as
the pipeline's (sums are order-independent but for a float sum's last bits).
"""

from __future__ import annotations

from collections.abc import Sequence
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


def tiled_row(join_key: str, newest_us: int, sums: Sequence[bytes]) -> Row:
    """A tiled entity's newest row from its newest time and its kept tile sums (field, value,
    ... as the tiles script returns them: field ``<level>:<index>:<sum>``)."""
    levels = TILED[join_key]
    tiles: list[dict[int, list[Any]]] = [{} for _ in levels]
    for field, value in zip(sums[::2], sums[1::2], strict=True):
        at, index, what = map(int, field.split(b":"))
        tile = tiles[at].setdefault(index, [0, 0, 0.0, 0])
        tile[what] = float(value) if what == _AMOUNT else int(value)
    features: dict[str, Any] = {}
    for level_tiles, level in zip(tiles, levels, strict=True):
        features.update(entity_rows.tile_lists(level, level_tiles, newest_us))
    return newest_us + entity_rows.ROW_DELAY_US, features


_AMOUNT = entity_rows.TILE_SUMS.index("amount")
