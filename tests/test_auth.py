"""Authentication, scopes, rate limits, admission, TLS and the internal token, on the running stack
(redis-server and the three services as processes, the gateway over HTTPS with a self-signed
certificate verified by the client), plus in-process checks of admission and deadlines."""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

import test_gateway
from test_gateway import EncoderStandIn, assert_problem, gateway, provision_key, txn
from vigil.keys import dev_certificate
from vigil.redis_server import RedisServer, free_port
from vigil.runner import LocalStack
from vigil_gateway.api_keys import KeyAdmin

redis_url = test_gateway.redis_url  # the session fixture, shared

SCORE = "/v1/transactions/score"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> tuple[str, str]:
    cert, key = dev_certificate(tmp_path_factory.mktemp("certs"))
    return str(cert), str(key)


@pytest.fixture(scope="module")
def tls_stack(feature_env, trained_model, tmp_path_factory, certs):
    own = RedisServer().start()
    # The materialized features (and their markers: an empty online store is not ready).
    source, target = redis.Redis.from_url(feature_env.redis.url), redis.Redis.from_url(own.url)
    for key in source.scan_iter(count=1000):
        target.restore(key, 0, source.dump(key), replace=True)
    running = LocalStack(
        feature_env.repo,
        feature_env.models_dir,
        tmp_path_factory.mktemp("logs"),
        redis_url=own.url,
        tls=certs,
    )
    with running:
        yield running
    own.stop()


def _admin(stack: LocalStack) -> tuple[aioredis.Redis, KeyAdmin]:
    client = aioredis.Redis.from_url(stack.redis_url)
    return client, KeyAdmin(client, stack.secrets["auth_secret"])


def _key(stack: LocalStack, scopes: tuple[str, ...] = ("score",), **kw: Any) -> tuple[str, str]:
    async def make() -> tuple[str, str]:
        client, admin = _admin(stack)
        try:
            token, record = await admin.create("test_auth", scopes, **kw)
        finally:
            await client.aclose()
        return token, record.key_id

    return asyncio.run(make())


def _revoke(stack: LocalStack, key_id: str) -> None:
    async def revoke() -> None:
        client, admin = _admin(stack)
        try:
            await admin.revoke(key_id)
        finally:
            await client.aclose()

    asyncio.run(revoke())


def _txn(tag: str) -> dict[str, Any]:
    return {
        "transaction_id": f"auth-{tag}-{time.time_ns()}",
        "card_id": "c-auth",
        "merchant_id": "m-auth",
        "amount": 12.5,
        "currency": "EUR",
        "timestamp": "2026-01-01T10:00:00Z",
        "channel": "ecom",
    }


def _client(
    stack: LocalStack, certs: tuple[str, str], key: str | None = None, url: str | None = None
) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=url or stack.services["gateway"].url,
        verify=certs[0],
        timeout=10.0,
        headers=headers,
    )


def test_https_with_verification_and_the_stack_key(tls_stack, certs):
    url = tls_stack.services["gateway"].url
    assert url.startswith("https://")
    with _client(tls_stack, certs, tls_stack.api_key) as client:
        response = client.post(SCORE, json=_txn("ok"))
    assert response.status_code == 200, response.text
    with httpx.Client(verify=True, timeout=5.0) as untrusting, pytest.raises(httpx.ConnectError):
        untrusting.get(url + "/healthz")  # verification is on: an unknown CA is refused


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


def test_refusals(tls_stack, certs):
    with _client(tls_stack, certs) as anonymous:
        response = anonymous.post(SCORE, json=_txn("none"))
        _problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/healthz").status_code == 200  # open
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200  # open by default
    with _client(tls_stack, certs, "vk_0123456789ab_not-a-real-key") as wrong:
        response = wrong.post(SCORE, json=_txn("wrong"))
        _problem(response, 401)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    expired, _ = _key(tls_stack, expires_at=time.time() - 1)
    revoked, revoked_id = _key(tls_stack)
    admin_only, _ = _key(tls_stack, scopes=("admin",))
    _revoke(tls_stack, revoked_id)
    time.sleep(1.0)  # every key change is seen within a second
    for token in (expired, revoked):
        with _client(tls_stack, certs, token) as client:
            _problem(client.post(SCORE, json=_txn("gone")), 401)
    with _client(tls_stack, certs, admin_only) as client:
        response = client.post(SCORE, json=_txn("scope"))
        assert _problem(response, 403)["type"].endswith("insufficient-scope")
        assert 'scope="score"' in response.headers["www-authenticate"]


