"""The in-process floors: what a Redis read + an XGBoost predict cost with no HTTP at all.

``python -m bench.inprocess --spec in.json --out out.json``, in its own process (its CPU is its
own, its imports do not weigh on the orchestrator). For 1, 100 and 1000 rows of the benchmark's
transactions, timed call by call after a warm-up:

- ``raw``: one pipelined redis-py HMGET per (entity, view) of exactly the keys and fields the
  encoder reads, then ``Booster.inplace_predict`` of the already-encoded float32 matrix: the
  floor below which no server can go on this machine;
- ``dataplanes``: Vigil's own encoder data plane (``Encoder.encode``: the same round trip plus
  decoding, freshness and on-demand features) and the predictor runtime (score, and score +
  contributions as the gateway asks), called directly: the services' work without their HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np


def _stats(samples: list[float], rows: int) -> dict[str, Any]:
    ms = np.array(samples) * 1000.0
    p = np.percentile(ms, [50, 95, 99, 99.9])
    return {
        "calls": len(samples),
        "rows": rows,
        "p50_ms": float(p[0]),
        "p95_ms": float(p[1]),
        "p99_ms": float(p[2]),
        "p999_ms": float(p[3]),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "rows_per_s": rows * len(ms) / (ms.sum() / 1000.0),
    }


def _budget(rows: int, seconds: float) -> tuple[int, float]:
    """(most calls, seconds) for a size: enough calls for a p99, bounded in time."""
    return {1: 3000, 100: 600, 1000: 80}.get(rows, 100), seconds


def _time_sync(fn: Callable[[], Any], rows: int, seconds: float) -> dict[str, Any]:
    calls, limit = _budget(rows, seconds)
    for _ in range(min(50, calls)):
        fn()
    samples: list[float] = []
    stop = time.perf_counter() + limit
    while len(samples) < calls and time.perf_counter() < stop:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return _stats(samples, rows)


async def _time_async(
    fn: Callable[[], Awaitable[Any]], rows: int, seconds: float
) -> dict[str, Any]:
    calls, limit = _budget(rows, seconds)
    for _ in range(min(50, calls)):
        await fn()
    samples: list[float] = []
    stop = time.perf_counter() + limit
    while len(samples) < calls and time.perf_counter() < stop:
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    return _stats(samples, rows)


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import redis

    from vigil_contracts.encoding import EncodeRequest
    from vigil_contracts.segments import Labelling
    from vigil_encoder.dataplane import Encoder
    from vigil_encoder.metrics import EncoderMetrics
    from vigil_encoder.store import OnlineStore
    from vigil_predictor.runtime import XGBoostRuntime

    rows: list[dict[str, Any]] = spec["encode_rows"]
    vectors = np.array(
        [[np.nan if v is None else v for v in vec] for vec in spec["vectors"]], dtype=np.float32
    )
    seconds = float(spec["seconds_per_case"])
    metrics = EncoderMetrics()
    store = OnlineStore(spec["redis_url"], 5.0, metrics)
    store.open()
    encoder = Encoder(Path(spec["spec_path"]), store, metrics, max_rows=5000)
    assert encoder.load_spec(), encoder.spec_error
    plan = encoder.plan(spec["feature_service"])
    runtime = XGBoostRuntime(
        Path(spec["model_dir"]), name=spec["model_name"], version=spec["model_version"], nthread=1
    )
    assert runtime.load(), runtime.error
    # As the gateway asks: explain the rows the lowest pair (global or a channel's) can flag.
    suspicious = Labelling(
        runtime.info.thresholds, runtime.info.segment_thresholds
    ).lowest_suspicious
    booster = runtime._booster  # the very booster the predictor serves
    client = redis.Redis.from_url(spec["redis_url"])

    out: dict[str, Any] = {}

    async def measure_size(n: int) -> None:  # a call per size: the timed closures bind its locals
        chosen = [rows[i % len(rows)] for i in range(n)]
        matrix = vectors[np.arange(n) % len(vectors)]
        keys = [
            (view.codec.redis_key(row["entities"]), view.hmget.fields)
            for view in plan.views
            for row in chosen
        ]

        def raw() -> None:
            pipe = client.pipeline(transaction=False)
            for key, fields in keys:
                pipe.hmget(key, fields)
            pipe.execute()
            booster.inplace_predict(matrix, missing=np.nan)

        request = EncodeRequest.model_validate({"feature_service": plan.name, "rows": chosen})

        async def encode() -> None:
            await encoder.encode(request)

        async def dataplanes() -> None:
            encoded = await encoder.encode(request)
            features = np.array([r["values"] for r in encoded["rows"]], dtype=np.float32)
            runtime.predict(features, contributions=True, contributions_min_score=suspicious)

        out[f"raw_redis_predict_{n}"] = _time_sync(raw, n, seconds)
        out[f"encoder_dataplane_{n}"] = await _time_async(encode, n, seconds)
        out[f"predict_score_{n}"] = _time_sync(lambda: runtime.predict(matrix), n, seconds)
        out[f"predict_contrib_{n}"] = _time_sync(
            lambda: runtime.predict(matrix, contributions=True, contributions_min_score=suspicious),
            n,
            seconds,
        )
        out[f"dataplanes_{n}"] = await _time_async(dataplanes, n, seconds)

    for n in spec["sizes"]:
        await measure_size(n)
    await store.close()
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    result = asyncio.run(measure(spec))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
