"""Redis down, hung and back: the encoder answers 503 problem+json fast and recovers by itself."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from vigil import feast_repo, materialization
from vigil.redis_server import RedisServer, free_port
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_contracts.request_features import NO_DEVICE_ID
from vigil_encoder.app import create_app
from vigil_encoder.settings import EncoderSettings

SERVICE = "fraud_model_v1"
# The whole answer, not just Redis's timeout: well under a second even on a busy machine.
FAST = 0.8


def rows(n: int = 3) -> list[dict]:
    return [
        {
            "entities": {
                "card_id": f"c{i}",
                "merchant_id": "m1",
                "device_id": NO_DEVICE_ID,
                "currency": "EUR",
            },
            "request": {
                "amount": 5.0,
                "txn_epoch": time.time(),
                "txn_hour": 9,
                "channel": "pos",
                "country": "DE",
                "device_present": 0,
            },
        }
        for i in range(n)
    ]


async def timed_encode(client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.post("/v1/encode", json={"feature_service": SERVICE, "rows": rows()})
    return response, time.perf_counter() - started


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["type"].endswith("/feature-store-unavailable")
    assert "Traceback" not in response.text
    assert elapsed < FAST, f"503 took {elapsed:.3f}s"


def mark_loaded(feature_env, port: int) -> None:
    """Leave the markers a load of the online store leaves (the store itself stays empty): an
    encoder is not ready on a Redis that was never loaded (test_encoder_markers)."""
    source = materialization.redis_client(feature_env.redis.connection_string)
    target = materialization.redis_client(f"127.0.0.1:{port}")
    spec = feast_repo.load_serving_spec(feature_env.repo)
    views = sorted({v for svc in spec.feature_services.values() for v in svc.views})
    for view, marker in materialization.read_markers(source, spec.project, views).items():
        assert marker is not None, f"the session's store has no marker for {view}"
        materialization.write_marker(target, spec.project, view, marker)
    source.close()
    target.close()


@pytest.fixture
async def outage_client(feature_env):
    """An encoder pointed at a port where nothing listens (yet)."""
    port = free_port()
    settings = EncoderSettings(
        redis_url=f"redis://127.0.0.1:{port}/0", spec_path=feast_repo.spec_path(feature_env.repo)
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://encoder"
        ) as client:
            yield client, port


async def test_unreachable_redis_is_fast_503_then_recovers(outage_client, feature_env):
    client, port = outage_client
    assert_unavailable(*await timed_encode(client))
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"]["ready"] is False
    assert ready.json()["checks"]["spec"]["ready"] is True
    # A scrape says so too, with no /readyz in between (what an alert reads).
    assert "vigil_encoder_ready 0.0" in (await client.get("/metrics")).text

    server = RedisServer(port=port).start()
    mark_loaded(feature_env, port)
    try:
        response, _ = await timed_encode(client)
        assert response.status_code == 200, response.text
        assert (await client.get("/readyz")).status_code == 200
        # An empty store: every stored feature missing (the FX rate too, so the amount in EUR),
        # the other request-time features still there.
        body = response.json()
        values = dict(zip(body["feature_names"], body["rows"][0]["values"], strict=True))
        assert values["card_windows__card_txn_count_7d"] is None
        assert values["request_features__txn_amount"] is None
        assert values["request_features__hour_of_day"] == 9.0

        server.stop()
        assert_unavailable(*await timed_encode(client))
        assert (await client.get("/readyz")).status_code == 503

        server.start()  # same port: pooled connections died with the old process
        mark_loaded(feature_env, port)
        response, _ = await timed_encode(client)
        assert response.status_code == 200, response.text
        assert (await client.get("/readyz")).status_code == 200
        server.stop()
        assert "vigil_encoder_ready 0.0" in (await client.get("/metrics")).text
        server.start()
        mark_loaded(feature_env, port)
        assert "vigil_encoder_ready 1.0" in (await client.get("/metrics")).text
    finally:
        server.stop()

    metrics = (await client.get("/metrics")).text
    assert 'vigil_encoder_redis_errors_total{kind="connection"}' in metrics
    assert 'route="/v1/encode",status="503"' in metrics


async def test_hung_redis_times_out_as_503(outage_client):
    client, port = outage_client
    server = RedisServer(port=port).start()
    try:
        assert (await timed_encode(client))[0].status_code == 200
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            response, elapsed = await timed_encode(client)
            assert_unavailable(response, elapsed)
            assert elapsed >= 0.2  # it did wait for the 0.25 s socket timeout
            assert (await client.get("/readyz")).status_code == 503
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        response, _ = await timed_encode(client)
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    metrics = (await client.get("/metrics")).text
    assert 'vigil_encoder_redis_errors_total{kind="timeout"}' in metrics
