"""The stream's side of the benchmark: how fresh the online features are, and whether the streamer
keeps up.

``python -m bench.freshness --spec spec.json --out result.json`` runs the freshness case in its
own process: an open loop through the gateway where every transaction is new (a unique id,
stamped at its send time, so it is its card's newest), and for each answer, the time from the
answer's arrival at the client to the card's row in Redis reflecting that transaction. The
observation is external: a poller reads the row's ``_ts:card_stats`` (Feast's protobuf
``Timestamp`` of the row, the key computed by Feast's own ``_redis_key`` in the bench) every
millisecond, in one pipelined round trip for all the rows still awaited, until it is at least the
transaction's instant + 1 µs (a row stamped ``t`` summarises the transactions strictly before
``t``). Resolution: the poll interval plus one Redis round trip.

:class:`StreamWatch` (in the bench's own process) samples the consumer group's backlog (Redis's
``XINFO GROUPS`` lag + pending) while a run goes on, then waits for it to drain, so that no run
starts with the streamer still working off the previous one's events; what is still unread after
``drain_timeout_s`` is skipped (``XGROUP SETID`` to the stream's end), counted and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
DEGRADED = b'"degraded":true'


def _timestamp_us(raw: bytes) -> int:
    """µs of a protobuf ``Timestamp`` (fields 1 seconds, 2 nanos, both varints)."""
    seconds = nanos = 0
    i = 0
    while i < len(raw):
        tag = raw[i]
        i += 1
        value = shift = 0
        while True:
            byte = raw[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if tag == 0x08:
            seconds = value
        elif tag == 0x10:
            nanos = value
    return seconds * 1_000_000 + nanos // 1000


# --------------------------------------------------------------------------------------------
# the freshness case (its own process)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp
    import numpy as np
    import redis.asyncio as aioredis

    rate, warmup, duration = float(spec["rate"]), float(spec["warmup_s"]), float(spec["duration_s"])
    poll_s, visible_timeout = float(spec.get("poll_s", 0.001)), float(spec.get("visible_s", 10.0))
    txs: list[dict[str, Any]] = spec["transactions"]
    keys = {card: bytes.fromhex(k) for card, k in spec["row_keys"].items()}
    ts_field = f"_ts:{spec.get('view', 'card_stats')}".encode()
    headers = spec.get("headers") or {}
    prefix = spec.get("id_prefix", "fresh-")
    client = aioredis.Redis.from_url(spec["redis_url"])
    # (row key, the instant it must reach, answer time, sample index) of the rows awaited
    waiting: list[tuple[bytes, int, float, int]] = []
    answered: dict[int, float] = {}  # sample -> answer time (perf_counter)
    latency_ms: dict[int, float] = {}
    fresh_ms: dict[int, float] = {}
    first_poll: set[int] = set()
    errors: dict[str, int] = {}
    stop_polling = asyncio.Event()

    async def poller() -> None:
        while not (stop_polling.is_set() and not waiting):
            if waiting:
                batch = list(waiting)
                pipe = client.pipeline(transaction=False)
                for key, *_ in batch:
                    pipe.hget(key, ts_field)
                stamps = await pipe.execute()
                now = time.perf_counter()
                for item, raw in zip(batch, stamps, strict=True):
                    key, needed, at, idx = item
                    if raw is not None and _timestamp_us(raw) >= needed:
                        fresh_ms[idx] = max(0.0, (now - at) * 1000.0)
                        waiting.remove(item)
                    elif now - at > visible_timeout:
                        waiting.remove(item)  # never seen: counted as not visible
            await asyncio.sleep(poll_s)

    async def send(
        session: aiohttp.ClientSession, idx: int, intended: float, measured: bool
    ) -> None:
        tx = dict(txs[idx % len(txs)])
        when = datetime.now(UTC)
        tx["transaction_id"] = f"{prefix}{idx}"
        tx["timestamp"] = when.isoformat().replace("+00:00", "Z")
        t_us = (when - _EPOCH) // _US
        body = json.dumps(tx).encode()
        try:
            async with session.post(spec["url"], data=body, headers=headers) as resp:
                payload = await resp.read()
                error = None
                if resp.status != 200:
                    error = f"http_{resp.status}"
                elif DEGRADED in payload:
                    error = "degraded"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        at = time.perf_counter()
        if not measured:
            return
        if error:
            errors[error] = errors.get(error, 0) + 1
            return
        answered[idx] = at
        latency_ms[idx] = (at - intended) * 1000.0
        key = keys[tx["card_id"]]
        stamp = await client.hget(key, ts_field)
        if stamp is not None and _timestamp_us(stamp) >= t_us + 1:
            first_poll.add(idx)
            fresh_ms[idx] = max(0.0, (time.perf_counter() - at) * 1000.0)
        else:
            waiting.append((key, t_us + 1, at, idx))

    cpu0 = _cpu_seconds()
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout_s", 10.0)))
    async with aiohttp.ClientSession(timeout=timeout, skip_auto_headers=["User-Agent"]) as session:
        polling = asyncio.create_task(poller())
        interval = 1.0 / rate
        total = int((warmup + duration) * rate)
        t0 = time.perf_counter() + 0.05
        tasks = []
        worst = 0.0
        for i in range(total):
            intended = t0 + i * interval
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            worst = max(worst, time.perf_counter() - intended)
            tasks.append(asyncio.ensure_future(send(session, i, intended, i >= warmup * rate)))
        await asyncio.wait(tasks, timeout=30.0)
        stop_polling.set()
        await asyncio.wait_for(polling, timeout=visible_timeout + 5.0)
    await client.aclose()
    cpu = _cpu_seconds() - cpu0
    sent = total - int(warmup * rate)
    values = np.array(sorted(fresh_ms.values())) if fresh_ms else np.zeros(0)
    lat = np.array(list(latency_ms.values())) if latency_ms else np.zeros(0)

    def pct(a: Any, p: float) -> float | None:
        return float(np.percentile(a, p)) if len(a) else None

    return {
        "rate": rate,
        "duration_s": duration,
        "poll_ms": poll_s * 1000.0,
        "requests": sent,
        "answered": len(answered),
        "errors": errors,
        "visible": len(values),
        "not_visible": len(answered) - len(values),
        "visible_at_first_read": len(first_poll),
        "p50_ms": pct(values, 50),
        "p95_ms": pct(values, 95),
        "p99_ms": pct(values, 99),
        "max_ms": float(values.max()) if len(values) else None,
        "e2e_p50_ms": pct(lat, 50),
        "e2e_p99_ms": pct(lat, 99),
        "generator_cpu_pct": 100.0 * cpu / max(warmup + duration, 1e-9),
        "generator_worst_send_lag_ms": worst * 1000.0,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------
# the streamer's backlog (in the bench's process)


def scrape(metrics_url: str | None, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The samples of a service's ``/metrics`` whose names (with their labels) start with one of
    ``prefixes``; empty if it cannot be read."""
    if not metrics_url:
        return {}
    try:
        with urllib.request.urlopen(metrics_url, timeout=2.0) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith(prefixes):
            out[name] = float(value)
    return out


