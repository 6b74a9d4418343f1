"""``vigil dead-letters``: what the streamer could not apply, and sending it again.

The streamer moves an entry it cannot apply to its dead-letter stream (``STREAMER_DEAD_LETTER_
STREAM``, default ``vigil:decisions:dead``): the entry's own fields (``id``, ``v``, ``event``)
with ``source_id`` (its id on the decision stream) and ``reason``. Causes an operator can fix:
a currency without a dated EUR rate (load the FX table, ``vigil stream-seed``), an event of a
schema version the running streamer does not know (upgrade the streamer), a bug. Once fixed,
``requeue`` appends each chosen entry's fields to the decision stream again and deletes it from
the dead-letter stream, both in one transaction (``MULTI``), so an entry is never lost nor left
in both; the streamer applies it like any event (an entity's history holds a transaction once,
so an event sent twice changes nothing). An entry without its event (written by a streamer
before 2026-12-07, which kept only the id of an event it failed to convert to EUR) cannot be
sent again and is left where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vigil_contracts.decision_events import FIELD_EVENT, FIELD_ID, FIELD_VERSION

#: The fields of a decision stream entry, which a dead letter keeps and a requeue sends again.
ENTRY_FIELDS = (FIELD_ID, FIELD_VERSION, FIELD_EVENT)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter stream."""

    entry_id: str
    """Its id on the dead-letter stream (what ``requeue`` takes)."""
    source_id: str
    """Its id on the decision stream, where it was read."""
    event_id: str
    reason: str
    requeueable: bool
    """It holds its event: ``requeue`` can send it again."""

    def line(self) -> str:
        again = "" if self.requeueable else "  (no event kept: cannot be requeued)"
        return f"{self.entry_id}  {self.event_id!r}  {self.reason}{again}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _dead_letter(entry_id: Any, fields: dict[Any, Any]) -> DeadLetter:
    text = {_text(k): v for k, v in fields.items()}
    return DeadLetter(
        entry_id=_text(entry_id),
        source_id=_text(text.get("source_id", "")),
        event_id=_text(text.get(FIELD_ID, "")),
        reason=_text(text.get("reason", "")),
        requeueable=all(name in text for name in ENTRY_FIELDS),
    )


def list_dead_letters(client: Any, dead_stream: str, count: int | None = None) -> list[DeadLetter]:
    """The dead-letter stream's entries, oldest first (at most ``count``)."""
    return [_dead_letter(i, f) for i, f in client.xrange(dead_stream, count=count)]


@dataclass(frozen=True)
class Requeued:
    sent: list[str]
    """Dead-letter entry ids appended to the decision stream again (and deleted)."""
    kept: list[str]
    """Entry ids left: without their event, or not found."""


def requeue(
    client: Any, dead_stream: str, stream: str, entry_ids: Sequence[str] | None = None
) -> Requeued:
    """Send dead letters to the decision stream again: those of ``entry_ids``, or every one
    (None). Each is appended and deleted in one transaction."""
    if entry_ids is None:
        entries = client.xrange(dead_stream)
    else:
        entries = []
        for entry_id in entry_ids:
            found = client.xrange(dead_stream, min=entry_id, max=entry_id)
            entries += found or [(entry_id, None)]
    sent: list[str] = []
    kept: list[str] = []
    for entry_id, fields in entries:
        text = {} if fields is None else {_text(k): v for k, v in fields.items()}
        if not all(name in text for name in ENTRY_FIELDS):
            kept.append(_text(entry_id))
            continue
        pipe = client.pipeline(transaction=True)
        pipe.xadd(stream, {name: text[name] for name in ENTRY_FIELDS})
        pipe.xdel(dead_stream, entry_id)
        pipe.execute()
        sent.append(_text(entry_id))
    return Requeued(sent, kept)
