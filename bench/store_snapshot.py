"""The online store as the benchmark set it up, taken once and put back before each case.

The bench replays a few thousand sampled transactions through the stack for half an hour, and
the streamer writes every one into its card's, merchant's and device's histories and rows: a
case measured after the others would read (and the streamer re-read) windows its predecessors
filled, a load no real entity has. So after setup (the world materialized, the streamer's
histories seeded) every key that is not a stream is kept here (``DUMP`` + ``PTTL``, in the
bench's memory), and :class:`FreshStore` puts them back (``RESTORE ... REPLACE``) before a case
whenever a case since the last restore went through the gateway. Keys are told apart by their
``TYPE`` only, never by name, so that any layout of the feature rows is covered.

Streams are left alone: the decision stream (and its dead letters) holds the streamer's consumer
group and its position. Keys created after the snapshot stay; none of them changes what a case
measures (see :meth:`FreshStore.before`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

STREAM = b"stream"


@dataclass(frozen=True)
class Snapshot:
    entries: list[tuple[bytes, bytes, int]]
    """(key, its ``DUMP`` payload, its ``PTTL`` in ms when taken: -1 when it has none)."""
    taken_at: float
    """``time.monotonic()`` when taken: a key's remaining TTL at a restore counts from it."""
    seconds: float
    streams: int
    """Stream keys left out."""

    @property
    def keys(self) -> int:
        return len(self.entries)

    @property
    def bytes(self) -> int:
        return sum(len(payload) for _, payload, _ in self.entries)

    def summary(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "bytes": self.bytes,
            "streams_left_out": self.streams,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Restored:
    keys: int
    expired: int
    """Keys whose TTL ran out since the snapshot: deleted, as Redis would have by now."""
    seconds: float


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def take(client: Any, chunk: int = 1000) -> Snapshot:
    """Every key of ``client``'s database that is not a stream, pipelined ``chunk`` keys at a
    time (``client``: a redis-py ``Redis`` with bytes replies). A key gone between the scan and
    its ``DUMP`` is left out."""
    started = time.monotonic()
    keys = list(dict.fromkeys(client.scan_iter(count=chunk)))  # SCAN may repeat a key
    entries: list[tuple[bytes, bytes, int]] = []
    streams = 0
    for part in _chunks(keys, chunk):
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.type(key)
        types = pipe.execute()
        wanted = [key for key, kind in zip(part, types, strict=True) if kind != STREAM]
        streams += sum(1 for kind in types if kind == STREAM)
        pipe = client.pipeline(transaction=False)
        for key in wanted:
            pipe.dump(key)
            pipe.pttl(key)
        replies = pipe.execute()
        for key, payload, pttl in zip(wanted, replies[::2], replies[1::2], strict=True):
            if payload is not None and pttl != -2:
                entries.append((key, payload, int(pttl)))
    return Snapshot(entries, time.monotonic(), time.monotonic() - started, streams)


def restore(client: Any, snapshot: Snapshot, chunk: int = 1000) -> Restored:
    """Every key of ``snapshot`` back to its value, with what is left of its TTL (none when it
    had none), ``chunk`` keys per pipeline."""
    started = time.monotonic()
    elapsed_ms = int((started - snapshot.taken_at) * 1000)
    restored = expired = 0
    for part in _chunks(snapshot.entries, chunk):
        pipe = client.pipeline(transaction=False)
        for key, payload, pttl in part:
            if pttl < 0:
                pipe.restore(key, 0, payload, replace=True)
            elif pttl - elapsed_ms > 0:
                pipe.restore(key, pttl - elapsed_ms, payload, replace=True)
            else:
                pipe.delete(key)
                expired += 1
                continue
            restored += 1
        pipe.execute()
    return Restored(restored, expired, time.monotonic() - started)


class FreshStore:
    """Puts the store back to ``snapshot`` before a case, when a case since the last restore
    went through the gateway (:meth:`touched`); the others (the encoder, the predictor, the
    peers and floors) only read it. ``backlog`` (the decision stream's consumer group: unread +
    unacknowledged entries) must be 0 first: a streamer still applying events would write over
    the restored rows."""

    def __init__(
        self,
        client: Any,
        snapshot: Snapshot,
        backlog: Callable[[], int] | None = None,
        log: Callable[[str], None] = print,
        drain_timeout_s: float = 60.0,
    ) -> None:
        self.client = client
        self.snapshot = snapshot
        self.backlog = backlog
        self.log = log
        self.drain_timeout_s = drain_timeout_s
        # Setup went through the gateway after the snapshot (the bench's check of every case).
        self.dirty = True
        self.restores: list[dict[str, Any]] = []

    def touched(self) -> None:
        """A case went through the gateway: the streamer has written the store since."""
        self.dirty = True

    def before(self, what: str) -> dict[str, Any] | None:
        """Restore before the case ``what`` if the store was touched since the last restore;
        what it took (``None`` when nothing was done).

        Keys created since the snapshot stay, and change nothing a case measures: decision
        records and the streamer's seen-event markers are keyed by transaction or event id,
        which every request makes unique; rate-limit buckets hold the bench key's limits, far
        above any rate measured; API keys are the stack's own. A history's version counter is
        restored with the history, but the version of the row last written (created by the
        streamer's first write) is not: it is compared only between rows of the same instant,
        and the first row the streamer writes for an entity after a restore is stamped after a
        transaction of the last hour, newer than any restored row (the world ends at midnight
        UTC), so it is written and sets that version again."""
        if not self.dirty:
            return None
        started = time.monotonic()
        left = self.backlog() if self.backlog else 0
        while left and time.monotonic() - started < self.drain_timeout_s:
            time.sleep(0.05)
            left = self.backlog() if self.backlog else 0
        waited = time.monotonic() - started
        if left:
            self.log(f"{what}: the decision stream still has {left} entries after {waited:.0f}s")
        done = restore(self.client, self.snapshot)
        self.dirty = False
        record = {
            "case": what,
            "keys": done.keys,
            "expired": done.expired,
            "seconds": done.seconds,
            "waited_s": waited,
            "backlog": left,
        }
        self.restores.append(record)
        self.log(
            f"{what:<24} store restored: {done.keys:,} keys in {done.seconds:.2f}s"
            + (f" ({done.expired} expired, deleted)" if done.expired else "")
            + (f", after {waited:.1f}s waiting for the stream to drain" if waited >= 0.1 else "")
        )
        return record

    def summary(self) -> dict[str, Any]:
        """The snapshot and every restore, for the results."""
        times = [r["seconds"] for r in self.restores]
        return {
            "restored": True,
            "snapshot": self.snapshot.summary(),
            "restores": len(times),
            "restore_s_mean": sum(times) / len(times) if times else None,
            "restore_s_max": max(times, default=None),
            "each": self.restores,
        }
