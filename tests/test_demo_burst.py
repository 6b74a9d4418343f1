"""The demo's scenarios played on the real stack with the streamer (processes, a private
redis-server loaded as ``vigil demo`` loads it: the materialized store and the seeded
histories): every probe of the card-testing burst is scored at the present, and each sees the
ones before it in its request-time windows, since the demo sends a probe only once the streamer
has written the previous one into the card's, merchant's and device's online rows."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pandas as pd
import pytest

from conftest import copy_online_store
from vigil.demo import decision_features, decision_table, play
from vigil.fx import FX_FILE, read_fx_table
from vigil.materialization import redis_client
from vigil.redis_server import RedisServer
from vigil.runner import LocalStack
from vigil.scenarios import build_scenarios
from vigil.stream_seed import seed_histories

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def raw(feature_env) -> pd.DataFrame:
    return pd.read_parquet(feature_env.raw_path)


@pytest.fixture(scope="module")
def live(feature_env, trained_model, raw, tmp_path_factory):
    """The stack with its streamer on its own Redis, the gateway's checks at their defaults
    (a transaction far older than its features would be ``TRANSACTION_BEFORE_FEATURES``)."""
    own = RedisServer().start()
    store = redis_client(own.connection_string)
    try:
        assert copy_online_store(feature_env.redis.url, own.url) > 100
        fx = read_fx_table(feature_env.raw_path.parent / FX_FILE)
        seed_histories(store, raw, fx, datetime.now(UTC))
        stack = LocalStack(
            feature_env.repo,
            feature_env.models_dir,
            tmp_path_factory.mktemp("logs"),
            redis_url=own.url,
            with_streamer=True,
        )
        with stack:
            yield stack, store
    finally:
        store.close()
        own.stop()


def test_each_probe_of_the_burst_counts_the_ones_before_it(live, raw):
    stack, store = live
    scenarios = build_scenarios(raw, prefix="live")
    burst = next(s for s in scenarios if s.earlier)
    with httpx.Client(
        base_url=stack.services["gateway"].url,
        timeout=10.0,
        headers={"authorization": f"Bearer {stack.api_key}"},
    ) as client:
        results = play(client, store, "vigil", scenarios)
    print("\n" + decision_table(scenarios, results))

    probes = [*burst.earlier, burst.transaction]
    seen = [decision_features(store, p) for p in probes]
    assert all(seen), "every probe's decision event carries its vector"
    # The card's own history may hold a payment in the hour before the burst; the device is new.
    assert [f["card_txn_count_1h"] - seen[0]["card_txn_count_1h"] for f in seen] == list(
        range(len(probes))
    )
    assert [f["device_txn_count_24h"] for f in seen] == [None, *range(1, len(probes))]
    merchants = {p["merchant_id"] for p in probes}
    assert seen[-1]["card_distinct_merchants_24h"] >= len(merchants)

    last = results[scenarios.index(burst)]["result"]
    assert last["transaction_id"] == burst.transaction["transaction_id"]
    assert last["degraded"] is False, last
    codes = [r["code"] for r in last["reasons"]]
    assert "TRANSACTION_BEFORE_FEATURES" not in codes, last
    for sc, res in zip(scenarios, results, strict=True):
        assert res["result"]["label"] != "uncertain" or sc.name == "brand-new card", (sc.name, res)
