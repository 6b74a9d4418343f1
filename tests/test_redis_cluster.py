"""Redis Cluster as Vigil's Redis: a real local cluster (three masters with a replica each,
``redis-server --cluster-enabled yes`` on free loopback ports, ``redis-cli --cluster create``),
the test world materialized into it by Feast, and the same answers as on one Redis: the stored
rows, Feast's own online read, the encoder's vectors, the decision store's outcomes and the whole
stack's decisions. Then a master is killed under load: answers are ``uncertain`` at worst during
the failover, never a 5xx, and the stack recovers unaided."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import httpx
import pandas as pd
import pytest
import redis

from tests.test_encoder import SERVICE, encode, feast_vectors, parity_rows
from vigil import feast_repo
from vigil.redis_cluster import LocalRedisCluster
from vigil.redis_server import RedisServer
from vigil.runner import LocalStack
from vigil.scenarios import build_scenarios

pytestmark = pytest.mark.cluster


@contextmanager
def _env(**values: str):
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(feature_env, tmp_path_factory):
    """The cluster, with the session's world materialized into it by ``feast materialize``."""
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster")) as running:
        with _env(
            VIGIL_REDIS_CONNECTION_STRING=running.connection_string,
            VIGIL_REDIS_TYPE="redis_cluster",
        ):
            feast_repo.materialize(feature_env.repo, full=True)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        yield running


@pytest.fixture(scope="module")
def single(feature_env, cluster):
    """One Redis materialized the same way at the same time (the session's own Redis also holds
    rows other tests write)."""
    with RedisServer() as server:
        with _env(VIGIL_REDIS_CONNECTION_STRING=server.connection_string):
            feast_repo.materialize(feature_env.repo, full=True)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        yield server


def _feature_rows(url: str, cluster_mode: bool) -> dict[bytes, dict[bytes, bytes]]:
    client = (
        redis.RedisCluster.from_url(url.replace("redis+cluster", "redis"))
        if cluster_mode
        else redis.Redis.from_url(url)
    )
    keys = (
        client.scan_iter(count=1000, target_nodes=redis.RedisCluster.PRIMARIES)
        if cluster_mode
        else client.scan_iter(count=1000)
    )
    rows = {k: client.hgetall(k) for k in keys if not k.startswith(b"vigil:")}
    client.close()
    return rows


def test_feast_materializes_the_same_rows_into_the_cluster(single, cluster):
    rows = _feature_rows(single.url, False)
    assert len(rows) > 100
    assert _feature_rows(cluster.url, True) == rows
    # Spread over every master, not piled on one.
    for port in cluster.master_ports():
        assert int(cluster.command(port, "dbsize")) > len(rows) / 10


async def _vectors(feature_env, redis_url: str, rows: list[dict]) -> dict:
    from vigil_encoder.app import create_app
    from vigil_encoder.settings import EncoderSettings

    app = create_app(
        EncoderSettings(redis_url=redis_url, spec_path=feast_repo.spec_path(feature_env.repo))
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://e"
        ) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            response = await encode(client, rows)
            assert response.status_code == 200, response.text
            return response.json()


async def test_the_encoder_reads_the_same_vectors_from_the_cluster(feature_env, single, cluster):
    rows = parity_rows(feature_env)
    one = await _vectors(feature_env, single.url, rows)
    clustered = await _vectors(feature_env, cluster.url, rows)
    assert clustered["feature_contract"] == one["feature_contract"]
    # Ages run with the clock between the two calls; everything else is equal.
    for got, want in zip(clustered["rows"], one["rows"], strict=True):
        assert (got["values"], got["missing"], got["stale"]) == (
            want["values"],
            want["missing"],
            want["stale"],
        )
        assert [a is None for a in got["age_seconds"]] == [a is None for a in want["age_seconds"]]
        assert got["age_seconds"] == pytest.approx(want["age_seconds"], abs=60)
    # And Feast's own SDK, configured for the cluster, agrees with both.
    with _env(
        VIGIL_REDIS_CONNECTION_STRING=cluster.connection_string, VIGIL_REDIS_TYPE="redis_cluster"
    ):
        store = feast_repo.open_store(feature_env.repo)
        spec = feast_repo.load_serving_spec(feature_env.repo).feature_services[SERVICE]
        sdk = feast_vectors(store, spec, rows[:60])
    stored = [i for i, f in enumerate(spec.features) if f.kind == "stored"]
    for got, want in zip(clustered["rows"][:60], sdk, strict=True):
        assert [got["values"][i] for i in stored] == pytest.approx(
            [want[i] for i in stored], nan_ok=True
        )


