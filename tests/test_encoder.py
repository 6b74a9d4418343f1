"""The encoder against the real test world: parity with Feast's SDK, freshness, API and errors.

The app is the real one (``create_app`` with explicit settings, lifespan run), called in-process
through ``httpx.ASGITransport``; Redis is the session's private server materialized by Feast.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pytest

from conftest import BUSY_SCRIPT
from vigil import feast_repo
from vigil_contracts.encoding import BINARY_HEADER_LENGTH, BINARY_MEDIA_TYPE, decode_binary
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_contracts.request_features import NO_DEVICE_ID, OUTPUT_FEATURES
from vigil_encoder.app import create_app
from vigil_encoder.settings import EncoderSettings

SERVICE = "fraud_model_v1"
CHANNELS = ["pos", "ecom", "mobile", "atm"]  # "atm" is unknown to the transform on purpose


def encoder_settings(feature_env, **overrides) -> EncoderSettings:
    values = {
        "redis_url": feature_env.redis.url,
        "spec_path": feast_repo.spec_path(feature_env.repo),
    }
    values.update(overrides)
    return EncoderSettings(**values)


@pytest.fixture(scope="module")
async def client(feature_env):
    app = create_app(encoder_settings(feature_env))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://encoder") as c:
            yield c


@pytest.fixture(scope="module")
def store(feature_env):
    return feast_repo.open_store(feature_env.repo)


@pytest.fixture(scope="module")
def spec(feature_env):
    return feast_repo.load_serving_spec(feature_env.repo).feature_services[SERVICE]


def request_fields(rng: random.Random, now: float) -> dict:
    epoch = now - rng.uniform(0, 3 * 86400)
    device_present = rng.random() < 0.6
    return {
        "amount": round(rng.lognormvariate(3.5, 1.2), 2),
        "txn_epoch": epoch,
        "txn_hour": rng.randrange(24),
        "channel": rng.choice(CHANNELS),
        "country": rng.choice(["DE", "FR", "US", "CH", "GB"]),
        "device_present": int(device_present),
    }


def parity_rows(feature_env, n: int = 300, seed: int = 5) -> list[dict]:
    """Rows as the gateway would send them: mostly known entities, plus every unknown kind."""
    raw = pd.read_parquet(
        feature_env.raw_path, columns=["card_id", "merchant_id", "device_id", "country", "currency"]
    )
    rng = random.Random(seed)
    now = time.time()
    picks = raw.sample(n=n, random_state=seed).to_dict("records")
    rows = []
    for i, pick in enumerate(picks):
        device = pick["device_id"]
        request = request_fields(rng, now)
        request["country"] = pick["country"] if rng.random() < 0.7 else request["country"]
        kind = i % 10
        if kind == 1:
            pick["card_id"] = f"c_unknown_{i}"
        elif kind == 2:
            device = f"d_unknown_{i}"
        elif kind == 3:
            device = None
        elif kind == 4:
            pick["merchant_id"] = f"m_unknown_{i}"
        if device is None:
            device = NO_DEVICE_ID
            request["device_present"] = 0
        else:
            request["device_present"] = 1
        rows.append(
            {
                "entities": {
                    "card_id": pick["card_id"],
                    "merchant_id": pick["merchant_id"],
                    "device_id": device,
                    "currency": pick["currency"],
                },
                "request": request,
            }
        )
    # Repeats within one batch exercise the per-batch dedupe of identical keys.
    rows += [json.loads(json.dumps(r)) for r in rows[:20]]
    return rows


def feast_vectors(store, spec, rows: list[dict]) -> list[list]:
    """Feast's SDK answer for the same rows, in the spec's order (its own order differs)."""
    entity_rows = [{**r["entities"], **r["request"]} for r in rows]
    result = store.get_online_features(
        features=store.get_feature_service(SERVICE),
        entity_rows=entity_rows,
        full_feature_names=False,
    ).to_dict()
    return [[result[f.feature][i] for f in spec.features] for i in range(len(rows))]


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


async def encode(
    client: httpx.AsyncClient, rows: list[dict], service: str = SERVICE, **kwargs
) -> httpx.Response:
    return await client.post(
        "/v1/encode", json={"feature_service": service, "rows": rows}, **kwargs
    )


# --- parity -----------------------------------------------------------------------------------


async def test_vectors_equal_feast_get_online_features(client, store, spec, feature_env):
    rows = parity_rows(feature_env)
    response = await encode(client, rows)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["feature_names"] == spec.feature_names
    assert body["feature_contract"] == spec.feature_contract
    assert len(body["rows"]) == len(rows)
    expected = feast_vectors(store, spec, rows)

    present = missing = stale = 0
    for i, (got, want) in enumerate(zip(body["rows"], expected, strict=True)):
        assert len(got["values"]) == len(spec.features)
        for j, ref in enumerate(spec.features):
            value, theirs = got["values"][j], want[j]
            where = f"row {i} {ref.name}: encoder {value!r}, feast {theirs!r}"
            if got["stale"][j]:
                # Feast serves expired rows (no TTL online); the encoder may not. See the TTL test.
                stale += 1
                continue
            assert got["missing"][j] is (value is None), where
            if is_missing(theirs):
                assert value is None, where
                assert got["age_seconds"][j] is None, where
                missing += 1
            else:
                assert value is not None and isinstance(value, float), where
                assert math.isclose(value, float(theirs), rel_tol=1e-9, abs_tol=1e-12), where
                age = got["age_seconds"][j]
                if ref.view.endswith("_windows"):  # finished from the entity's stored row
                    assert age is not None and age >= 0, where
                elif ref.kind == "on_demand":
                    assert age == 0.0, where
                else:
                    assert age is not None and 0 <= age <= spec.views[ref.view].ttl_seconds, where
                present += 1
    # The sample really covers both sides, and expiry is the rare exception, not the rule.
    assert present > 5000 and missing > 300
    assert stale < 10


async def test_unknown_entities_are_missing_and_transform_sees_none(client, spec):
    now = time.time()
    row = {
        "entities": {
            "card_id": "c_never_seen",
            "merchant_id": "m_never_seen",
            "device_id": "d_never_seen",
            "currency": "EUR",
        },
        "request": {
            "amount": 50.0,
            "txn_epoch": now,
            "txn_hour": 2,
            "channel": "ecom",
            "country": "DE",
            "device_present": 1,
        },
    }
    body = (await encode(client, [row])).json()
    got = dict(zip(body["feature_names"], body["rows"][0]["values"], strict=True))
    for ref in spec.features:
        if ref.kind == "stored":
            assert got[ref.name] is None
    assert got["request_features__txn_amount"] == 50.0
    assert got["request_features__is_night"] == 1.0
    assert got["request_features__is_new_device"] == 1.0
    assert got["request_features__amount_to_card_avg_30d"] is None
    assert got["request_features__country_mismatch"] is None
    assert not any(body["rows"][0]["stale"])


# --- freshness --------------------------------------------------------------------------------


def _card_stats_row(card_id: str, stamp: datetime) -> dict:
    """A card_stats row: its recent events (10 min, 2 h and 3 days before ``stamp``)."""
    us = int(stamp.timestamp() * 1_000_000)
    return {
        "card_id": card_id,
        "event_timestamp": stamp,
        "card_event_us": [us - 3 * 86_400_000_000, us - 7_200_000_000, us - 600_000_000],
        "card_event_amounts": [99.0, 21.0, 40.0],
        "card_event_merchants": ["m1", "m2", "m2"],
        "card_event_devices": ["d1", "", "d1"],
        "card_event_countries": ["FR", "FR", "DE"],
        "card_last_txn_epoch": stamp.timestamp() - 600.0,
        "card_first_seen_epoch": stamp.timestamp() - 3 * 86_400.0,
    }


async def test_rows_older_than_ttl_are_missing_and_stale(client, store, spec):
    now = datetime.now(UTC)
    old, fresh = "c_ttl_expired", "c_ttl_fresh"
    frame = pd.DataFrame(
        [
            _card_stats_row(old, now - timedelta(days=40)),
            _card_stats_row(fresh, now - timedelta(hours=2)),
        ]
    )
    store.write_to_online_store("card_stats", frame)

    def row(card):
        return {
            "entities": {
                "card_id": card,
                "merchant_id": "m_none",
                "device_id": NO_DEVICE_ID,
                "currency": "EUR",
            },
            "request": {
                "amount": 80.0,
                "txn_epoch": time.time(),
                "txn_hour": 14,
                "channel": "pos",
                "country": "DE",
                "device_present": 0,
            },
        }

    # Feast itself still serves the expired row: that is what the encoder must not do.
    theirs = feast_vectors(store, spec, [row(old)])[0]
    names = [f.name for f in spec.features]
    # (its events are all over 30 days old now, but its last transaction is still read)
    assert theirs[names.index("request_features__seconds_since_card_last_txn")] > 40 * 86400

    body = (await encode(client, [row(old), row(fresh)])).json()
    expired, current = body["rows"]
    # The card's windows are finished from its stored row: as stale as that row.
    card_positions = [j for j, f in enumerate(spec.features) if f.view == "card_windows"]
    assert len(card_positions) == 10
    for j in card_positions:
        assert expired["values"][j] is None
        assert expired["missing"][j] is True
        assert expired["stale"][j] is True
        assert expired["age_seconds"][j] is None

    got = dict(zip(names, expired["values"], strict=True))
    # On-demand features fed by the expired card row see None, as training's PIT join did.
    for name in (
        "amount_to_card_avg_30d",
        "amount_zscore_card_30d",
        "seconds_since_card_last_txn",
        "country_mismatch",
    ):
        assert got[f"request_features__{name}"] is None
    assert got["request_features__txn_amount"] == 80.0
    od = [j for j, f in enumerate(spec.features) if f.view == "request_features"]
    assert not any(expired["stale"][j] for j in od)

    fresh_got = dict(zip(names, current["values"], strict=True))
    assert fresh_got["card_windows__card_txn_count_7d"] == 3.0
    assert fresh_got["card_windows__card_txn_count_1h"] == 0.0  # the last one was 2 h 10 min ago
    assert fresh_got["request_features__amount_to_card_avg_30d"] == pytest.approx(1.5)
    assert fresh_got["request_features__country_mismatch"] == 1.0  # home FR (2 of 3), here DE
    for j in card_positions:
        assert current["stale"][j] is False
        # Finished at request time from the card's row: as old as that row (stamped 2 h ago).
        assert current["age_seconds"][j] == pytest.approx(2 * 3600, abs=120)
    assert len(OUTPUT_FEATURES) == len(od)


async def test_the_binary_answer_carries_exactly_the_json_answer(client, store, feature_env):
    # One expired card row among the parity rows, so that stale flags are set too.
    store.write_to_online_store(
        "card_stats",
        pd.DataFrame([_card_stats_row("c_bin_expired", datetime.now(UTC) - timedelta(days=40))]),
    )
    rows = parity_rows(feature_env, n=200, seed=11)
    rows[0]["entities"]["card_id"] = "c_bin_expired"
    as_json = (await encode(client, rows)).json()
    response = await encode(
        client, rows, headers={"accept": f"{BINARY_MEDIA_TYPE}, application/json"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == BINARY_MEDIA_TYPE
    binary = decode_binary(response.content, response.headers.get(BINARY_HEADER_LENGTH), len(rows))
    assert binary.feature_names == as_json["feature_names"]
    assert binary.feature_contract == as_json["feature_contract"]
    assert binary.feature_service == as_json["feature_service"]
    width = binary.width
    for i, row in enumerate(as_json["rows"]):
        part = slice(i * width, (i + 1) * width)
        assert [None if v != v else v for v in binary.values[part]] == row["values"], i
        assert [bool(b) for b in binary.missing[part]] == row["missing"], i
        assert [bool(b) for b in binary.stale[part]] == row["stale"], i
        for got, want in zip(binary.age_seconds[part], row["age_seconds"], strict=True):
            if want is None:
                assert got != got
            else:  # a second request: the ages moved on a little
                assert got == pytest.approx(want, abs=5.0)
    assert any(binary.stale) and any(binary.missing)
    # Asked for JSON (or anything), and for errors, the answer stays JSON.
    assert (
        (await encode(client, rows[:1], headers={"accept": "*/*"}))
        .headers["content-type"]
        .startswith("application/json")
    )
    refused = await encode(client, rows[:1], service="nope", headers={"accept": BINARY_MEDIA_TYPE})
    assert refused.status_code == 404
    assert refused.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)


# --- API --------------------------------------------------------------------------------------


async def test_feature_services(client, spec):
    listing = (await client.get("/v1/feature-services")).json()
    assert listing == {
        "feature_services": [
            {
                "name": SERVICE,
                "feature_names": spec.feature_names,
                "feature_contract": spec.feature_contract,
            }
        ]
    }
    detail = (await client.get(f"/v1/feature-services/{SERVICE}")).json()
    assert detail["feature_names"] == spec.feature_names
    assert detail["join_keys"] == ["card_id", "merchant_id", "device_id", "currency"]
    assert detail["request_fields"]["amount"] == "Float64"
    assert detail["views"]["card_stats"]["ttl_seconds"] == 30 * 86400


async def test_health_ready_and_request_id(client):
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"]["ready"] is True
    echoed = await client.get("/healthz", headers={"x-request-id": "req-123.abc"})
    assert echoed.headers["x-request-id"] == "req-123.abc"
    generated = await client.get("/healthz", headers={"x-request-id": "not an id; <script>"})
    assert len(generated.headers["x-request-id"]) == 32  # a fresh uuid4 hex instead
    assert (await client.get("/healthz")).headers["x-request-id"]


async def test_one_log_line_per_request_without_payload(client, capsys):
    rows = [
        {
            "entities": {
                "card_id": "c_secret_card_77",
                "merchant_id": "m1",
                "device_id": NO_DEVICE_ID,
                "currency": "EUR",
            },
            "request": {
                "amount": 1.0,
                "txn_epoch": time.time(),
                "txn_hour": 1,
                "channel": "pos",
                "country": "DE",
                "device_present": 0,
            },
        }
    ]
    capsys.readouterr()
    await encode(client, rows, headers={"x-request-id": "log-check-1"})
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if "log-check-1" in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "/v1/encode" and line["status"] == 200 and line["rows"] == 1
    assert line["feature_service"] == SERVICE and line["latency_ms"] > 0
    assert "c_secret_card_77" not in err


def _view_reads(metrics_text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("vigil_encoder_view_reads_total{"):
            labels, value = line.rsplit(" ", 1)
            view = labels.split('view="')[1].split('"')[0]
            totals[view] = totals.get(view, 0.0) + float(value)
    return totals


async def test_identical_keys_are_read_once_per_batch(client):
    before = _view_reads((await client.get("/metrics")).text)
    rows = _valid_rows(1) * 4 + _valid_rows(2)  # c000 five times, c001 once
    body = (await encode(client, rows)).json()
    assert len(body["rows"]) == 6
    assert body["rows"][0] == body["rows"][1] == body["rows"][3]
    after = _view_reads((await client.get("/metrics")).text)
    reads = {view: after[view] - before.get(view, 0.0) for view in after}
    # Two cards, one merchant, one device (NO_DEVICE_ID), one currency: one HMGET each.
    assert reads == {"card_stats": 2.0, "merchant_stats": 1.0, "device_stats": 1.0, "fx_rates": 1.0}


async def test_metrics_expose_counters(client):
    text = (await client.get("/metrics")).text
    assert (
        'vigil_encoder_requests_total{method="POST",outcome="success",route="/v1/encode",status="200"}'
        in text
    )
    assert (
        'vigil_encoder_request_duration_seconds_bucket{le="0.001",method="POST",outcome="success",route="/v1/encode"}'
        in text
    )
    assert 'vigil_encoder_rows_encoded_total{feature_service="fraud_model_v1"}' in text
    assert 'vigil_encoder_view_reads_total{result="stale",view="card_stats"}' in text
    assert "vigil_encoder_redis_errors_total" in text  # declared even before any error
    assert "vigil_encoder_redis_duration_seconds_count" in text


# --- errors -----------------------------------------------------------------------------------


def _valid_rows(n: int) -> list[dict]:
    return [
        {
            "entities": {
                "card_id": f"c{i:03d}",
                "merchant_id": "m1",
                "device_id": NO_DEVICE_ID,
                "currency": "EUR",
            },
            "request": {
                "amount": 10.0 + i,
                "txn_epoch": time.time(),
                "txn_hour": 12,
                "channel": "ecom",
                "country": "DE",
                "device_present": 0,
            },
        }
        for i in range(n)
    ]


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["status"] == status
    assert body["type"].endswith("/" + slug)
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_unknown_feature_service_is_404(client):
    assert_problem(
        await encode(client, _valid_rows(1), service="fraud_model_v9"),
        404,
        "feature-service-not-found",
    )
    assert_problem(await client.get("/v1/feature-services/nope"), 404, "feature-service-not-found")


async def test_missing_join_key_names_the_field(client):
    rows = _valid_rows(5)
    del rows[3]["entities"]["card_id"]
    body = assert_problem(await encode(client, rows), 422, "validation-failed")
    assert [p["name"] for p in body["invalid_params"]] == ["rows.3.entities.card_id"]


@pytest.mark.parametrize("value", [None, "12.5", [1], float("nan")], ids=str)
async def test_bad_request_field_names_the_field(client, value):
    rows = _valid_rows(2)
    rows[0]["request"]["amount"] = value
    # NaN is not JSON: send it the way a sloppy client would, as a bare NaN token.
    content = json.dumps({"feature_service": SERVICE, "rows": rows})
    response = await client.post(
        "/v1/encode", content=content, headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422, "validation-failed")
    assert [p["name"] for p in body["invalid_params"]] == ["rows.0.request.amount"]


async def test_missing_request_field_names_the_field(client):
    rows = _valid_rows(3)
    del rows[2]["request"]["txn_hour"]
    body = assert_problem(await encode(client, rows), 422, "validation-failed")
    assert [p["name"] for p in body["invalid_params"]] == ["rows.2.request.txn_hour"]


async def test_integral_float_for_int_field_and_null_country_are_accepted(client):
    rows = _valid_rows(1)
    rows[0]["request"]["txn_hour"] = 13.0
    rows[0]["request"]["country"] = None
    assert (await encode(client, rows)).status_code == 200
    rows[0]["request"]["txn_hour"] = 13.5
    assert_problem(await encode(client, rows), 422, "validation-failed")


async def test_malformed_body_is_422_problem(client):
    body = assert_problem(
        await client.post("/v1/encode", json={"feature_service": SERVICE}), 422, "validation-failed"
    )
    assert [p["name"] for p in body["invalid_params"]] == ["rows"]
    body = assert_problem(await encode(client, []), 422, "validation-failed")
    assert [p["name"] for p in body["invalid_params"]] == ["rows"]
    response = await client.post(
        "/v1/encode", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation-failed")


@pytest.mark.parametrize(
    ("content", "content_type", "name", "reason"),
    [
        (
            b'{"feature_service": "fraud_model_v1", "rows": [{"entities": {}, "request": {}}, null]}',
            "application/json",
            "rows.1",
            "Input should be a valid dictionary or object to extract fields from",
        ),
        (
            b'{"feature_service": "fraud_model_v1", "rows": [{"entities": {"card_id": 5}, "request": {}}]}',
            "application/json",
            "rows.0.entities.card_id",
            "Input should be a valid string",
        ),
        (
            b'{"feature_service": "fraud_model_v1", "rows": [{"entities": {}, "request": {"amount": [1]}}]}',
            "application/json",
            "rows.0.request.amount",
            "Input should be a valid number; Input should be a valid integer; Input should be a valid string",
        ),
        (
            b'{"feature_service": 5, "rows": [{"entities": {}, "request": {}}]}',
            "application/json",
            "feature_service",
            "Input should be a valid string",
        ),
        (
            b"[1, 2]",
            "application/json",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
        ),
        (
            b'{"feature_service": "fraud_model_v1", "rows": []}',
            "text/plain",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
        ),
        (b"", "application/json", "body", "Field required"),
    ],
    ids=[
        "null-row",
        "entity-not-text",
        "field-not-scalar",
        "service-not-text",
        "not-an-object",
        "not-json-content-type",
        "empty",
    ],
)
async def test_a_body_of_the_wrong_shape_names_the_field(
    client, content, content_type, name, reason
):
    response = await client.post(
        "/v1/encode", content=content, headers={"content-type": content_type}
    )
    body = assert_problem(response, 422, "validation-failed")
    assert body["invalid_params"][0] == {"name": name, "reason": reason}
    assert body["detail"] == f"invalid: {name}"


async def test_too_many_rows_is_413(feature_env):
    app = create_app(encoder_settings(feature_env, max_rows=5))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://encoder"
        ) as c:
            assert (await encode(c, _valid_rows(5))).status_code == 200
            body = assert_problem(await encode(c, _valid_rows(6)), 413, "too-many-rows")
            assert "5" in body["detail"]


async def test_unknown_route_is_problem(client):
    assert_problem(await client.get("/v1/nothing"), 404, "not-found")


async def test_missing_spec_is_not_ready(feature_env, tmp_path):
    app = create_app(encoder_settings(feature_env, spec_path=tmp_path / "serving_spec.json"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://encoder"
        ) as c:
            body = assert_problem(await c.get("/readyz"), 503, "encoder-not-ready")
            assert body["checks"]["spec"]["ready"] is False
            assert body["checks"]["redis"]["ready"] is True
            assert_problem(await encode(c, _valid_rows(1)), 503, "encoder-not-ready")
            # A spec written after startup (``vigil apply``) is picked up by the next probe.
            (tmp_path / "serving_spec.json").write_text(
                feast_repo.spec_path(feature_env.repo).read_text()
            )
            assert (await c.get("/readyz")).status_code == 200
            assert (await encode(c, _valid_rows(1))).status_code == 200


# --- spec handling ----------------------------------------------------------------------------


async def _encode_with_spec(feature_env, spec_file, rows):
    app = create_app(encoder_settings(feature_env, spec_path=spec_file))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://encoder"
        ) as c:
            return await c.get("/readyz"), await encode(c, rows)


async def test_any_feature_order_is_honoured(feature_env, tmp_path, client):
    """A service that interleaves views and on-demand outputs gets its own order back."""
    document = json.loads(feast_repo.spec_path(feature_env.repo).read_text())
    features = document["feature_services"][SERVICE]["features"]
    random.Random(3).shuffle(features)
    spec_file = tmp_path / "serving_spec.json"
    spec_file.write_text(json.dumps(document))
    rows = parity_rows(feature_env, n=40, seed=8)

    ready, shuffled = await _encode_with_spec(feature_env, spec_file, rows)
    assert ready.status_code == 200
    reference = (await encode(client, rows)).json()
    shuffled = shuffled.json()
    assert shuffled["feature_names"] == [f["name"] for f in features]
    assert shuffled["feature_contract"] != reference["feature_contract"]
    for ours, theirs in zip(shuffled["rows"], reference["rows"], strict=True):
        for key in ("values", "missing", "stale"):
            want = dict(zip(reference["feature_names"], theirs[key], strict=True))
            assert dict(zip(shuffled["feature_names"], ours[key], strict=True)) == want


async def test_spec_the_encoder_cannot_serve_is_refused(feature_env, tmp_path):
    document = json.loads(feast_repo.spec_path(feature_env.repo).read_text())
    document["feature_services"][SERVICE]["features"].append(
        {
            "name": "card_stats__card_home_country",
            "view": "card_stats",
            "feature": "card_home_country",
            "dtype": "String",
            "kind": "stored",
        }
    )
    spec_file = tmp_path / "serving_spec.json"
    spec_file.write_text(json.dumps(document))
    ready, response = await _encode_with_spec(feature_env, spec_file, _valid_rows(1))
    body = assert_problem(ready, 503, "encoder-not-ready")
    assert "card_home_country" in body["checks"]["spec"]["detail"]
    assert_problem(response, 503, "encoder-not-ready")


async def test_a_caller_that_waits_longer_gives_the_store_round_trip_longer(client, feature_env):
    """The store's round trip has its own deadline (ENCODER_REDIS_TIMEOUT_S, 0.25 s): a batch
    that finds Redis busy for 0.45 s is answered 503. A caller that says it waits 1 s
    (x-vigil-timeout-ms, as the gateway does for a batch) gives the round trip 80 % of that:
    the same batch is answered."""
    import threading

    import redis as sync_redis

    rows = _valid_rows(50)
    busy = sync_redis.Redis.from_url(feature_env.redis.url)
    try:
        for timeout_ms, status in ((None, 503), ("1000", 200)):
            held = threading.Thread(target=busy.eval, args=(BUSY_SCRIPT, 0, 450_000))
            held.start()
            await asyncio.sleep(0.03)  # the script has started
            headers = {} if timeout_ms is None else {"x-vigil-timeout-ms": timeout_ms}
            started = time.perf_counter()
            response = await encode(client, rows, headers=headers)
            elapsed = time.perf_counter() - started
            held.join()
            assert response.status_code == status, (timeout_ms, response.text)
            if status == 503:
                assert_problem(response, 503, "feature-store-unavailable")
                assert elapsed < 0.42  # the store's own deadline, not Redis' 0.45 s
            else:
                assert len(response.json()["rows"]) == 50
    finally:
        busy.close()