def streamer_counters(metrics_url: str | None) -> dict[str, float]:
    """The streamer's own counters from its ``/metrics`` (events by outcome, batches)."""
    return scrape(
        metrics_url,
        (
            "vigil_streamer_events_total",
            "vigil_streamer_batch_duration_seconds_sum",
            "vigil_streamer_batch_duration_seconds_count",
            "vigil_streamer_batch_size_sum",
            "vigil_streamer_errors_total",
        ),
    )


_BATCHES = "vigil_streamer_batch_duration_seconds_count"
_BATCH_S = "vigil_streamer_batch_duration_seconds_sum"
_BATCH_N = "vigil_streamer_batch_size_sum"


class StreamWatch:
    """The decision stream's consumer-group backlog, sampled during a run, then drained."""

    def __init__(
        self,
        redis_url: str,
        stream: str = "vigil:decisions",
        group: str = "streamer",
        metrics_url: str | None = None,
        interval_s: float = 0.1,
        drain_timeout_s: float = 60.0,
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.stream, self.group = stream, group
        self.metrics_url = metrics_url
        self.interval_s, self.drain_timeout_s = interval_s, drain_timeout_s

    def backlog(self) -> tuple[int, int]:
        """(lag: entries the group has not read yet, pending: read and not acknowledged)."""
        groups = self.client.xinfo_groups(self.stream)
        for g in groups:
            name = g.get("name")
            if name in (self.group, self.group.encode()):
                lag = g.get("lag")
                if lag is None:  # Redis cannot tell after a trim: count from entries-read
                    added = self.client.xinfo_stream(self.stream).get("entries-added", 0)
                    lag = max(0, int(added) - int(g.get("entries-read") or 0))
                return int(lag), int(g.get("pending") or 0)
        return 0, 0

    @contextmanager
    def sampling(self) -> Iterator[dict[str, Any]]:
        """Samples during the ``with`` block; at its end, waits for the backlog to drain and
        fills the yielded dict (max lag / pending / backlog, when it drained, the streamer's
        events applied and its rate while draining)."""
        summary: dict[str, Any] = {}
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        before = streamer_counters(self.metrics_url)

        def loop() -> None:
            while not stop.wait(self.interval_s):
                lag, pending = self.backlog()
                samples.append((time.monotonic(), lag, pending))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield summary
        finally:
            stop.set()
            thread.join()
            ended = time.monotonic()
            at_end = sum(self.backlog())
            mid = streamer_counters(self.metrics_url)
            while time.monotonic() - ended < self.drain_timeout_s and sum(self.backlog()):
                time.sleep(0.05)
            drained = not sum(self.backlog())
            drain_s = time.monotonic() - ended
            after = streamer_counters(self.metrics_url)
            skipped = 0
            if not drained:
                # What is still unread is skipped (the group moved to the stream's end), so that
                # the next run is not measured beside the streamer's catch-up; counted, reported.
                skipped = self.backlog()[0]
                self.client.xgroup_setid(self.stream, self.group, id="$")
                settle = time.monotonic()
                while time.monotonic() - settle < 30 and sum(self.backlog()):
                    time.sleep(0.05)
            applied = 'vigil_streamer_events_total{outcome="applied"}'
            during_drain = after.get(applied, 0.0) - mid.get(applied, 0.0)
            summary.update(
                samples=len(samples),
                max_lag=max((s[1] for s in samples), default=0),
                max_pending=max((s[2] for s in samples), default=0),
                max_backlog=max((s[1] + s[2] for s in samples), default=0),
                backlog_at_end=at_end,
                drained=drained,
                drain_s=drain_s,
                skipped=skipped,
                applied=after.get(applied, 0.0) - before.get(applied, 0.0),
                applied_while_draining=during_drain,
                drain_rate_eps=during_drain / drain_s if drain_s > 0.5 else None,
                streamer_errors=after.get("vigil_streamer_errors_total", 0.0)
                - before.get("vigil_streamer_errors_total", 0.0),
            )
            batches = after.get(_BATCHES, 0.0) - before.get(_BATCHES, 0.0)
            if batches:
                spent = after.get(_BATCH_S, 0.0) - before.get(_BATCH_S, 0.0)
                sizes = after.get(_BATCH_N, 0.0) - before.get(_BATCH_N, 0.0)
                summary.update(
                    batches=batches,
                    batch_ms_mean=1000.0 * spent / batches,
                    batch_events_mean=sizes / batches,
                )

    def close(self) -> None:
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="the case, as JSON")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args()
    with open(args.spec) as fh:
        spec = json.load(fh)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    with open(args.out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
