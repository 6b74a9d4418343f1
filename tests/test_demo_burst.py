"""The demo's scenarios played on the real stack with the streamer (processes, a private
redis-server loaded as ``vigil demo`` loads it: the materialized store and the seeded
histories): every probe of the card-testing burst is scored at the present, and each sees the
ones before it in its request-time windows, since the demo sends a probe only once the streamer
has written the previous one into the card's, merchant's and device's online rows."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from conftest import copy_online_store
from vigil.demo import decision_features, decision_table, play, wait_held
from vigil.fx import FX_FILE, read_fx_table
from vigil.materialization import redis_client
from vigil.redis_server import RedisServer, free_port
from vigil.runner import LocalStack
from vigil.scenarios import build_scenarios
from vigil.stream_seed import seed_histories
from vigil_contracts.decision_events import (
    CONTRACTS_KEY,
    FIELD_EVENT,
    STREAM_KEY,
    DecisionEvent,
    contract_names,
)
from vigil_contracts.feature_contract import short_name

pytestmark = pytest.mark.e2e
PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


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


def test_a_real_prometheus_scrapes_the_stack_and_evaluates_every_alert(live, tmp_path):
    """deploy/prometheus as shipped (its jobs, rule file), pointed at this stack's ports: every
    service is up, every alerting rule evaluates without error on the real series (a rule
    reading a metric or label that does not exist would be quiet, not failing: that is
    tests/test_alerts.py's), and the series the rules read carry this stack's decisions."""
    stack, _ = live
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    for job in config["scrape_configs"]:
        url = httpx.URL(stack.services[job["job_name"].removeprefix("vigil-")].url)
        job["scheme"] = url.scheme
        job["static_configs"] = [{"targets": [f"{url.host}:{url.port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing; install it: apt-get install -y prometheus"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=5.0) as api:

            def query(expr: str) -> list[dict]:
                return api.get("/query", params={"query": expr}).json()["data"]["result"]

            def settled() -> bool:
                try:
                    up = query("up")
                    groups = api.get("/rules").json()["data"]["groups"]
                except (httpx.TransportError, KeyError, ValueError):  # ValueError: not JSON yet
                    return False  # (a starting Prometheus answers 503 in plain text)
                rules = [rule for group in groups for rule in group["rules"]]
                return (
                    len(up) == len(config["scrape_configs"])
                    and all(s["value"][1] == "1" for s in up)
                    and bool(rules)
                    and all(r["lastEvaluation"] > "2000" and r["health"] == "ok" for r in rules)
                )

            deadline = time.monotonic() + 60
            while not settled():
                assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
                assert time.monotonic() < deadline, (
                    f"up: {api.get('/query', params={'query': 'up'}).text[:2000]}; "
                    f"rules: {api.get('/rules').text[:2000]}"
                )
                time.sleep(0.5)
            groups = api.get("/rules").json()["data"]["groups"]
            alerts = {r["name"] for g in groups for r in g["rules"]}
            assert alerts == {r["alert"] for g in _shipped_groups() for r in g["rules"]}
            assert float(query("sum(vigil_gateway_decisions_total)")[0]["value"][1]) > 0
            applied = query('sum(vigil_streamer_events_total{outcome="applied"})')
            assert float(applied[0]["value"][1]) > 0
            # Nothing is wrong with this stack: no alert fires (those without a `for`, lost
            # events and dead letters, would at once; the others only after minutes).
            alerts_now = api.get("/alerts").json()["data"]["alerts"]
            assert [a for a in alerts_now if a["state"] == "firing"] == []
    finally:
        process.terminate()
        process.wait(timeout=30)


def _shipped_groups() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]


def test_a_rescore_after_the_streamer_applied_the_decision_sees_the_same_card_and_device(live, raw):
    """Scored, then its decision applied to the card's and the device's online rows by the
    streamer, then scored again (``?rescore=true``): the card's windows, its "previous
    transaction", whether the device was seen before and the device's windows are those of the
    first scoring, since the rows' own copy of this transaction is not before it; a device or a
    card first seen with this transaction is unknown at it again (windows missing, not 0), so a
    new card's `uncertain` stays `uncertain`; the merchant's windows are those of the first
    scoring too (its tiles, which count the transaction, are cut again at it from its
    history)."""
    stack, store = live
    regular = next(s for s in build_scenarios(raw, prefix="again") if s.name == "regular purchase")
    tag = uuid.uuid4().hex[:8]
    txn = {**regular.transaction, "transaction_id": f"again-{tag}", "device_id": f"dev-{tag}"}
    new_card = {**txn, "transaction_id": f"again-card-{tag}", "card_id": f"card-{tag}"}
    # A new merchant too: its row is then newer than no other transaction (an existing
    # merchant's stored row already counts this instant's later transactions at the first
    # scoring, and the streamer leaves out an event older than its newest by the lateness).
    new_card["merchant_id"] = f"m-{tag}"
    _drained(store)  # every earlier test's decision is in the rows already
    with httpx.Client(
        base_url=stack.services["gateway"].url,
        timeout=10.0,
        headers={"authorization": f"Bearer {stack.api_key}"},
    ) as client:
        first = client.post("/v1/transactions/score", json=txn)
        assert first.status_code == 200, first.text
        wait_held(store, "vigil", txn)  # the card's and the device's rows now hold it
        again = client.post("/v1/transactions/score", params={"rescore": "true"}, json=txn)
        assert again.status_code == 200, again.text
        assert again.json()["cached"] is False
        card_first = client.post("/v1/transactions/score", json=new_card)
        wait_held(store, "vigil", new_card)
        card_again = client.post(
            "/v1/transactions/score", params={"rescore": "true"}, json=new_card
        )
    before, after = _vectors(store, txn["transaction_id"], 2)
    assert before["is_new_device"] == after["is_new_device"] == 1.0
    assert before["device_age_days"] is None and after["device_age_days"] is None
    assert before["device_txn_count_24h"] is None  # unknown, not "no transaction"
    assert before["seconds_since_card_last_txn"] is not None
    assert before["merchant_txn_count_24h"] is not None
    # Equal (a merchant's EUR sum of its day is made again in another order: its last bits).
    assert _same_vector(after, before)
    before, after = _vectors(store, new_card["transaction_id"], 2)
    assert before["card_txn_count_24h"] is None and before["card_amount_sum_24h"] is None
    assert before["merchant_txn_count_24h"] is None  # and its row now counts it
    assert _same_vector(after, before)
    assert card_again.json()["label"] == card_first.json()["label"]
    assert card_again.json()["score"] == card_first.json()["score"]


def _same_vector(got: dict, want: dict) -> bool:
    """Equal names, the same missing values, the others equal to 1e-12 relative."""
    missing = {n for n, v in want.items() if v is None}
    return (
        got.keys() == want.keys()
        and {n for n, v in got.items() if v is None} == missing
        and {n: got[n] for n in got.keys() - missing}
        == pytest.approx({n: want[n] for n in want.keys() - missing}, rel=1e-12)
    )


def _drained(store, timeout_s: float = 30.0) -> None:
    """Wait until the streamer's group has read and acknowledged every decision event."""
    deadline = time.monotonic() + timeout_s
    while True:
        [group] = store.xinfo_groups(STREAM_KEY)
        if not group["lag"] and not group["pending"]:
            return
        assert time.monotonic() < deadline, f"the streamer did not drain: {group}"
        time.sleep(0.05)


def _vectors(store, transaction_id: str, n: int) -> list[dict]:
    """The vectors (short names) of the first ``n`` decision events of a transaction, oldest
    first, once the gateway sent them all (at most 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        events = [
            DecisionEvent.model_validate_json(fields[FIELD_EVENT.encode()])
            for _, fields in store.xrange(STREAM_KEY)
        ]
        mine = [e for e in events if e.transaction.transaction_id == transaction_id]
        if len(mine) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(mine) == n, f"{len(mine)} decision events of {transaction_id}, not {n}"
    return [
        {short_name(k): v for k, v in zip(_names(store, e), e.features.values, strict=True)}
        for e in mine
        if e.features is not None
    ]


def _names(store, event: DecisionEvent) -> list[str]:
    """The names of an event's features: its contract's, registered beside the stream."""
    assert event.features is not None and event.features.names is None
    contract = event.features.feature_contract
    return contract_names(contract, store.hget(CONTRACTS_KEY, contract))
