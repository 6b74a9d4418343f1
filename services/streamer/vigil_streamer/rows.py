"""Each touched entity's newest online row, built from its history with no pandas.

The row is ``vigil_contracts.entity_rows.newest_row`` of the entity's events (the same function
for every kind; a test holds it equal to the batch pipeline's rows). The history script returns
only what that row reads (its window's members, newest ``EVENT_CAP``, and the first sighting; a
merchant's: every member of its oldest kept day tile on, its tiles being uncapped sums), and
a member's decoding (JSON, local time for ``night``) is cached: members never change, and a hot
entity's window is read again by every batch that touches it.
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