async def test_the_cluster_store_reads_one_round_trip_per_node(cluster):
    from vigil_encoder.cluster_store import ClusterOnlineStore, command_key
    from vigil_encoder.metrics import EncoderMetrics
    from vigil_encoder.store import HmgetPacker

    packer = HmgetPacker([b"f1", b"f2"])
    client = redis.RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"))
    keys = [f"round-trip:{i}".encode() for i in range(200)]
    for key in keys:
        client.hset(key, mapping={b"f1": key, b"f2": b"x"})
    assert command_key(packer.pack(keys[7])) == keys[7]
    store = ClusterOnlineStore(cluster.url, 1.0, EncoderMetrics())
    store.open()
    sent: list[int] = []
    original = store._round_trip

    async def counted(node, commands):
        sent.append(len(commands))
        return await original(node, commands)

    store._round_trip = counted
    try:
        replies = await store.hmget_many([packer.pack(k) for k in keys + [b"round-trip:absent"]])
    finally:
        await store.close()
        client.close()
    assert replies == [[k, b"x"] for k in keys] + [[None, None]]
    assert len(sent) == 3 and sum(sent) == len(keys) + 1


async def _decision_outcomes(url: str, tag: str) -> list:
    """One run of the store's operations over a batch whose keys span many slots."""
    from vigil_contracts.api import ModelRef, Reason, ScoreResponse
    from vigil_gateway.decisions import DecisionStore, connect, encode_entry
    from vigil_gateway.metrics import GatewayMetrics

    def entry(i: int) -> bytes:
        answer = ScoreResponse(
            transaction_id=ids[i % len(ids)],
            label="not_fraud",
            score=0.01 * i,
            reasons=[Reason(code="NO_RISK_SIGNAL", text="none")],
            model=ModelRef(name="fraud_detector", version="1"),
            degraded=False,
            request_id="r",
        )
        return encode_entry(answer, f"sha256:{i}")

    client = connect(url, timeout_s=1.0, max_connections=10)
    store = DecisionStore(client, GatewayMetrics(), ttl_s=60)
    ids = [f"{tag}-{i}" for i in range(40)]
    out: list = []
    try:
        out.append(
            await store.put_first([(t, entry(i)) for i, t in enumerate(ids[:10])], overwrite=False)
        )
        held = await store.reserve_many(
            ids[5:25], [f"sha256:{i}" for i in range(20)], b"tok", pending_ms=5000
        )
        out.append(sorted((k.replace(tag, ""), type(v).__name__) for k, v in held.items()))
        out.append(
            await store.settle(
                [(t, entry(i) if i % 3 else b"") for i, t in enumerate(ids[5:30])],
                b"tok",
                overwrite=False,
            )
        )
        out.append(
            await store.put_first([(t, entry(i)) for i, t in enumerate(ids[20:40])], overwrite=True)
        )
        got = await store.get_many(ids)
        out.append(sorted((k.replace(tag, ""), type(v).__name__) for k, v in got.items()))
        out.append(await store.ping())
    finally:
        await client.aclose()
    return out


async def test_the_decision_store_answers_on_the_cluster_as_on_one_redis(single, cluster):
    tag = f"slots-{time.time_ns()}"
    one = await _decision_outcomes(single.url, tag)
    clustered = await _decision_outcomes(cluster.url, tag)
    assert clustered == one
    assert one[-1] == (True, "reachable")
    # The keys keep one Redis's names (stored data), spread over the cluster's slots.
    client = redis.RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"))
    assert client.exists(f"vigil:decision:{tag}-0".encode()) == 1
    client.close()


