"""Each touched entity's online row, built from its history with no pandas.

The row is ``vigil_contracts.entity_rows.newest_row`` of the entity's events: the same
declarations the batch pipeline's tables are computed from, and a test holds the two equal
(windows ``(T - w, T]``, the stamp ``T + 1 µs``, ties, distinct counts, shares, the
home-country mode, the first sighting). The history script returns only what the row reads (its
longest window's members and the first sighting), and a member's decoding (JSON, local time for
the night share) is cached: members never change, and a hot entity's window is read again by
every batch that touches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from vigil_contracts import entity_rows
from vigil_contracts.entity_history import KINDS, HistoryRecord

#: The longest window each kind's row reads (µs): its history is kept that long (plus the
#: allowed lateness), beside its first sighting.
WINDOW_US: dict[str, int] = {
    join_key: entity_rows.LONGEST_WINDOW_US[view] for join_key, view in KINDS.items()
}
#: Feast type of every feature.
DTYPES: dict[str, str] = entity_rows.FEATURE_TYPES

Row = tuple[int, dict[str, Any]]  # (stamp in µs, feature -> value)


def _event(r: HistoryRecord) -> entity_rows.Event:
    return entity_rows.Event(r.t_us, r.amount_eur, r.card_id, r.merchant_id, r.device_id, r.country)


@lru_cache(maxsize=100_000)
def event(member: bytes) -> entity_rows.Event:
    """A history member as the rows read it."""
    return _event(HistoryRecord.decode(member))


def newest_row(join_key: str, members: Sequence[bytes], first: bytes) -> Row:
    """The entity's newest row from its window's members (oldest first) and its first one."""
    return entity_rows.newest_row(KINDS[join_key], [event(m) for m in members], event(first).t_us)


def newest_rows(
    records: Sequence[HistoryRecord], targets: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Row]:
    """``(join key, value) -> (stamp µs, features)``: each target's newest row from
    ``records`` (every transaction its windows and first sighting need, in any order)."""
    out: dict[tuple[str, str], Row] = {}
    for join_key, value in targets:
        mine = sorted((r for r in records if getattr(r, join_key) == value), key=lambda r: r.t_us)
        if mine:
            out[(join_key, value)] = entity_rows.newest_row(
                KINDS[join_key], [_event(r) for r in mine]
            )
    return out