def test_a_key_over_its_rate_is_429_with_retry_after(tls_stack, certs):
    token, _ = _key(tls_stack, limits={"requests_per_s": 1.0, "request_burst": 2.0})
    time.sleep(1.0)
    with _client(tls_stack, certs, token) as client:
        statuses = [client.post(SCORE, json=_txn(f"rate{i}")) for i in range(4)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    limited = statuses[-1]
    assert _problem(limited, 429)["type"].endswith("rate-limited")
    assert int(limited.headers["retry-after"]) >= 1
    # A batch counts its transactions.
    token, _ = _key(tls_stack, limits={"transactions_per_s": 1.0, "transaction_burst": 3.0})
    time.sleep(1.0)
    with _client(tls_stack, certs, token) as client:
        assert (
            client.post(
                SCORE + "-batch", json={"transactions": [_txn("b1"), _txn("b2")]}
            ).status_code
            == 200
        )
        _problem(
            client.post(SCORE + "-batch", json={"transactions": [_txn("b3"), _txn("b4")]}), 429
        )


def test_revocation_reaches_a_second_gateway_process_within_a_second(tls_stack, certs, tmp_path):
    spec = tls_stack.services["gateway"].spec
    port = free_port()
    env = dict(os.environ, **spec.env)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(tmp_path / "gateway2.log", "wb") as log:  # the child keeps its own descriptor
        second = subprocess.Popen(
            [sys.executable, "-m", *spec.module_args("127.0.0.1", port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(verify=certs[0], timeout=2.0) as probe:
            for _ in range(300):
                try:
                    if probe.get(url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        token, key_id = _key(tls_stack)
        time.sleep(1.0)
        with _client(tls_stack, certs, token, url) as client:
            assert client.post(SCORE, json=_txn("before")).status_code == 200
            _revoke(tls_stack, key_id)
            revoked_at = time.monotonic()
            while client.post(SCORE, json=_txn("after")).status_code != 401:
                assert time.monotonic() - revoked_at < 1.0, "revocation not effective within 1 s"
                time.sleep(0.05)
    finally:
        second.terminate()
        second.wait(timeout=10)


def test_the_internal_hops_require_the_token(tls_stack):
    for name, path in (("encoder", "/v1/encode"), ("predictor", "/v2/models/fraud_detector")):
        svc = tls_stack.services[name]
        with httpx.Client(base_url=svc.url, timeout=5.0) as client:
            method = client.post if name == "encoder" else client.get
            response = method(path, **({"json": {}} if name == "encoder" else {}))
            assert response.status_code == 401, response.text
            wrong = method(
                path,
                headers={"x-vigil-internal-token": "nope"},
                **({"json": {}} if name == "encoder" else {}),
            )
            assert wrong.status_code == 401
            right = method(
                path,
                headers={"x-vigil-internal-token": tls_stack.secrets["internal_token"]},
                **({"json": {}} if name == "encoder" else {}),
            )
            assert right.status_code != 401
            assert (
                client.get("/readyz" if name == "encoder" else "/v2/health/ready").status_code
                == 200
            )


def test_a_replayed_past_transaction_is_older_than_its_features(tls_stack, certs, feature_env):
    """The stack as deployed (default settings, today's store): a transaction of the world's
    last days, sent with its own timestamp, happened hours before its entities' newest rows, so
    it is uncertain with TRANSACTION_BEFORE_FEATURES, not scored; the same sent as of now is
    scored."""
    import pandas as pd

    from vigil.replay import transaction_body

    raw = pd.read_parquet(feature_env.raw_path)
    end = raw["event_timestamp"].max()
    # Two days before the world's end: within the horizon, long before its merchant's newest row.
    past = raw[(raw["event_timestamp"] < end - pd.Timedelta(days=2)) & raw["device_id"].isna()]
    row = past.iloc[-1]
    body = transaction_body(row) | {"transaction_id": f"past-{time.time_ns()}"}
    with _client(tls_stack, certs, tls_stack.api_key) as client:
        answer = client.post("/v1/transactions/score", json=body).json()
        assert answer["label"] == "uncertain" and answer["degraded"] is False, answer
        assert answer["reasons"][0]["code"] == "TRANSACTION_BEFORE_FEATURES"
        assert answer["score"] is None
        now = body | {"transaction_id": f"now-{time.time_ns()}", "timestamp": _now_iso()}
        assert client.post("/v1/transactions/score", json=now).json()["score"] is not None


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


# --- in process: admission, deadlines, the lane ----------------------------------------------


async def test_beyond_the_in_flight_bound_a_request_is_answered_503_at_once(redis_url: str) -> None:
    encoder = EncoderStandIn(delay_s=0.1)
    async with gateway(redis_url, encoder, max_in_flight=1) as stack:
        await stack.wait_for_metadata()
        first = asyncio.ensure_future(stack.score(txn()))
        await asyncio.sleep(0.03)
        started = time.perf_counter()
        shed = await stack.score(txn())
        assert time.perf_counter() - started < 0.05
        body = assert_problem(shed, 503)
        assert body["type"].endswith("overloaded") and shed.headers["retry-after"] == "1"
        batch = await stack.client.post(SCORE + "-batch", json={"transactions": [txn()]})
        assert_problem(batch, 503)  # single and batch alike
        assert (await first).status_code == 200


async def test_the_callers_deadline_bounds_the_budget(redis_url: str) -> None:
    encoder = EncoderStandIn(delay_s=0.12)
    async with gateway(redis_url, encoder) as stack:
        await stack.wait_for_metadata()
        started = time.perf_counter()
        answer = await stack.score(txn(), headers={"x-request-timeout-ms": "60"})
        assert time.perf_counter() - started < 0.11
        assert answer.json()["reasons"][0]["code"] == "TIMEOUT"
        assert_problem(await stack.score(txn(), headers={"x-request-timeout-ms": "soon"}), 422)


async def test_the_lane_and_fastapi_refuse_alike(redis_url: str) -> None:
    async with gateway(redis_url) as stack:
        await stack.wait_for_metadata()
        for headers in ({"authorization": ""}, {"authorization": "Bearer vk_x_y"}):
            lane = await stack.score(txn(), headers=headers)
            deferred = await stack.client.post(
                SCORE + "?rescore=false", json=txn(), headers=headers
            )
            assert lane.status_code == deferred.status_code == 401
            assert lane.headers["www-authenticate"] == deferred.headers["www-authenticate"]
        admin = await provision_key(stack.app, redis_url, scopes=("admin",))
        headers = {"authorization": f"Bearer {admin}"}
        assert (await stack.score(txn(), headers=headers)).status_code == 403
        assert (
            await stack.client.post(SCORE + "?rescore=false", json=txn(), headers=headers)
        ).status_code == 403


def test_no_card_device_or_ip_in_any_log(tls_stack, certs):
    marker = f"{time.time_ns()}"
    body = dict(
        _txn("privacy"),
        card_id=f"card-secret-{marker}",
        device_id=f"dev-secret-{marker}",
        ip_address="198.51.100.77",
    )
    with _client(tls_stack, certs, tls_stack.api_key) as client:
        assert client.post(SCORE, json=body).status_code == 200
        bad = dict(body, amount=-1)  # a refusal is logged too
        assert client.post(SCORE, json=bad).status_code == 422
        assert client.post(SCORE + "-batch", json={"transactions": [body, bad]}).status_code == 200
    time.sleep(0.3)
    for name, svc in tls_stack.services.items():
        text = Path(svc.log_path).read_text(errors="replace")
        for secret in (body["card_id"], body["device_id"], body["ip_address"]):
            assert secret not in text, (name, secret)


async def test_a_table_lost_from_redis_keeps_the_last_one_read(redis_url: str) -> None:
    """The version counter only grows: when it is gone, Redis lost its data (a restart without
    persistence); the keys read before stay valid rather than every client being locked out."""
    async with gateway(redis_url) as stack:
        await stack.wait_for_metadata()
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.delete("vigil:{apikeys}", "vigil:{apikeys}:version")
        finally:
            await client.aclose()
        await stack.app.state.services.authenticate.ring.refresh()
        assert (await stack.score(txn())).status_code == 200


@pytest.mark.parametrize(
    "settings_class",
    [
        "vigil_encoder.settings:EncoderSettings",
        "vigil_predictor.settings:PredictorSettings",
        "vigil_gateway.settings:GatewaySettings",
    ],
)
def test_a_service_refuses_the_templates_placeholder_or_a_short_internal_token(settings_class):
    module, name = settings_class.split(":")
    settings = getattr(importlib.import_module(module), name)
    with pytest.raises(ValueError, match="placeholder"):
        settings(internal_token="REPLACE-ME-with-a-random-token")
    with pytest.raises(ValueError, match="shorter than 16"):
        settings(internal_token="secret")
    token = secrets.token_urlsafe(24)
    assert settings(internal_token=token).internal_token.get_secret_value() == token
    assert settings(internal_token="").internal_token.get_secret_value() == ""  # check off