@pytest.fixture(scope="module")
def stacks(feature_env, trained_model, single, cluster, tmp_path_factory):
    """Vigil's stack on the cluster, and the same stack on one Redis."""
    logs = tmp_path_factory.mktemp("cluster-logs")
    clustered = LocalStack(
        feature_env.repo, feature_env.models_dir, logs / "cluster", redis_url=cluster.url
    )
    one = LocalStack(
        feature_env.repo, feature_env.models_dir, logs / "single", redis_url=single.url
    )
    with clustered, one:
        yield clustered, one


@pytest.fixture(scope="module")
def transactions(feature_env) -> list[dict]:
    scenarios = build_scenarios(pd.read_parquet(feature_env.raw_path), prefix="cluster")
    return [s.transaction for s in scenarios]


def _client(stack, timeout: float) -> httpx.Client:
    """A client of the stack's gateway with the stack's API key."""
    return httpx.Client(
        base_url=stack.services["gateway"].url,
        timeout=timeout,
        headers={"authorization": f"Bearer {stack.api_key}"},
    )


def _scores(stack, transactions: list[dict], suffix: str) -> list[tuple]:
    with _client(stack, 10) as client:
        batch = client.post(
            "/v1/transactions/score-batch",
            json={
                "transactions": [
                    dict(t, transaction_id=f"{t['transaction_id']}-{suffix}-b")
                    for t in transactions
                ]
            },
        ).json()
        singles = [
            client.post(
                "/v1/transactions/score",
                json=dict(t, transaction_id=f"{t['transaction_id']}-{suffix}-s"),
            ).json()
            for t in transactions
        ]
    return [
        (r["label"], r["score"], [x["code"] for x in r["reasons"]], r["degraded"])
        for r in [item["result"] for item in batch["results"]] + singles
    ]


def test_the_stack_decides_on_the_cluster_as_on_one_redis(stacks, transactions):
    clustered, one = stacks
    suffix = str(time.time_ns())
    on_cluster = _scores(clustered, transactions, suffix)
    assert not any(degraded for *_, degraded in on_cluster)
    assert on_cluster == _scores(one, transactions, suffix)


def test_a_master_killed_under_load_gives_uncertain_at_worst_and_recovers_unaided(
    stacks, transactions, cluster
):
    clustered, _ = stacks
    answers: list[tuple[float, int, dict]] = []
    stop = threading.Event()

    def load() -> None:
        with _client(clustered, 5) as client:
            i = 0
            while not stop.is_set():
                t = transactions[i % len(transactions)]
                body = dict(t, transaction_id=f"{t['transaction_id']}-load-{i}-{time.time_ns()}")
                response = client.post("/v1/transactions/score", json=body)
                answers.append(
                    (
                        time.monotonic(),
                        response.status_code,
                        response.json() if response.status_code == 200 else {},
                        body,
                    )
                )
                i += 1
                time.sleep(0.02)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1.5)
        victim = cluster.master_ports()[0]
        cluster.kill(victim)
        killed_at = time.monotonic()
        cluster.wait_healthy(timeout=30)
        healed_at = time.monotonic()
        time.sleep(3.0)  # load goes on after the failover
    finally:
        stop.set()
        worker.join()
    assert healed_at - killed_at < 30
    assert len(answers) > 50
    assert all(status == 200 for _, status, _, _ in answers), {s for _, s, _, _ in answers}
    degraded = [a for _, _, a, _ in answers if a["degraded"]]
    assert all(a["label"] == "uncertain" for a in degraded)
    before = [a for at, _, a, _ in answers if at < killed_at]
    assert before and not any(a["degraded"] for a in before)
    # Recovered unaided: the last second of load has no degraded answer.
    last = [a for at, _, a, _ in answers if at > answers[-1][0] - 1.0]
    assert last and not any(a["degraded"] for a in last), [
        a["reasons"] for a in last if a["degraded"]
    ]
    # Nothing lost: every decision made after the failover is replayed, and one made before it
    # is either replayed or (its write not yet copied to the replica that took over) made again
    # alike.
    with _client(clustered, 5) as client:
        replayed = 0
        for at, _, first, body in answers[::5]:
            if first["degraded"]:
                continue
            again = client.post("/v1/transactions/score", json=body).json()
            assert (again["label"], again["score"]) == (first["label"], first["score"])
            if at > healed_at:
                assert again["cached"] is True
            replayed += again["cached"]
        assert replayed > 0
