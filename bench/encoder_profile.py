"""The encoder's CPU per batch, in process: ``Encoder.encode`` of 1,000-row batches of the bench
world (its store materialized into a private redis-server), timed and profiled.

The machine's other work makes a single timing noisy: the figure to compare is the minimum over
many batches, taken before and after a change within the same few minutes. The start-up heap is
frozen, as the service does (``vigil_servicekit.gc_tuning``).

    python -m bench.encoder_profile .bench/work/world50 50000 --batches 40 --profile 25
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import time
from pathlib import Path

from bench.workspace import FEATURE_SERVICE, World, build_world, sample_transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the bench world's directory (reused if built)")
    parser.add_argument("transactions", type=int, help="the world's size, when it is built")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch")
    parser.add_argument("--batches", type=int, default=40, help="batches timed")
    parser.add_argument("--profile", type=int, default=0, help="profile lines shown (0: none)")
    args = parser.parse_args()

    world = build_world(args.root, args.transactions, 7, reuse=True, log=print)
    try:
        asyncio.run(_measure(world, args.rows, args.batches, args.profile))
    finally:
        world.redis.stop()


async def _measure(world: World, rows: int, batches: int, profile: int) -> None:
    from vigil_contracts.api import Transaction
    from vigil_contracts.encoding import EncodeRequest
    from vigil_encoder.dataplane import Encoder
    from vigil_encoder.metrics import EncoderMetrics
    from vigil_encoder.store import OnlineStore
    from vigil_gateway.preprocess import to_encode_row

    transactions = sample_transactions(world, rows, seed=7)
    encode_rows = [
        to_encode_row(Transaction.model_validate({**tx, "transaction_id": "probe"}))
        for tx in transactions
    ]
    metrics = EncoderMetrics()
    store = OnlineStore(world.redis.url, 5.0, metrics)
    encoder = Encoder(world.repo / "data" / "serving_spec.json", store, metrics, max_rows=rows)
    if not encoder.load_spec():
        raise SystemExit(f"serving spec: {encoder.spec_error}")
    request = EncodeRequest.model_validate(
        {"feature_service": FEATURE_SERVICE, "rows": encode_rows}
    )
    store.open()
    for _ in range(5):  # warm: plans, layouts, connections
        await encoder.encode(request)
    gc.collect()
    gc.freeze()
    cpu = []
    for _ in range(batches):
        start = time.process_time()
        await encoder.encode(request)
        cpu.append(time.process_time() - start)
    print(
        f"encode {rows} rows: min {min(cpu) * 1e3:.1f} ms CPU, "
        f"median {statistics.median(cpu) * 1e3:.1f} ms ({batches} batches)"
    )
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(10):
            await encoder.encode(request)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)


if __name__ == "__main__":
    main()
