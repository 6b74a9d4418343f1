"""Seed the streamer's state from the offline data: what ``vigil materialize`` is to the online
rows, this is to the entity histories the streamer recomputes them from.

For every card, merchant and device of the raw transactions before ``end``: its first
transaction (a device's first sighting is a feature) and every transaction a row at ``end`` can
still read (the longest window of its view, a merchant's 8 days of day tiles, plus the
streamer's allowed lateness) and a merchant's tile sums,
amounts converted to EUR exactly as the batch pipeline converts them; and the dated FX table
(the streamer converts a streamed amount at the rate of its day, as the pipeline does). Keys and
record format: ``vigil_contracts.entity_history``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil.fx import FX_FILE, read_fx_table
from vigil.pipeline import INPUT_COLUMNS, in_base_currency
from vigil_contracts import entity_rows, windows
from vigil_contracts.entity_history import (
    FX_KEY,
    KINDS,
    SEEDED_KEY,
    VERSION_STEP_MAX,
    HistoryRecord,
    fx_field,
    history_key,
    tile_field,
    tiles_key,
    version_key,
)

#: How far back each kind's row reads (µs), as the streamer keeps its history.
HISTORY_US: dict[str, int] = {key: windows.history_us(view) for key, view in KINDS.items()}
DEFAULT_LATENESS_S = 3600.0
DEFAULT_TTL_S = 90 * 24 * 3600
_CHUNK = 20_000


@dataclass(frozen=True)
class SeedReport:
    end: datetime
    transactions: int
    entities: dict[str, int]
    records: int
    fx_rates: int


def seed_histories(
    client: Any,
    raw: pd.DataFrame,
    fx: pd.DataFrame | None,
    end: datetime,
    lateness_s: float = DEFAULT_LATENESS_S,
    ttl_s: int = DEFAULT_TTL_S,
) -> SeedReport:
    """Write the histories of ``raw``'s transactions before ``end`` (and ``fx``) with the
    redis-py ``client``; replaces any history already there."""
    ts = pd.to_datetime(raw["event_timestamp"], utc=True).dt.as_unit("us")
    before = (ts < pd.Timestamp(end)).to_numpy()
    raw = raw.loc[before, [*INPUT_COLUMNS, "transaction_id"]].reset_index(drop=True)
    t_us = np.asarray(ts[before].array.asi8, dtype=np.int64)
    amount = in_base_currency(raw, t_us, fx)
    end_us = int(pd.Timestamp(end).value // 1000)
    members = [
        HistoryRecord(
            str(tid),
            int(t),
            str(card),
            str(merchant),
            None if not isinstance(device, str) else device,
            None if not isinstance(country, str) else country,
            float(a),
        ).encode()
        for tid, t, card, merchant, device, country, a in zip(
            raw["transaction_id"],
            t_us,
            raw["card_id"],
            raw["merchant_id"],
            raw["device_id"],
            raw["country"],
            amount,
            strict=True,
        )
    ]
    entities: dict[str, int] = {}
    written = 0
    pipe = client.pipeline(transaction=False)
    queued = 0
    for join_key in KINDS:
        keys = raw[join_key]
        valid = keys.notna().to_numpy()
        cutoff = end_us - HISTORY_US[join_key] - int(lateness_s * 1_000_000)
        order = np.lexsort((t_us, pd.factorize(keys)[0]))
        order = order[valid[order]]
        first = np.ones(len(order), dtype=bool)
        codes = pd.factorize(keys)[0][order]
        first[1:] = codes[1:] != codes[:-1]
        keep = first | (t_us[order] > cutoff)
        seen: set[str] = set()
        tiled: dict[str, list[entity_rows.Event]] = {}
        for i in order[keep]:
            value = str(keys.iat[i])
            if value not in seen:
                seen.add(value)
                pipe.delete(history_key(join_key, value))
                # Moved, not set: a streamer may hold the window of the version it had.
                pipe.incrby(version_key(join_key, value), secrets.randbelow(VERSION_STEP_MAX) + 1)
                pipe.pexpire(version_key(join_key, value), ttl_s * 1000)
            pipe.zadd(history_key(join_key, value), {members[i]: int(t_us[i])})
            pipe.pexpire(history_key(join_key, value), ttl_s * 1000)
            if KINDS[join_key] in windows.TILES:
                tiled.setdefault(value, []).append(_event(members[i]))
            queued += 1
            written += 1
            if queued >= _CHUNK:
                pipe.execute()
                queued = 0
        for value, events in tiled.items():
            pipe.delete(tiles_key(join_key, value))
            pipe.hset(tiles_key(join_key, value), mapping=tile_fields(KINDS[join_key], events))
            pipe.pexpire(tiles_key(join_key, value), ttl_s * 1000)
        entities[join_key] = len(seen)
    pipe.execute()
    rates = 0
    if fx is not None:
        days = pd.to_datetime(fx["event_timestamp"], utc=True).dt.strftime("%Y-%m-%d")
        mapping = {
            fx_field(c, d): repr(float(r))
            for c, d, r in zip(fx["currency"], days, fx["eur_per_unit"], strict=True)
        }
        if mapping:
            client.hset(FX_KEY, mapping=mapping)
        rates = len(mapping)
    client.hset(
        SEEDED_KEY,
        mapping={
            "end": end.astimezone(UTC).isoformat(),
            "transactions": str(len(raw)),
            "records": str(written),
            "written_at": datetime.now(UTC).isoformat(),
        },
    )
    return SeedReport(end, len(raw), entities, written, rates)


def _event(member: str) -> entity_rows.Event:
    r = HistoryRecord.decode(member)
    return entity_rows.event(r.t_us, r.amount_eur, r.card_id, r.merchant_id, r.device_id, r.country)


def tile_fields(view: str, events: list[entity_rows.Event]) -> dict[str, str]:
    """A tiled entity's tile sums as the streamer keeps them (``tile_field`` -> value): its
    tiles a row at its newest event reads, at every level, from ``events`` (oldest first)."""
    newest = events[-1].us
    fields: dict[str, str] = {}
    for n, level in enumerate(windows.TILES[view]):
        oldest = newest // level.unit_us - level.units
        for index, sums in entity_rows.tile_sums(level, events).items():
            if index >= oldest:
                for what, value in enumerate(sums):
                    fields[tile_field(n, index, what)] = repr(value)
    return fields


def seed_from_files(
    client: Any, raw_path: Path, end: datetime | None = None, lateness_s: float = DEFAULT_LATENESS_S
) -> SeedReport:
    """:func:`seed_histories` of the raw parquet and the FX table beside it, up to ``end``
    (default: now)."""
    raw = pd.read_parquet(raw_path, columns=[*INPUT_COLUMNS, "transaction_id"])
    fx_path = raw_path.parent / FX_FILE
    fx = read_fx_table(fx_path) if fx_path.is_file() else None
    return seed_histories(client, raw, fx, end or datetime.now(UTC), lateness_s)
