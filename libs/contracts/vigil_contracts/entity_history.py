"""The streamer's state in Redis: each entity's recent transactions, and the dated FX rates.

The streamer recomputes an entity's online row from the entity's own recent transactions with
the batch pipeline's functions, so it keeps them in Redis (shared by its replicas, surviving a
restart): one sorted set per entity, scored by event time (µs), whose members are
:func:`record` strings (a merchant's, for idempotency and lateness only: its row is its tiles,
kept as running sums in a hash, :func:`tiles_key`). ``vigil stream-seed`` writes the same keys from the offline data, so
the windows of the first streamed events are complete. Defined here because both the streamer
and the offline tooling write them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

KEY_PREFIX = "vigil:stream:"
#: Hash of EUR rates, field ``<currency>:<YYYY-MM-DD>`` (UTC day) -> rate.
FX_KEY = f"{KEY_PREFIX}fx"
#: Hash saying the histories were seeded: ``end`` (ISO), ``entities``, ``written_at``.
SEEDED_KEY = f"{KEY_PREFIX}seeded"
#: Entity kinds: (join key, the feature view its row feeds).
KINDS: dict[str, str] = {
    "card_id": "card_stats",
    "merchant_id": "merchant_stats",
    "device_id": "device_stats",
}


def history_key(join_key: str, value: str) -> str:
    """The sorted set of ``join_key == value``'s recent transactions."""
    return f"{KEY_PREFIX}h:{join_key}:{value}"


def version_key(join_key: str, value: str) -> str:
    """A counter moved by every change to the entity's history, by a random step of 1 to
    :data:`VERSION_STEP_MAX` (orders its snapshots, and names one: a history rolled back and
    changed anew does not come back to a version it had)."""
    return f"{KEY_PREFIX}hv:{join_key}:{value}"


#: The largest step a history's version moves by (2**20: a version stays exact in Redis' Lua
#: numbers, doubles, for billions of changes).
VERSION_STEP_MAX = 1 << 20


def written_key(join_key: str, value: str) -> str:
    """The history version of the entity's row last written to the online store."""
    return f"{KEY_PREFIX}hw:{join_key}:{value}"


def tiles_key(join_key: str, value: str) -> str:
    """The hash of a tiled entity's (a merchant's) tile sums: field :func:`tile_field`."""
    return f"{KEY_PREFIX}t:{join_key}:{value}"


def tile_field(level: int, index: int, what: int) -> str:
    """The field of one sum of one tile: its level's position in ``windows.TILES[view]``, the
    tile's index, the sum's position in ``entity_rows.TILE_SUMS``."""
    return f"{level}:{index}:{what}"


def fx_field(currency: str, day: str) -> str:
    return f"{currency}:{day}"


@dataclass(frozen=True)
class HistoryRecord:
    """One transaction as the feature pipeline reads it (amount already in EUR)."""

    transaction_id: str
    t_us: int
    card_id: str
    merchant_id: str
    device_id: str | None
    country: str | None
    amount_eur: float

    def encode(self) -> str:
        """The sorted-set member: equal transactions give equal members (ZADD is idempotent)."""
        return json.dumps(
            [
                self.transaction_id,
                self.t_us,
                self.card_id,
                self.merchant_id,
                self.device_id,
                self.country,
                repr(self.amount_eur),
            ],
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, member: bytes | str) -> HistoryRecord:
        # A str skips json's detection of a bytes' encoding (members are UTF-8).
        text = member.decode() if isinstance(member, bytes) else member
        tid, t_us, card, merchant, device, country, amount = json.loads(text)
        return cls(tid, int(t_us), card, merchant, device, country, float(amount))
