"""The load generator: runs one load case in its own process and writes what it measured as JSON.

``python -m bench.loadgen --spec case.json --out result.json``

Two modes:

- ``open``: requests are sent on a fixed schedule (``rate`` per second) whatever the server does,
  and each latency is measured from the request's *intended* send time, so a stalled server or a
  late generator shows up in the tail instead of silently lowering the load (no coordinated
  omission).
- ``closed``: ``concurrency`` workers each send the next request as soon as the previous answer
  arrived: the maximum throughput at that concurrency. With ``honour_retry_after`` a worker
  whose answer was a 503 with ``Retry-After`` waits at least that long before its next request,
  as the gateway's documented client contract asks (README, *Admission control*), with jitter
  as clients are told to add (a random extra wait of up to as much again), so that the shed
  workers do not come back as one herd; the wait is the client's own and is in no latency (each
  attempt is measured from its own send).

Bodies are templates; every occurrence of ``placeholder`` is replaced by a unique id, so that the
gateway's idempotency store never replays a stored decision. With ``fresh_timestamps``, every
transaction's ``timestamp`` is the time the body is sent (UTC, µs): a live payment, newer than
every stored row of its entities, as in production (a template's own instant, sent again and
again, would be a transaction older than the rows the earlier sends wrote, which the encoder
scores by cutting its merchant's tiles again at it). A 2xx answer that contains
``"degraded":true`` counts as an error of kind ``degraded`` (the gateway answers a timed-out or
failed dependency with 200 + ``uncertain``). The generator's own CPU time is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import numpy as np

#: Percentiles written for the latency-percentile plot (HdrHistogram style).
SPECTRUM = [0, 10, 25, 50, 75, 90, 95, 98, 99, 99.5, 99.8, 99.9, 99.95, 99.99, 100]
DEGRADED = b'"degraded":true'


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_TIMESTAMP = re.compile(rb'"timestamp": ?"[^"]*"')
_NOW = b"\x00now\x00"  # where a fresh timestamp goes (never in a JSON text)


class Bodies:
    """Request bodies, round robin over the templates, with unique ids filled in (and, with
    ``fresh_timestamps``, every ``timestamp`` the time of sending)."""

    def __init__(
        self,
        templates: list[str],
        placeholder: str | None,
        prefix: str,
        fresh_timestamps: bool = False,
    ) -> None:
        ph = placeholder.encode() if placeholder else None
        encoded = [t.encode() for t in templates]
        if fresh_timestamps:
            encoded = [_TIMESTAMP.sub(b'"timestamp":"' + _NOW + b'"', t) for t in encoded]
        self.parts = [t.split(ph) if ph else [t] for t in encoded]
        self.fresh = fresh_timestamps
        self.prefix = prefix
        self.count = 0

    def next(self) -> bytes:
        parts = self.parts[self.count % len(self.parts)]
        self.count += 1
        if len(parts) == 1:
            body = parts[0]
        else:
            base = f"{self.prefix}{self.count}-"
            out = [parts[0]]
            for k, part in enumerate(parts[1:]):
                out.append(f"{base}{k}".encode())
                out.append(part)
            body = b"".join(out)
        if self.fresh:
            now = datetime.now(UTC).isoformat(timespec="microseconds")
            body = body.replace(_NOW, now.replace("+00:00", "Z").encode())
        return body


@dataclass
class Sample:
    start: float  # intended send time (open loop) or actual send time (closed loop)
    end: float
    error: str | None
    retry_after_s: float | None = None  # a 503's Retry-After, when it had one


class Client:
    def __init__(self, session: aiohttp.ClientSession, spec: dict[str, Any]) -> None:
        self.session = session
        self.completed = 0  # every answer, warm-up included (the servers' CPU covers them all)
        self.method = spec.get("method", "POST")
        self.url = spec["url"]
        self.headers = spec.get("headers") or {"content-type": "application/json"}
        self.check_degraded = bool(spec.get("check_degraded"))
        self.timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout_s", 10.0)))

    async def send(self, body: bytes, start: float) -> Sample:
        error: str | None = None
        retry_after: float | None = None
        try:
            async with self.session.request(
                self.method, self.url, data=body, headers=self.headers, timeout=self.timeout
            ) as resp:
                payload = await resp.read()
                if not 200 <= resp.status < 300:
                    error = f"http_{resp.status}"
                    if resp.status == 503 and resp.headers.get("retry-after", "").isdigit():
                        retry_after = float(resp.headers["retry-after"])
                elif self.check_degraded and DEGRADED in payload:
                    error = "degraded"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        self.completed += 1
        return Sample(start, time.perf_counter(), error, retry_after)


async def open_loop(
    client: Client, bodies: Bodies, rate: float, warmup: float, duration: float, drain: float
) -> tuple[list[Sample], float, float, float]:
    """Fixed-rate schedule; returns samples of the measured window, its bounds and the worst
    lateness of a send against its schedule (a late generator, not a slow server)."""
    interval = 1.0 / rate
    t0 = time.perf_counter() + 0.05
    measure_from = t0 + warmup
    total = int((warmup + duration) * rate)
    tasks: list[asyncio.Task[Sample]] = []
    worst_lag = 0.0
    for i in range(total):
        intended = t0 + i * interval
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        worst_lag = max(worst_lag, time.perf_counter() - intended)
        tasks.append(asyncio.ensure_future(client.send(bodies.next(), intended)))
    done, pending = await asyncio.wait(tasks, timeout=drain)
    for task in pending:
        task.cancel()
    samples = []
    for task in tasks:
        if task in done and not task.cancelled() and task.exception() is None:
            sample = task.result()
        else:  # never answered within the drain: counted as a timeout at the drain's end
            sample = Sample(0.0, time.perf_counter(), "timeout")
        samples.append(sample)
    # Attribute undrained requests their intended time so that the window logic keeps them.
    for i, sample in enumerate(samples):
        if sample.start == 0.0:
            sample.start = t0 + i * interval
    measured = [s for s in samples if s.start >= measure_from]
    return measured, measure_from, measure_from + duration, worst_lag


async def closed_loop(
    client: Client,
    bodies: Bodies,
    concurrency: int,
    warmup: float,
    duration: float,
    honour_retry_after: bool = False,
) -> tuple[list[Sample], float, float, float]:
    t0 = time.perf_counter()
    measure_from, stop = t0 + warmup, t0 + warmup + duration
    samples: list[Sample] = []
    jitter = random.Random(7)

    async def worker() -> None:
        while True:
            start = time.perf_counter()
            if start >= stop:
                return
            sample = await client.send(bodies.next(), start)
            if start >= measure_from and sample.end <= stop + 5.0:
                samples.append(sample)
            if honour_retry_after and sample.retry_after_s:
                wait = sample.retry_after_s * (1.0 + jitter.random())
                await asyncio.sleep(min(wait, max(0.0, stop - sample.end)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, measure_from, stop, 0.0


def summarise(
    samples: list[Sample],
    window: tuple[float, float],
    rows: int,
    lag: float,
    cpu: float,
    wall: float,
) -> dict[str, Any]:
    lat_ms = np.array([(s.end - s.start) * 1000.0 for s in samples]) if samples else np.zeros(0)
    errors: dict[str, int] = {}
    for s in samples:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    ok = len(samples) - sum(errors.values())
    first, last = window
    if samples:
        # Throughput over the time the measured requests actually took: from the window's start
        # to the last answer (later than the window's end when the server fell behind).
        span = max(last, max(s.end for s in samples)) - first
    else:
        span = last - first
    out: dict[str, Any] = {
        "requests": len(samples),
        "ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "rate_rps": ok / span if span > 0 else 0.0,
        "rows_per_s": ok * rows / span if span > 0 else 0.0,
        "window_s": span,
        "generator_cpu_pct": 100.0 * cpu / wall if wall > 0 else 0.0,
        "generator_worst_send_lag_ms": lag * 1000.0,
    }
    # Admission control's refusals (503) apart from the answers it admitted: the overload case
    # judges each on its own.
    shed = np.array([(s.end - s.start) * 1000.0 for s in samples if s.error == "http_503"])
    if len(shed):
        admitted = np.array([(s.end - s.start) * 1000.0 for s in samples if s.error != "http_503"])
        out.update(
            shed=len(shed),
            shed_p99_ms=float(np.percentile(shed, 99)),
            shed_max_ms=float(shed.max()),
            admitted=len(admitted),
        )
        if len(admitted):
            out.update(
                admitted_p50_ms=float(np.percentile(admitted, 50)),
                admitted_p99_ms=float(np.percentile(admitted, 99)),
            )
    if len(lat_ms):
        pct = np.percentile(lat_ms, [50, 95, 99, 99.9])
        out.update(
            p50_ms=pct[0],
            p95_ms=pct[1],
            p99_ms=pct[2],
            p999_ms=pct[3],
            max_ms=float(lat_ms.max()),
            mean_ms=float(lat_ms.mean()),
        )
        out["spectrum"] = [
            [p, float(v)] for p, v in zip(SPECTRUM, np.percentile(lat_ms, SPECTRUM), strict=True)
        ]
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    bodies = Bodies(
        spec["bodies"],
        spec.get("placeholder"),
        spec.get("id_prefix", "lg"),
        bool(spec.get("fresh_timestamps")),
    )
    mode = spec["mode"]
    max_conn = int(spec.get("max_connections", 512))
    connector = aiohttp.TCPConnector(limit=max_conn, force_close=False, ttl_dns_cache=None)
    async with aiohttp.ClientSession(
        connector=connector, skip_auto_headers=["User-Agent"]
    ) as session:
        client = Client(session, spec)
        # Open the connections before the clock starts.
        warm = min(int(spec.get("concurrency", 4)), 16)
        await asyncio.gather(
            *(client.send(bodies.next(), time.perf_counter()) for _ in range(warm))
        )
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        if mode == "open":
            samples, first, last, lag = await open_loop(
                client,
                bodies,
                float(spec["rate"]),
                float(spec["warmup_s"]),
                float(spec["duration_s"]),
                float(spec.get("drain_s", 10.0)),
            )
        elif mode == "closed":
            samples, first, last, lag = await closed_loop(
                client,
                bodies,
                int(spec["concurrency"]),
                float(spec["warmup_s"]),
                float(spec["duration_s"]),
                bool(spec.get("honour_retry_after")),
            )
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    result = summarise(samples, (first, last), int(spec.get("rows", 1)), lag, cpu, wall)
    result["completed_total"] = client.completed
    if spec.get("keep_latencies"):  # for pooling several rounds (bench.run.pool_rounds)
        result["latencies_ms"] = [round((s.end - s.start) * 1000.0, 4) for s in samples]
        result["generator_cpu_s"], result["generator_wall_s"] = cpu, wall
    result.update(
        mode=mode,
        rate=spec.get("rate"),
        concurrency=spec.get("concurrency"),
        rows=int(spec.get("rows", 1)),
        duration_s=float(spec["duration_s"]),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="the case, as JSON")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args()
    with open(args.spec) as fh:
        spec = json.load(fh)
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, with more generator CPU per request
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    with open(args.out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
