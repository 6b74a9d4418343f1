"""What the online store holds, per feature view: a marker written beside Feast's rows.

Feast's Redis layout cannot tell an empty store from one that was never loaded, nor say how far it
is loaded; every writer of online rows (``vigil materialize``, and the streamer) therefore leaves
one hash per feature view, ``vigil:materialized:<project>:<view>``, with the fields of
:class:`ViewMarker`. The encoder is not ready while a view it serves has none, and reports each
view's age (now minus ``end``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

KEY_PREFIX = "vigil:materialized:"


def marker_key(project: str, view: str) -> str:
    return f"{KEY_PREFIX}{project}:{view}"


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class ViewMarker:
    """One load of a view into the online store."""

    rows: int
    """Entity rows written by that load (the latest row of each entity in the window)."""
    start: datetime
    """Start of the event-time window loaded."""
    end: datetime
    """End of that window: the store holds this view's features as of this time."""
    written_at: datetime
    """When the load finished."""

    def to_fields(self) -> dict[str, str]:
        return {
            "rows": str(self.rows),
            "start": _iso(self.start),
            "end": _iso(self.end),
            "written_at": _iso(self.written_at),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> ViewMarker:
        """From a ``HGETALL`` reply (bytes or str); ``ValueError`` if a field is missing or bad."""
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        try:
            return cls(
                rows=int(text["rows"]),
                start=datetime.fromisoformat(text["start"]),
                end=datetime.fromisoformat(text["end"]),
                written_at=datetime.fromisoformat(text["written_at"]),
            )
        except KeyError as exc:
            raise ValueError(f"marker field {exc.args[0]!r} is missing") from None
