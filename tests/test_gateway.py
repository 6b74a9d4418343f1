"""The gateway's ASGI app end to end, with a real Redis as its decision store.

The encoder and the predictor are small in-process stand-ins written here: real FastAPI apps that
speak the encoder contract (``vigil_contracts.encoding``) and the Open Inference Protocol V2,
reached through ``httpx.ASGITransport``. The encoder stand-in computes the request-time features
with the shared ``request_features.transform_row``; the predictor stand-in scores with a fixed
logistic formula whose contributions are exact, so every expected label and reason is known.
Knobs make either one fail (503), hang past its timeout or report stale features. (Tests of the
gateway against the real encoder and predictor processes live with the end-to-end suite.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from conftest import BUSY_SCRIPT
from vigil.redis_server import free_port
from vigil_contracts.decision_events import DecisionEvent
from vigil_contracts.encoding import EncodeColumnsRequest, EncodeRequest
from vigil_contracts.feature_contract import feature_contract_hash
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_contracts.request_features import NO_DEVICE_ID, transform_row
from vigil_contracts.thresholds import label_for_score
from vigil_gateway import deps
from vigil_gateway.api_keys import KeyAdmin, split_token
from vigil_gateway.app import create_app
from vigil_gateway.decisions import KEY_PREFIX
from vigil_gateway.settings import GatewaySettings

MODEL = "fraud_detector"
SERVICE = "fraud_model_v1"
FEATURES = [
    "card_stats__card_txn_count_1h",
    "card_stats__card_amount_avg_30d",
    "merchant_stats__merchant_txn_count_24h",
    "device_stats__device_distinct_cards_7d",
    "request_features__txn_amount",
    "request_features__amount_to_card_avg_30d",
    "request_features__is_night",
    "request_features__is_new_device",
    "request_features__country_mismatch",
]
CONTRACT = feature_contract_hash(FEATURES)
WEIGHTS = [0.4, 0.0, 0.05, 0.6, -0.001, 0.5, 1.0, 1.4, 1.6]
BIAS = -4.0
THRESHOLDS = {
    "3": {"suspicious": 0.5, "highly_suspicious": 0.8},
    "4": {"suspicious": 0.3, "highly_suspicious": 0.45},
}
POLICY = {"max_missing_stored_fraction": 0.5, "stale_is_uncertain": True}
REDIS_DB = 7  # the session Redis's db 0 holds Feast's online store: keep out of it

# Online-store contents of the encoder stand-in (stored features and the inputs the on-demand
# transform reads).
CARDS = {
    "card_good": {
        "card_txn_count_1h": 0,
        "card_amount_avg_30d": 100.0,
        "card_amount_std_30d": 40.0,
        "card_last_txn_epoch": 1_717_000_000.0,
        "card_home_country": "DE",
    },
    "card_busy": {
        "card_txn_count_1h": 5,
        "card_amount_avg_30d": 100.0,
        "card_amount_std_30d": 40.0,
        "card_last_txn_epoch": 1_717_000_000.0,
        "card_home_country": "DE",
    },
}
MERCHANTS = {"m_good": {"merchant_txn_count_24h": 3}}
# EUR per unit (the fx_rates view): amounts are compared in EUR.
FX_RATES = {"EUR": 1.0, "USD": 0.9, "JPY": 0.006}
DEVICES = {"dev_known": {"device_distinct_cards_7d": 1, "device_first_seen_epoch": 1_704_067_200.0}}
STORED_BY_VIEW: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "card_stats": ("card_id", CARDS),
    "merchant_stats": ("merchant_id", MERCHANTS),
    "device_stats": ("device_id", DEVICES),
}

BUDGET_S = 0.4
HOP_S = 0.15
MARGIN_S = 0.25  # scheduling slack on a busy CI machine


def problem(status: int, slug: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": f"https://vigil.dev/problems/{slug}",
            "title": slug,
            "status": status,
            "detail": detail,
        },
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
    )


@dataclass
class EncoderStandIn:
    """Speaks ``POST /v1/encode`` and ``GET /readyz`` like the real encoder."""

    fail_status: int | None = None
    delay_s: float = 0.0
    stale_cards: set[str] = field(default_factory=set)
    ready: bool = True
    reads_columns: bool = True  # False: an encoder from before the columns form
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = FastAPI()
        self.app.post("/v1/encode")(self.encode_any)
        self.app.get("/readyz")(self.readyz)

    async def encode_any(self, body: dict[str, Any], request: Request) -> Any:
        """Either form; an old encoder validates every body as ``EncodeRequest`` (and FastAPI
        answers its own 422 when ``rows`` is missing)."""
        if "columns" in body and self.reads_columns:
            columns = EncodeColumnsRequest.model_validate(body)
            n = columns.columns.n_rows
            rows = [
                {
                    part: {k: v[i] for k, v in getattr(columns.columns, part).items()}
                    for part in ("entities", "request")
                }
                for i in range(n)
            ]
            parsed = EncodeRequest(feature_service=columns.feature_service, rows=rows)
            form = "columns"
        else:
            try:
                parsed = EncodeRequest.model_validate(body)
            except ValidationError as exc:
                raise RequestValidationError(
                    [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
                ) from None
            form = "rows"
        answer = await self.encode(parsed, request)
        self.calls[-1]["form"] = form
        return answer

    async def readyz(self) -> Any:
        if not self.ready or self.fail_status:
            return problem(503, "not-ready", "feature store unavailable")
        return {"ready": True}

    async def encode(self, body: EncodeRequest, request: Request) -> Any:
        call: dict[str, Any] = {
            "request_id": request.headers.get("x-request-id"),
            "timeout_ms": request.headers.get("x-vigil-timeout-ms"),
            "rows": body.rows,
        }
        self.calls.append(call)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status:
            return problem(self.fail_status, "feature-store-unavailable", "redis is down")
        if body.feature_service != SERVICE:
            return problem(404, "unknown-feature-service", body.feature_service)
        call["encoded"] = [self._row(row.entities, row.request) for row in body.rows]
        return {
            "feature_service": SERVICE,
            "feature_names": FEATURES,
            "feature_contract": CONTRACT,
            "rows": call["encoded"],
        }

    def _row(self, entities: dict[str, str], request: dict[str, Any]) -> dict[str, Any]:
        stale = entities["card_id"] in self.stale_cards
        stored: dict[str, dict[str, Any] | None] = {}
        for view, (key, table) in STORED_BY_VIEW.items():
            found = table.get(entities[key])
            stored[view] = None if found is None or (stale and view == "card_stats") else found
        inputs = dict(request)
        for view in ("card_stats", "device_stats"):
            inputs.update(stored[view] or {})
        inputs["eur_per_unit"] = FX_RATES.get(entities["currency"])  # the fx_rates view
        on_demand = transform_row(inputs)
        values, missing, stale_flags, ages = [], [], [], []
        for name in FEATURES:
            view, feature = name.split("__")
            if view == "request_features":
                value, age = on_demand[feature], 0.0
            else:
                value = (stored[view] or {}).get(feature)
                age = 60.0
            values.append(None if value is None else float(value))
            missing.append(value is None)
            stale_flags.append(stale and view == "card_stats")
            ages.append(None if value is None else age)
        return {"values": values, "missing": missing, "stale": stale_flags, "age_seconds": ages}


HEADER_LENGTH = "Inference-Header-Content-Length"


def fp32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


@dataclass
class PredictorStandIn:
    """A V2 server whose model is ``sigmoid(BIAS + sum(WEIGHTS * x))`` (missing x counts 0).

    Like the real predictor it reads JSON or binary (FP32) inputs, answers each output in JSON or
    binary as asked (``answer_json`` forces JSON) and explains only the rows scoring at least
    ``contributions_min_score`` (NaN contributions for the others).
    """

    version: str = "3"
    fail_status: int | None = None
    fail_versioned_status: int | None = None  # fails only calls to /versions/{v}/infer
    metadata_down: bool = False
    delay_s: float = 0.0
    contract: str = CONTRACT
    answer_json: bool = False
    training_range: dict[str, list[float]] = field(default_factory=dict)
    # Served as every version's ``segment_thresholds``; None: not served at all (a predictor
    # or a model from before them).
    segment_thresholds: dict[str, dict[str, dict[str, float]]] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    metadata_calls: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = FastAPI()
        self.app.get("/v2/health/ready")(self.ready)
        self.app.get("/v2/models/{name}")(self.metadata)
        self.app.get("/v2/models/{name}/versions/{version}")(self.metadata)
        self.app.post("/v2/models/{name}/infer")(self.infer)
        self.app.post("/v2/models/{name}/versions/{version}/infer")(self.infer)

    async def ready(self) -> Any:
        return problem(503, "not-ready", "down") if self.metadata_down else {"ready": True}

    async def metadata(self, name: str, version: str | None = None) -> Any:
        self.metadata_calls.append(version)
        if self.metadata_down or self.fail_status:
            return problem(503, "model-not-ready", "down")
        if name != MODEL:
            return problem(404, "model-not-found", name)
        version = version or self.version
        return {
            "name": name,
            "versions": sorted(THRESHOLDS),
            "platform": "xgboost",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, len(FEATURES)]}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}],
            "parameters": {
                "version": version,
                "feature_service": SERVICE,
                "feature_names": FEATURES,
                "feature_contract": CONTRACT,
                "thresholds": THRESHOLDS[version],
                "serving_policy": POLICY,
                "training_range": self.training_range,
                **(
                    {}
                    if self.segment_thresholds is None
                    else {"segment_thresholds": self.segment_thresholds}
                ),
            },
        }

    async def infer(self, name: str, request: Request, version: str | None = None) -> Any:
        content = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        body = json.loads(content if header_length is None else content[: int(header_length)])
        tensor = body["inputs"][0]
        n, width = tensor["shape"]
        if header_length is None:
            data = tensor["data"]
        else:
            raw = content[int(header_length) :]
            assert tensor["parameters"]["binary_data_size"] == len(raw) == n * width * 4
            data = [None if math.isnan(v) else v for v in struct.unpack(f"<{n * width}f", raw)]
        self.calls.append(
            {
                "request_id": request.headers.get("x-request-id"),
                "body": body,
                "data": data,
                "version": version,
            }
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status or (version and self.fail_versioned_status):
            return problem(
                self.fail_status or self.fail_versioned_status, "model-not-ready", "down"
            )
        if body["parameters"]["feature_contract"] != self.contract:
            return problem(400, "feature-contract-mismatch", "wrong order")
        assert width == len(FEATURES) and tensor["datatype"] == "FP32"
        min_score = body["parameters"].get("contributions_min_score")
        values: dict[str, list[float]] = {"score": [], "contributions": []}
        for i in range(n):
            row = data[i * width : (i + 1) * width]
            contrib = [w * (x if x is not None else 0.0) for w, x in zip(WEIGHTS, row, strict=True)]
            score = fp32(1.0 / (1.0 + math.exp(-(BIAS + sum(contrib)))))
            values["score"].append(score)
            if min_score is not None and score < min_score:
                values["contributions"].extend([math.nan] * (width + 1))
            else:
                values["contributions"].extend(contrib + [BIAS])
        shapes = {"score": [n], "contributions": [n, width + 1]}
        outputs, chunks = [], []
        for output in body.get("outputs") or [{"name": "score"}]:
            out = {"name": output["name"], "datatype": "FP32", "shape": shapes[output["name"]]}
            flat = values[output["name"]]
            if output.get("parameters", {}).get("binary_data") and not self.answer_json:
                chunks.append(struct.pack(f"<{len(flat)}f", *flat))
                out["parameters"] = {"binary_data_size": len(chunks[-1])}
            else:
                out["data"] = [None if math.isnan(v) else v for v in flat]
            outputs.append(out)
        header = json.dumps(
            {
                "model_name": name,
                "model_version": version or self.version,
                "id": body.get("id"),
                "outputs": outputs,
            }
        ).encode()
        if not chunks:
            return Response(header, media_type="application/json")
        return Response(
            header + b"".join(chunks),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(header))},
        )


def expected_score(x: dict[str, float]) -> float:
    return 1.0 / (
        1.0
        + math.exp(-(BIAS + sum(w * x.get(f, 0.0) for f, w in zip(FEATURES, WEIGHTS, strict=True))))
    )


def txn(**overrides: Any) -> dict[str, Any]:
    """A legitimate-looking transaction with a fresh id."""
    body = {
        "transaction_id": f"tx-{uuid.uuid4().hex[:16]}",
        "card_id": "card_good",
        "merchant_id": "m_good",
        "amount": 50.0,
        "currency": "EUR",
        "timestamp": "2024-06-01T14:05:00+02:00",
        "channel": "ecom",
        "device_id": "dev_known",
        "country": "DE",
        "ip_address": "203.0.113.7",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def fraud_txn(**overrides: Any) -> dict[str, Any]:
    """8x the card's average, 5 txns in the last hour, a new device, abroad, at night."""
    return txn(
        **{
            "card_id": "card_busy",
            "amount": 800.0,
            "country": "FR",
            "device_id": "dev_new",
            "timestamp": "2024-06-01T03:10:00+02:00",
            **overrides,
        }
    )


def suspicious_txn(**overrides: Any) -> dict[str, Any]:
    return txn(**{"amount": 450.0, "country": "FR", **overrides})


@dataclass
class Stack:
    client: httpx.AsyncClient
    app: FastAPI
    encoder: EncoderStandIn
    predictor: PredictorStandIn
    settings: GatewaySettings

    async def score(self, body: Any, **kw: Any) -> httpx.Response:
        return await self.client.post("/v1/transactions/score", json=body, **kw)

    async def settled(self) -> None:
        """Wait for the decisions written behind the answers already given."""
        await self.app.state.services.store.drain()

    async def wait_for_metadata(self, timeout: float = 3.0) -> None:
        services = self.app.state.services
        deadline = time.monotonic() + timeout
        while services.catalog.current is None:
            assert time.monotonic() < deadline, "model metadata never loaded"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def gateway(
    redis_url: str,
    encoder: EncoderStandIn | None = None,
    predictor: PredictorStandIn | None = None,
    *,
    wire_encoder: bool = True,
    **settings_kw: Any,
) -> AsyncIterator[Stack]:
    encoder = encoder or EncoderStandIn()
    predictor = predictor or PredictorStandIn()
    settings = GatewaySettings(
        **{
            "environment": "test",
            "redis_url": redis_url,
            "encoder_url": f"http://127.0.0.1:{free_port()}",  # overridden by the transport when wired
            "predictor_url": "http://predictor.test",
            "encoder_timeout_s": HOP_S,
            "predictor_timeout_s": HOP_S,
            "total_budget_s": BUDGET_S,
            "batch_hop_timeout_s": 0.5,
            "batch_total_budget_s": 1.0,
            # The stand-ins' transactions are from 2024 and their rows a minute old: no scoring
            # horizon and no check of the features' lead here (each tested on its own).
            "max_transaction_age_s": 0,
            "max_features_lead_s": 0,
            "max_batch": 20,
            **settings_kw,
        }
    )
    app = create_app(
        settings,
        encoder_transport=httpx.ASGITransport(encoder.app) if wire_encoder else None,
        predictor_transport=httpx.ASGITransport(predictor.app),
    )
    async with app.router.lifespan_context(app):
        headers = {}
        if settings.auth_enabled:  # the client holds a key with the `score` scope, as callers do
            headers["authorization"] = f"Bearer {await provision_key(app, redis_url)}"
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway.test", headers=headers
        ) as client:
            yield Stack(
                client=client, app=app, encoder=encoder, predictor=predictor, settings=settings
            )


def real_predictor_app(
    tmp_path: Path, *, with_missing: bool = True, **metadata: Any
) -> tuple[Any, FastAPI]:
    """(booster, the real predictor app serving it): a tiny booster trained here on FEATURES,
    written as version 1 of MODEL with ``metadata`` (thresholds, segment_thresholds, ...) beside
    the feature service, its features and POLICY; ``with_missing``: a tenth of its training
    values missing."""
    np = pytest.importorskip("numpy")
    xgb = pytest.importorskip("xgboost")
    from vigil.artifacts import write_artifact
    from vigil_predictor.app import create_app as create_predictor
    from vigil_predictor.settings import PredictorSettings

    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, len(FEATURES))).astype(np.float32)
    y = (x[:, 5] + x[:, 7] + x[:, 8] + rng.normal(scale=0.3, size=600) > 1.0).astype(int)
    if with_missing:
        x[rng.random(x.shape) < 0.1] = np.nan
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": 5},
        xgb.DMatrix(x, label=y, missing=np.nan, feature_names=FEATURES),
        num_boost_round=15,
    )
    write_artifact(
        tmp_path / MODEL / "1",
        booster,
        {
            "name": MODEL,
            "version": "1",
            "feature_service": SERVICE,
            "feature_names": FEATURES,
            **metadata,
            "serving_policy": POLICY,
        },
        "# test model\n",
    )
    return booster, create_predictor(PredictorSettings(models_dir=tmp_path))


@asynccontextmanager
async def on_real_predictor(
    redis_url: str, encoder_app: Any, predictor_app: FastAPI
) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding a `score` key of a gateway on the real predictor app (and an encoder
    app), both started, once the gateway says it is ready. No scoring horizon nor features'
    lead: the test transactions are from 2024."""
    settings = GatewaySettings(
        environment="test",
        redis_url=redis_url,
        predictor_url="http://p.test",
        encoder_url="http://e.test",
        max_transaction_age_s=0,
        max_features_lead_s=0,
    )
    app = create_app(
        settings,
        encoder_transport=httpx.ASGITransport(encoder_app),
        predictor_transport=httpx.ASGITransport(predictor_app),
    )
    async with (
        predictor_app.router.lifespan_context(predictor_app),
        app.router.lifespan_context(app),
    ):
        key = await provision_key(app, redis_url)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://g",
            headers={"authorization": f"Bearer {key}"},
        ) as client:
            ready = await client.get("/readyz")
            for _ in range(100):
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.02)
                ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            yield client


async def provision_key(
    app: FastAPI, redis_url: str, scopes: tuple[str, ...] = ("score",), **create_kw: Any
) -> str:
    """A new API key in the gateway's Redis, known to the running app at once (its key table
    is read again rather than at its next refresh)."""
    settings = app.state.settings
    client = aioredis.Redis.from_url(redis_url)
    try:
        token, _ = await KeyAdmin(client, settings.auth_secret.get_secret_value()).create(
            "tests", scopes, **create_kw
        )
    finally:
        await client.aclose()
    ring = app.state.services.authenticate.ring
    if ring is not None:
        await ring.refresh()
    return token


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"


@pytest.fixture
async def stack(redis_url) -> AsyncIterator[Stack]:
    async with gateway(redis_url) as s:
        await s.wait_for_metadata()
        yield s


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    assert "Traceback" not in response.text
    return body


def codes(answer: dict[str, Any]) -> list[str]:
    return [r["code"] for r in answer["reasons"]]


# --- happy path ------------------------------------------------------------------------------


async def test_transactions_go_to_the_encoder_as_columns(stack: Stack) -> None:
    batch = [txn(), fraud_txn(device_id=None, country=None), suspicious_txn()]
    response = await stack.client.post("/v1/transactions/score-batch", json={"transactions": batch})
    assert response.status_code == 200, response.text
    [call] = stack.encoder.calls
    assert call["form"] == "columns"
    assert [row.entities for row in call["rows"]] == [
        {
            "card_id": "card_good",
            "merchant_id": "m_good",
            "device_id": "dev_known",
            "currency": "EUR",
        },
        {
            "card_id": "card_busy",
            "merchant_id": "m_good",
            "device_id": NO_DEVICE_ID,
            "currency": "EUR",
        },
        {
            "card_id": "card_good",
            "merchant_id": "m_good",
            "device_id": "dev_known",
            "currency": "EUR",
        },
    ]
    assert [row.request["country"] for row in call["rows"]] == ["DE", "", "FR"]
    assert [r["result"]["label"] for r in response.json()["results"]] == [
        "not_fraud",
        "highly_suspicious",
        "suspicious",
    ]


async def test_an_encoder_without_the_columns_form_is_sent_rows(redis_url) -> None:
    old = EncoderStandIn(reads_columns=False)
    async with gateway(redis_url, encoder=old) as stack:
        await stack.wait_for_metadata()
        first = await stack.client.post(
            "/v1/transactions/score-batch", json={"transactions": [txn(), fraud_txn()]}
        )
        second = await stack.score(fraud_txn())
    assert first.status_code == second.status_code == 200
    # Refused as columns, sent again as rows; the next request goes as rows straight away.
    assert [c["form"] for c in old.calls] == ["rows", "rows"] and len(old.calls[0]["rows"]) == 2
    assert [r["result"]["label"] for r in first.json()["results"]] == [
        "not_fraud",
        "highly_suspicious",
    ]
    assert second.json()["label"] == "highly_suspicious" and not second.json()["degraded"]


async def test_scores_a_legitimate_transaction(stack: Stack) -> None:
    body = txn()
    response = await stack.score(body)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = expected_score(
        {
            "merchant_stats__merchant_txn_count_24h": 3,
            "device_stats__device_distinct_cards_7d": 1,
            "request_features__txn_amount": 50.0,
            "request_features__amount_to_card_avg_30d": 0.5,
        }
    )
    assert answer["transaction_id"] == body["transaction_id"]
    assert answer["label"] == "not_fraud"
    assert answer["score"] == pytest.approx(expected, abs=1e-5)
    assert answer["model"] == {"name": MODEL, "version": "3"}
    assert answer["degraded"] is False and answer["cached"] is False
    # not_fraud carries "no risk signal" alone (it used to list what lowered the score too).
    assert codes(answer) == ["NO_RISK_SIGNAL"]
    # The predictor got exactly one row in the model's feature order, with the contract, as a
    # binary FP32 tensor; contributions are asked for rows at or above `suspicious` only.
    [call] = stack.predictor.calls
    assert call["body"]["parameters"] == {
        "feature_contract": CONTRACT,
        "contributions_min_score": THRESHOLDS["3"]["suspicious"],
    }
    tensor = call["body"]["inputs"][0]
    assert tensor["shape"] == [1, len(FEATURES)] and "data" not in tensor
    assert tensor["parameters"]["binary_data_size"] == 4 * len(FEATURES)
    assert call["data"] == [
        None if v is None else pytest.approx(v)
        for v in stack.encoder.calls[0]["encoded"][0]["values"]
    ]
    assert {o["name"] for o in call["body"]["outputs"]} == {"score", "contributions"}
    assert all(o["parameters"]["binary_data"] is True for o in call["body"]["outputs"])


async def test_request_fields_and_entities_follow_the_shared_mapping(stack: Stack) -> None:
    await stack.score(txn(device_id=None, country=None, timestamp="2024-06-01T23:30:00-05:00"))
    [call] = stack.encoder.calls
    row = call["rows"][0]
    assert row.entities == {
        "card_id": "card_good",
        "merchant_id": "m_good",
        "device_id": NO_DEVICE_ID,
        "currency": "EUR",
    }
    assert row.request["txn_hour"] == 23  # no country: read in the payer's own offset
    assert row.request["device_present"] == 0
    assert row.request["txn_epoch"] == pytest.approx(1717302600.0)


async def test_fraud_is_highly_suspicious_with_business_reasons(stack: Stack) -> None:
    response = await stack.score(fraud_txn())
    answer = response.json()
    assert answer["label"] == "highly_suspicious"
    assert answer["score"] > THRESHOLDS["3"]["highly_suspicious"]
    reasons = answer["reasons"]
    assert [r["code"] for r in reasons] == [
        "AMOUNT_HIGH_FOR_CARD",
        "CARD_VELOCITY_1H",
        "COUNTRY_MISMATCH",
    ]
    assert reasons[0]["text"] == "amount is 8× this card's 30-day average"
    assert reasons[0]["feature"] == "request_features__amount_to_card_avg_30d"
    assert reasons[0]["value"] == pytest.approx(8.0)
    assert reasons[0]["contribution"] == pytest.approx(4.0)
    assert reasons[1]["text"] == "5 transactions on this card in the hour before this transaction"
    assert reasons[2]["text"] == "transaction country differs from the card's home country"
    contributions = [r["contribution"] for r in reasons]
    assert contributions == sorted(contributions, reverse=True)


async def test_more_reasons_are_in_business_words(redis_url: str) -> None:
    async with gateway(redis_url, max_reasons=6) as stack:
        answer = (await stack.score(fraud_txn())).json()
    texts = {r["code"]: r["text"] for r in answer["reasons"]}
    assert texts["NEW_DEVICE"] == "first transaction from this device"
    assert texts["NIGHT_TIME"] == "night-time transaction"
    assert texts["MERCHANT_VOLUME_24H"] == (
        "3 transactions at this merchant in this transaction's UTC hour (before it) and the 24"
        " hours before"
    )
    assert len(answer["reasons"]) == 6  # six features pushed the score up


async def test_labels_follow_the_model_thresholds(stack: Stack) -> None:
    answers = [(await stack.score(b)).json() for b in (txn(), suspicious_txn(), fraud_txn())]
    assert [a["label"] for a in answers] == ["not_fraud", "suspicious", "highly_suspicious"]
    for a in answers:
        assert a["label"] == label_for_score(a["score"], THRESHOLDS["3"])


async def test_a_new_model_version_is_labelled_with_its_own_thresholds(stack: Stack) -> None:
    before = (await stack.score(suspicious_txn())).json()
    assert before["label"] == "suspicious" and before["model"]["version"] == "3"
    stack.predictor.version = "4"  # the predictor's default moved on
    after = (await stack.score(suspicious_txn())).json()
    assert after["model"]["version"] == "4"
    assert after["score"] == pytest.approx(before["score"])
    assert after["label"] == "highly_suspicious"  # v4's highly_suspicious threshold is 0.45
    assert "4" in stack.predictor.metadata_calls
    for _ in range(100):  # the default is re-read in the background
        if stack.app.state.services.catalog.current.version == "4":
            break
        await asyncio.sleep(0.01)
    assert stack.app.state.services.catalog.current.version == "4"


def gap_txn(**overrides: Any) -> dict[str, Any]:
    """Scores 0.4875: not_fraud by version 3's thresholds, highly_suspicious by version 4's."""
    return txn(**{"amount": 400.0, "country": "FR", **overrides})


async def test_only_flagged_transactions_are_explained(stack: Stack) -> None:
    items = [txn(), fraud_txn(), suspicious_txn(), txn(amount=60.0)]
    response = await stack.client.post("/v1/transactions/score-batch", json={"transactions": items})
    answers = [r["result"] for r in response.json()["results"]]
    assert [a["label"] for a in answers] == [
        "not_fraud",
        "highly_suspicious",
        "suspicious",
        "not_fraud",
    ]
    for answer in answers:
        if answer["label"] == "not_fraud":
            assert codes(answer) == ["NO_RISK_SIGNAL"]
        else:
            assert all(r["feature"] and r["contribution"] > 0 for r in answer["reasons"])
    [call] = stack.predictor.calls
    assert call["body"]["parameters"]["contributions_min_score"] == THRESHOLDS["3"]["suspicious"]


async def test_a_version_that_flags_lower_still_explains_what_it_flags(stack: Stack) -> None:
    before = (await stack.score(gap_txn())).json()
    assert before["label"] == "not_fraud" and codes(before) == ["NO_RISK_SIGNAL"]
    # The default moves to version 4 (suspicious from 0.3) while the gateway still asks with
    # version 3's threshold (0.5): the first answer leaves this 0.49 score unexplained.
    stack.predictor.version = "4"
    stack.predictor.calls.clear()
    after = (await stack.score(gap_txn())).json()
    assert after["model"]["version"] == "4" and after["label"] == "highly_suspicious"
    assert after["score"] == pytest.approx(before["score"])
    first, second = stack.predictor.calls
    assert (
        first["version"] is None and first["body"]["parameters"]["contributions_min_score"] == 0.5
    )
    # ... so the gateway asks that very version to explain it.
    assert (
        second["version"] == "4" and "contributions_min_score" not in second["body"]["parameters"]
    )
    assert [(r["code"], r["contribution"]) for r in after["reasons"]] == [
        ("AMOUNT_HIGH_FOR_CARD", 2.0),
        ("COUNTRY_MISMATCH", 1.6),
        ("DEVICE_MANY_CARDS", 0.6),
    ]


async def test_a_failed_explanation_keeps_the_score_and_label(stack: Stack) -> None:
    stack.predictor.version = "4"
    stack.predictor.fail_versioned_status = 503
    answer = (await stack.score(gap_txn())).json()
    assert answer["degraded"] is False
    assert answer["label"] == "highly_suspicious" and answer["model"]["version"] == "4"
    assert codes(answer) == ["MODEL_BASELINE"]
    assert len(stack.predictor.calls) == 2


async def test_json_answers_of_the_predictor_are_read_alike(stack: Stack) -> None:
    items = [txn(), fraud_txn(), suspicious_txn()]
    binary = (
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": items})
    ).json()
    stack.predictor.answer_json = True
    fresh = [{**item, "transaction_id": item["transaction_id"] + "-json"} for item in items]
    as_json = (
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": fresh})
    ).json()
    for a, b in zip(binary["results"], as_json["results"], strict=True):
        for key in ("label", "score", "reasons", "model", "degraded"):
            assert a["result"][key] == b["result"][key]


async def test_pinned_version_is_what_is_asked_for(redis_url: str) -> None:
    async with gateway(redis_url, model_version="4") as stack:
        answer = (await stack.score(suspicious_txn())).json()
    assert answer["model"]["version"] == "4"
    assert stack.predictor.calls[0]["version"] == "4"
    assert answer["label"] == "highly_suspicious"


# --- batch -----------------------------------------------------------------------------------


async def test_batch_keeps_order_and_isolates_a_bad_item(stack: Stack) -> None:
    items: list[Any] = [txn(), txn(currency="eur"), fraud_txn(), suspicious_txn(), "not an object"]
    response = await stack.client.post("/v1/transactions/score-batch", json={"transactions": items})
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == [200, 422, 200, 200, 422]
    assert [r["result"]["label"] for r in results if r["result"]] == [
        "not_fraud",
        "highly_suspicious",
        "suspicious",
    ]
    assert [r["result"]["transaction_id"] for r in results if r["result"]] == [
        items[0]["transaction_id"],
        items[2]["transaction_id"],
        items[3]["transaction_id"],
    ]
    bad = results[1]["error"]
    assert bad["status"] == 422
    assert [p["name"] for p in bad["invalid_params"]] == ["transactions.1.currency"]
    assert results[1]["result"] is None
    assert results[4]["error"]["invalid_params"][0]["name"] == "transactions.4"
    # One encoder call and one predictor call for all valid items.
    assert len(stack.encoder.calls) == 1 and len(stack.encoder.calls[0]["rows"]) == 3
    assert len(stack.predictor.calls) == 1
    assert stack.predictor.calls[0]["body"]["inputs"][0]["shape"] == [3, len(FEATURES)]
    assert body["request_id"] == response.headers["x-request-id"]


async def test_a_batch_of_only_bad_items_answers_each_of_them(stack: Stack) -> None:
    items: list[Any] = [txn(currency="eur"), "not an object"]
    response = await stack.client.post("/v1/transactions/score-batch", json={"transactions": items})
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [422, 422]
    assert stack.encoder.calls == [] and stack.predictor.calls == []


async def test_batch_same_as_single(stack: Stack) -> None:
    items = [fraud_txn(), txn()]
    batch = (
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": items})
    ).json()
    for item, result in zip(items, batch["results"], strict=True):
        single = (await stack.score(item)).json()
        assert single["cached"] is True  # the batch stored it
        assert single["label"] == result["result"]["label"]
        assert single["score"] == result["result"]["score"]
        assert single["reasons"] == result["result"]["reasons"]


async def test_batch_repeats_and_conflicts_inside_one_batch(stack: Stack) -> None:
    first = txn()
    conflicting = {**first, "amount": 51.0}
    response = await stack.client.post(
        "/v1/transactions/score-batch", json={"transactions": [first, dict(first), conflicting]}
    )
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 409]
    assert results[0]["result"] == results[1]["result"]
    assert results[2]["error"]["type"].endswith("transaction-id-conflict")
    assert len(stack.encoder.calls[0]["rows"]) == 1


async def test_batch_too_large_or_empty_or_malformed(stack: Stack) -> None:
    too_many = [txn() for _ in range(stack.settings.max_batch + 1)]
    body = assert_problem(
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": too_many}),
        413,
    )
    assert str(stack.settings.max_batch) in body["detail"]
    body = assert_problem(
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": []}), 422
    )
    assert [p["name"] for p in body["invalid_params"]] == ["transactions"]
    body = assert_problem(
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": {"a": 1}}),
        422,
    )
    assert [p["name"] for p in body["invalid_params"]] == ["transactions"]
    assert stack.encoder.calls == []


async def test_batch_degrades_as_a_whole_when_the_encoder_is_down(stack: Stack) -> None:
    stack.encoder.fail_status = 503
    response = await stack.client.post(
        "/v1/transactions/score-batch", json={"transactions": [txn(), fraud_txn(), txn(amount=-1)]}
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 422]
    for r in results[:2]:
        assert r["result"]["label"] == "uncertain" and r["result"]["degraded"] is True
        assert codes(r["result"]) == ["FEATURES_UNAVAILABLE"]


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"amount": -5}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": "12.50"}, "amount"),
        ({"amount": 2e9}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"currency": "eur"}, "currency"),
        ({"timestamp": "2024-06-01T14:05:00"}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1717243500}, "timestamp"),
        ({"timestamp": "2999-01-01T00:00:00Z"}, "timestamp"),
        ({"channel": "fax"}, "channel"),
        ({"card_id": None}, "card_id"),
        ({"card_id": ""}, "card_id"),
        ({"transaction_id": "has space"}, "transaction_id"),
        ({"transaction_id": "x" * 65}, "transaction_id"),
        ({"ip_address": "999.1.1.1"}, "ip_address"),
        ({"country": "Germany"}, "country"),
        ({"ammount": 5}, "ammount"),
    ],
)
async def test_malformed_transaction_is_a_422_naming_the_field(
    stack: Stack, change: dict[str, Any], field_name: str
) -> None:
    body = txn()
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    problem_body = assert_problem(await stack.score(body), 422)
    assert [p["name"] for p in problem_body["invalid_params"]] == [field_name]
    assert field_name in problem_body["detail"]
    assert problem_body["request_id"]
    assert stack.encoder.calls == []


async def test_non_json_body_is_a_422(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/transactions/score", content=b"{not json", headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["invalid_params"][0]["name"] == "body"
    body = assert_problem(await stack.client.post("/v1/transactions/score"), 422)
    assert body["invalid_params"][0]["name"] == "body"


async def test_a_body_that_is_not_declared_json_is_a_415(stack: Stack) -> None:
    for headers in (
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
    ):
        response = await stack.client.post(
            "/v1/transactions/score", content=json.dumps(txn()).encode(), headers=headers
        )
        body = assert_problem(response, 415)
        assert "application/json" in body["detail"]


async def test_an_oversized_body_is_a_413(redis_url: str) -> None:
    async with gateway(redis_url, max_body_bytes=4096) as stack:
        big = {"transactions": [txn() for _ in range(40)]}
        response = await stack.client.post("/v1/transactions/score-batch", json=big)
        body = assert_problem(response, 413)
        assert body["request_id"] == response.headers["x-request-id"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: checked while streaming
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        response = await stack.client.post(
            "/v1/transactions/score-batch",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert_problem(response, 413)
        assert stack.encoder.calls == []


async def test_rfc3339_variants_are_accepted(stack: Stack) -> None:
    for ts in (
        "2024-06-01T12:05:00Z",
        "2024-06-01t12:05:00.123456789z",
        "2024-06-01T14:05:00.5+02:00",
    ):
        response = await stack.score(txn(timestamp=ts))
        assert response.status_code == 200, (ts, response.text)


async def test_unknown_routes_and_methods_are_problems(stack: Stack) -> None:
    body = assert_problem(await stack.client.get("/v1/nope"), 404)
    assert body["instance"] == "/v1/nope"
    assert_problem(await stack.client.get("/v1/transactions/score"), 405)


async def test_unexpected_error_is_a_generic_500(stack: Stack) -> None:
    class Broken:
        async def score_one(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals")

    stack.app.dependency_overrides[deps._scoring] = lambda: Broken()
    response = await stack.score(txn(), headers={"x-request-id": "boom-1"})
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["request_id"] == "boom-1" == response.headers["x-request-id"]


# --- idempotency -----------------------------------------------------------------------------


async def test_replay_returns_the_stored_decision(stack: Stack) -> None:
    body = fraud_txn()
    first = (await stack.score(body)).json()
    await stack.settled()  # stored (behind the answer), as a later retry finds it
    # The store answers before the vectors are in (as the encoder's own Redis read makes
    # sure in production): the replay asks nothing of the predictor.
    stack.encoder.delay_s = 0.1
    # Same transaction, keys reordered and the amount as an integer: the same payload.
    replay_body = dict(reversed(list({**body, "amount": 800}.items())))
    second_response = await stack.score(replay_body, headers={"x-request-id": "retry-1"})
    second = second_response.json()
    assert first["cached"] is False and second["cached"] is True
    assert second["request_id"] == "retry-1"
    for key in ("label", "score", "reasons", "model", "degraded", "transaction_id"):
        assert second[key] == first[key]
    assert len(stack.predictor.calls) == 1


async def test_a_stored_decision_is_replayed_while_encoder_and_predictor_fail(stack: Stack) -> None:
    # The store is asked while the encoder works: a replay must not depend on the encoder's
    # answer (nor wait for a slow one).
    body = fraud_txn()
    first = (await stack.score(body)).json()
    stack.encoder.fail_status = 503
    stack.predictor.fail_status = 503
    replay = (await stack.score(body)).json()
    assert replay["cached"] is True and replay["degraded"] is False
    assert replay["label"] == first["label"] and replay["score"] == first["score"]
    stack.encoder.fail_status = None
    stack.encoder.delay_s = 5.0  # far beyond the budget: the replay must not wait for it
    started = time.perf_counter()
    again = (await stack.score(body)).json()
    assert again["cached"] is True and time.perf_counter() - started < BUDGET_S


async def test_a_stalled_store_does_not_hold_back_the_predictor(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vectors are in before the store has said whether the transaction needs a decision:
    the predictor is asked meanwhile, and a replay the store then finds is still answered
    with the stored decision."""
    store = stack.app.state.services.store
    reserve = store.reserve_many
    predictor_calls_when_reserved: list[int] = []

    async def stalled_reserve(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0.2)
        held = await reserve(*args, **kw)
        predictor_calls_when_reserved.append(len(stack.predictor.calls))
        return held

    monkeypatch.setattr(store, "reserve_many", stalled_reserve)
    body = fraud_txn()
    first = (await stack.score(body)).json()
    assert first["cached"] is False and first["label"] == "highly_suspicious"
    await stack.settled()
    replay = (await stack.score(body, headers={"x-request-id": "retry-stalled"})).json()
    # Both times the predictor had its call before the store answered.
    assert predictor_calls_when_reserved == [1, 2]
    assert replay["cached"] is True and replay["request_id"] == "retry-stalled"
    assert (replay["score"], replay["reasons"]) == (first["score"], first["reasons"])


async def test_replays_agree_across_gateway_replicas(redis_url: str, stack: Stack) -> None:
    body = suspicious_txn()
    first = (await stack.score(body)).json()
    async with gateway(redis_url) as replica:
        replica.encoder.delay_s = 0.1  # the store answers first
        second = (await replica.score(body)).json()
        assert replica.predictor.calls == []
    assert second["cached"] is True and second["score"] == first["score"]


async def test_rescore_recomputes(stack: Stack) -> None:
    body = txn()
    await stack.score(body)
    again = (await stack.client.post("/v1/transactions/score?rescore=true", json=body)).json()
    assert again["cached"] is False
    no_cache = (await stack.score(body, headers={"cache-control": "no-cache"})).json()
    assert no_cache["cached"] is False
    assert len(stack.predictor.calls) == 3
    assert (await stack.score(body)).json()["cached"] is True


async def test_same_id_with_a_different_payload_is_a_409(stack: Stack) -> None:
    body = txn()
    await stack.score(body)
    changed = {**body, "amount": 51.0}
    problem_body = assert_problem(await stack.score(changed), 409)
    assert body["transaction_id"] in problem_body["detail"]
    assert_problem(
        await stack.client.post("/v1/transactions/score?rescore=true", json=changed), 409
    )
    assert (await stack.score(body)).json()["cached"] is True


async def test_degraded_answers_are_not_stored(stack: Stack) -> None:
    body = txn()
    stack.encoder.fail_status = 503
    assert (await stack.score(body)).json()["label"] == "uncertain"
    stack.encoder.fail_status = None
    answer = (await stack.score(body)).json()
    assert answer["label"] == "not_fraud" and answer["cached"] is False


async def test_decisions_live_in_redis_with_a_ttl(stack: Stack, redis_url: str) -> None:
    body = txn()
    await stack.score(body)
    await stack.settled()
    client = aioredis.Redis.from_url(redis_url)
    try:
        ttl = await client.ttl(KEY_PREFIX + body["transaction_id"])
    finally:
        await client.aclose()
    assert 0 < ttl <= stack.settings.decision_ttl_s


async def test_an_unreadable_stored_decision_is_ignored(stack: Stack, redis_url: str) -> None:
    body = txn()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(
            KEY_PREFIX + body["transaction_id"], b'{"payload_hash": "x", "decision": {}}'
        )
    finally:
        await client.aclose()
    response = await stack.score(body)
    assert response.status_code == 200
    assert response.json()["cached"] is False and response.json()["label"] == "not_fraud"
    assert (await stack.score(body)).json()["cached"] is True  # replaced by the fresh decision


async def test_decision_store_reserves_then_settles_each_in_one_script_call(redis_url: str) -> None:
    """``reserve_many`` marks the ids nobody holds and tells what the others hold;
    ``settle`` writes a decision over its own marker or nothing, never over another request's
    marker or decision unless told to overwrite, and deletes only its own marker. Each is one
    script call (loaded again when Redis has forgotten it)."""
    from vigil_contracts.api import ModelRef, ScoreResponse
    from vigil_gateway.decisions import (
        DecisionStore,
        Pending,
        StoredDecision,
        connect,
        encode_entry,
    )
    from vigil_gateway.metrics import GatewayMetrics

    def answer(tid: str, score: float) -> ScoreResponse:
        return ScoreResponse(
            transaction_id=tid,
            label="not_fraud",
            score=score,
            reasons=[],
            model=ModelRef(name=MODEL, version="3"),
            degraded=False,
            request_id="req-put",
        )

    client = connect(redis_url, timeout_s=1.0, max_connections=4)
    store = DecisionStore(client, GatewayMetrics(), ttl_s=60)
    ids = [f"put-{uuid.uuid4().hex[:8]}-{i}" for i in range(4)]
    first, second = b"0123456789abcdef", b"fedcba9876543210"
    try:
        await client.script_flush()  # the first call finds no script and loads it
        assert await store.reserve_many(ids[:1], ["h0"], first, pending_ms=3000) == {}
        held = await store.reserve_many(ids, ["h0", "h1", "h2", "h3"], second, pending_ms=3000)
        assert held == {ids[0]: Pending("h0")}
        assert 0 < await client.pttl(KEY_PREFIX + ids[1]) <= 3000
        assert await store.get_many(ids) == {
            t: Pending(h) for t, h in zip(ids, ["h0", "h1", "h2", "h3"], strict=True)
        }
        await client.script_flush()
        written = await store.settle(
            [(t, encode_entry(answer(t, 0.2), f"h{i}")) for i, t in enumerate(ids[:3])]
            + [(ids[3], b"")],
            second,
            overwrite=False,
        )
        assert written == [0, 1, 1, 0]  # ids[0] is the first request's; ids[3]'s marker deleted
        assert await client.exists(KEY_PREFIX + ids[3]) == 0
        assert await store.settle([(ids[0], b"")], second, overwrite=False) == [0]
        assert isinstance((await store.get_many(ids[:1]))[ids[0]], Pending)  # not its marker
        assert await store.settle(
            [(ids[0], encode_entry(answer(ids[0], 0.1), "h0"))], first, overwrite=False
        ) == [1]
        stored = await store.get_many(ids)
        assert [stored[t].payload_hash for t in ids[:3]] == ["h0", "h1", "h2"] and ids[
            3
        ] not in stored
        assert all(isinstance(stored[t], StoredDecision) for t in ids[:3])
        assert stored[ids[1]].replay("req-2") == answer(ids[1], 0.2).model_copy(  # type: ignore[union-attr]
            update={"request_id": "req-2", "cached": True}
        )
        assert 0 < await client.ttl(KEY_PREFIX + ids[2]) <= 60
        # A decision is never overwritten by a settle, unless it is a rescore's.
        assert await store.settle(
            [(ids[1], encode_entry(answer(ids[1], 0.9), "h1"))], first, overwrite=False
        ) == [0]
        assert await store.settle(
            [(t, encode_entry(answer(t, 0.3), "h-rescored")) for t in ids], first, overwrite=True
        ) == [1, 1, 1, 1]
        assert {s.payload_hash for s in (await store.get_many(ids)).values()} == {"h-rescored"}
        # Nothing reserved (the store was down then): written where nothing is.
        fresh = f"put-{uuid.uuid4().hex[:8]}-late"
        ids.append(fresh)
        assert await store.settle(
            [(fresh, encode_entry(answer(fresh, 0.4), "h4"))], first, overwrite=False
        ) == [1]
        # A batch's writes (no reservation): where nothing is, unless told to overwrite.
        batch = [f"put-{uuid.uuid4().hex[:8]}-batch-{i}" for i in range(2)]
        ids.extend(batch)
        assert await store.reserve_many(batch[:1], ["h5"], first, pending_ms=3000) == {}
        both = [(t, encode_entry(answer(t, 0.5), "h5")) for t in batch]
        assert await store.put_first(both, overwrite=False) == batch[:1]
        assert isinstance((await store.get_many(batch))[batch[0]], Pending)
        assert await store.put_first(both, overwrite=True) == []
        assert all(isinstance(v, StoredDecision) for v in (await store.get_many(batch)).values())
    finally:
        await client.delete(*(KEY_PREFIX + t for t in ids))
        await client.aclose()


async def test_a_decision_whose_entry_cannot_be_made_behind_the_answer_is_counted_and_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The entries of a single transaction's decision are made by the write's task, after the
    answer has gone: should making them fail, the loss is counted and logged, the reservation
    left to expire, and nothing is raised into the event loop."""
    from vigil_gateway.decisions import DecisionStore, connect, encode_entries
    from vigil_gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    client = connect(redis_url, timeout_s=1.0, max_connections=4)
    store = DecisionStore(client, metrics, ttl_s=60)
    tid = f"behind-{uuid.uuid4().hex[:8]}"

    def broken() -> list[tuple[str, bytes]]:
        raise ValueError("not serialisable")

    try:
        assert await store.reserve_many([tid], ["h"], b"0123456789abcdef", pending_ms=3000) == {}
        with caplog.at_level(logging.ERROR, logger="vigil_gateway.decisions"):
            store.settle_behind(broken, b"0123456789abcdef", overwrite=False)
            await store.drain()
        assert "their entries could not be made" in caplog.text
        assert metrics.decision_store.labels("error")._value.get() == 1
        assert await client.exists(KEY_PREFIX + tid) == 1  # the marker, left to expire
        entry = encode_entries([b'{"transaction_id":"%s"}' % tid.encode()], ["h"], "req")[0]
        store.settle_behind(lambda: [(tid, entry)], b"0123456789abcdef", overwrite=False)
        await store.drain()
        assert await client.get(KEY_PREFIX + tid) == entry
    finally:
        await client.delete(KEY_PREFIX + tid)
        await client.aclose()


async def _foreign_marker(
    redis_url: str, body: dict[str, Any], *, payload: str | None = None, ms: int = 5000
) -> None:
    """Another request's reservation for ``body``'s id (for its payload, unless told)."""
    from vigil_contracts.api import Transaction
    from vigil_gateway.decisions import payload_hash, pending_marker

    digest = payload or payload_hash(Transaction.model_validate(body))
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(
            KEY_PREFIX + body["transaction_id"], pending_marker(digest, b"0" * 16), px=ms
        )
    finally:
        await client.aclose()


def _slow_settles(stack: Stack, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
    """Each decision written behind an answer lands ``delay_s`` late (Redis is real)."""
    store = stack.app.state.services.store
    settle = store.settle

    async def slow_settle(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(delay_s)
        return await settle(*args, **kw)

    monkeypatch.setattr(store, "settle", slow_settle)


async def test_the_decision_is_written_behind_the_answer(
    stack: Stack, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer does not wait for the decision's write; until it lands the id is reserved,
    so a retry in between is answered with that decision all the same."""
    _slow_settles(stack, monkeypatch, 0.2)
    body = fraud_txn()
    started = time.perf_counter()
    first = (await stack.score(body)).json()
    assert time.perf_counter() - started < 0.15
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert (await client.get(KEY_PREFIX + body["transaction_id"])).startswith(
            b"pending sha256:"
        )
        retry = (await stack.score(body, headers={"x-request-id": "retry-early"})).json()
        assert retry["cached"] is True and retry["score"] == first["score"]
        assert retry["request_id"] == "retry-early"
        assert (await client.get(KEY_PREFIX + body["transaction_id"])).startswith(
            b'{"payload_hash"'
        )
    finally:
        await client.aclose()
    assert 'outcome="pending"} 1.0' in (await stack.client.get("/metrics")).text


async def test_concurrent_requests_for_one_transaction_get_one_decision(
    stack: Stack, redis_url: str
) -> None:
    stack.predictor.delay_s = 0.05  # both are in flight when the store is asked
    body = suspicious_txn()
    answers = [
        r.json()
        for r in await asyncio.gather(
            *(stack.score(body, headers={"x-request-id": f"same-{i}"}) for i in range(4))
        )
    ]
    assert sorted(a["cached"] for a in answers) == [False, True, True, True]
    assert len({(a["score"], a["label"]) for a in answers}) == 1
    batch = (
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": [body]})
    ).json()
    assert batch["results"][0]["result"]["cached"] is True
    # One decision, so one decision event: the requests that waited for it and answered with
    # it (replays) record nothing, though each scored the transaction too.
    assert await _events_of(stack, redis_url, body["transaction_id"]) == 1


async def _events_of(stack: Stack, redis_url: str, transaction_id: str) -> int:
    """How many decision events of ``transaction_id`` are on the stream, once the gateway's
    spool has sent what it holds."""
    spool = stack.app.state.services.scoring.record.events
    deadline = time.monotonic() + 5.0
    while len(spool) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the batch in flight, if any
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(stack.settings.events_stream)
    finally:
        await client.aclose()
    return sum(
        json.loads(fields[b"event"])["transaction"]["transaction_id"] == transaction_id
        for _, fields in entries
    )


async def test_a_decision_event_names_the_key_that_asked_and_the_safeguards(
    stack: Stack, redis_url: str
) -> None:
    """What audit needs of a decision beside the answer: who asked (the API key's id, never the
    key) and which safeguards checked it, as the answer gave them."""
    body = fraud_txn()
    answer = (await stack.score(body)).json()
    assert answer["safeguards"] is not None
    await _events_of(stack, redis_url, body["transaction_id"])  # the spool sent it
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(stack.settings.events_stream)
    finally:
        await client.aclose()
    [event] = [
        e
        for e in (DecisionEvent.model_validate_json(f[b"event"]) for _, f in entries)
        if e.transaction.transaction_id == body["transaction_id"]
    ]
    token = stack.client.headers["authorization"].removeprefix("Bearer ")
    assert event.key_id == split_token(token)[0]  # type: ignore[index]
    assert token not in str(entries)
    assert event.safeguards is not None
    assert event.safeguards.model_dump() == answer["safeguards"]


async def test_a_retry_while_the_first_attempt_is_stuck_is_told_in_progress(
    stack: Stack, redis_url: str
) -> None:
    body = txn()
    await _foreign_marker(redis_url, body)
    started = time.perf_counter()
    problem = assert_problem(await stack.score(body), 409)
    assert problem["type"].endswith("transaction-in-progress")
    assert body["transaction_id"] in problem["detail"]
    assert BUDGET_S * 0.9 < time.perf_counter() - started < BUDGET_S + 0.3  # waited its budget
    # A degraded answer promises nothing: it is given as it is rather than "in progress".
    stack.encoder.fail_status = 503
    degraded = (await stack.score(body)).json()
    assert degraded["label"] == "uncertain" and degraded["degraded"] is True
    # In a batch the item is answered so, and the others as ever.
    stack.encoder.fail_status = None
    other = txn()
    batch = (
        await stack.client.post(
            "/v1/transactions/score-batch", json={"transactions": [body, other]}
        )
    ).json()
    assert [r["status"] for r in batch["results"]] == [409, 200]
    assert batch["results"][0]["error"]["type"].endswith("transaction-in-progress")


async def test_a_batch_stores_its_decisions_before_answering(stack: Stack, redis_url: str) -> None:
    """A batch reserves nothing (a thousand markers would cost Redis more than the round trip
    costs the batch): its decisions are in the store when it answers."""
    items = [txn(), fraud_txn()]
    batch = (
        await stack.client.post("/v1/transactions/score-batch", json={"transactions": items})
    ).json()
    assert [r["status"] for r in batch["results"]] == [200, 200]
    client = aioredis.Redis.from_url(redis_url)
    try:
        held = await client.mget([KEY_PREFIX + t["transaction_id"] for t in items])
    finally:
        await client.aclose()
    assert all(value.startswith(b'{"payload_hash"') for value in held)


async def test_a_batch_waits_for_a_busy_store_within_its_budget(
    stack: Stack, redis_url: str
) -> None:
    """A batch that finds the store busy for 0.5 s (a script running alone on the real Redis)
    waits for its look-up and its write up to 80 % of the time its budget has left, not the
    store's own 100 ms: its decisions are stored when it answers (with the store's own deadline
    the write gave up while Redis was still busy, and a retry would have been scored again)."""
    import threading

    import redis as sync_redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    items = [txn(), fraud_txn()]
    # Connections made and kept (a new one could not even be set up on a busy Redis).
    await asyncio.gather(
        *(
            stack.client.post("/v1/transactions/score-batch", json={"transactions": [txn()]})
            for _ in range(4)
        )
    )
    busy = sync_redis.Redis.from_url(redis_url)
    probe = sync_redis.Redis.from_url(redis_url, socket_timeout=0.02, retry=Retry(NoBackoff(), 0))
    failed: list[BaseException] = []

    def run_busy() -> None:
        try:
            busy.eval(BUSY_SCRIPT, 0, 500_000)
        except sync_redis.RedisError as exc:  # re-raised below
            failed.append(exc)

    try:
        held = threading.Thread(target=run_busy)
        held.start()
        while True:  # until Redis is busy for real: a PING then gets no answer in time
            try:
                probe.ping()
            except sync_redis.TimeoutError:
                break
            await asyncio.sleep(0.005)
        response = await stack.client.post(
            "/v1/transactions/score-batch", json={"transactions": items}
        )
        held.join()
    finally:
        busy.close()
        probe.close()
    assert not failed, failed
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200]
    assert not any(r["result"]["degraded"] for r in results)
    client = aioredis.Redis.from_url(redis_url)
    try:
        stored = await client.mget([KEY_PREFIX + t["transaction_id"] for t in items])
    finally:
        await client.aclose()
    assert all(value is not None and value.startswith(b'{"payload_hash"') for value in stored)
    again = (await stack.score(items[1])).json()
    assert again["cached"] is True and again["score"] == results[1]["result"]["score"]


async def test_a_batch_that_finds_a_reservation_at_its_write_answers_with_that_decision(
    stack: Stack, redis_url: str
) -> None:
    """The batch looks first (nothing there), a single request for one of its transactions
    then reserves it; the batch's write finds the reservation and waits for that decision."""
    stack.predictor.delay_s = 0.1
    body = fraud_txn()
    batch_call = asyncio.create_task(
        stack.client.post("/v1/transactions/score-batch", json={"transactions": [body, txn()]})
    )
    await asyncio.sleep(0.03)
    single = (await stack.score(body)).json()
    batch = (await batch_call).json()
    first = batch["results"][0]["result"]
    assert single["cached"] is False and first["cached"] is True
    assert first["score"] == single["score"] and first["label"] == single["label"]
    assert batch["results"][1]["result"]["cached"] is False
    # The single request's decision is the one event of that transaction; the batch's own
    # answer for it, replaced by that decision, is not recorded.
    assert await _events_of(stack, redis_url, body["transaction_id"]) == 1
    assert await _events_of(stack, redis_url, batch["results"][1]["result"]["transaction_id"]) == 1


async def test_a_reservation_for_another_payload_is_a_conflict_at_once(
    stack: Stack, redis_url: str
) -> None:
    body = txn()
    await _foreign_marker(redis_url, body, payload="sha256:another-payload")
    started = time.perf_counter()
    problem = assert_problem(await stack.score(body), 409)
    assert problem["type"].endswith("transaction-id-conflict")
    assert time.perf_counter() - started < BUDGET_S / 2


async def test_a_reservation_given_up_leaves_the_decision_to_the_retry(
    stack: Stack, redis_url: str
) -> None:
    """The first attempt's marker goes (its answer was degraded, or it expired) while the retry
    waits: the retry's own decision is answered and stored."""
    body = fraud_txn()
    await _foreign_marker(redis_url, body, ms=150)
    answer = (await stack.score(body)).json()
    assert answer["cached"] is False and answer["degraded"] is False
    await stack.settled()
    again = (await stack.score(body)).json()
    assert again["cached"] is True and again["score"] == answer["score"]


async def test_shutdown_waits_for_the_decisions_written_behind(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = fraud_txn()
    async with gateway(redis_url) as stack:
        await stack.wait_for_metadata()
        _slow_settles(stack, monkeypatch, 0.2)
        assert (await stack.score(body)).status_code == 200
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert (await client.get(KEY_PREFIX + body["transaction_id"])).startswith(
            b'{"payload_hash"'
        )
    finally:
        await client.aclose()


async def test_scoring_works_without_the_decision_store() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    # No Redis ever: no key table to read either (a gateway that has read it keeps it through an
    # outage: test_auth.py); authentication is not what this test is about.
    async with gateway(dead, auth_enabled=False) as no_redis:
        await no_redis.wait_for_metadata()
        body = fraud_txn()
        started = time.perf_counter()
        first = await no_redis.score(body)
        second = await no_redis.score(body)
        elapsed = time.perf_counter() - started
        assert first.status_code == second.status_code == 200
        assert first.json()["label"] == second.json()["label"] == "highly_suspicious"
        assert second.json()["cached"] is False
        assert elapsed < 2 * BUDGET_S
        metrics = (await no_redis.client.get("/metrics")).text
        assert 'vigil_gateway_decision_store_total{outcome="error"}' in metrics
        body = assert_problem(await no_redis.client.get("/readyz"), 503)
        assert body["checks"]["decision_store"]["ok"] is False


# --- degradation -----------------------------------------------------------------------------


async def test_encoder_down_is_uncertain_not_5xx(stack: Stack) -> None:
    stack.encoder.fail_status = 503
    started = time.perf_counter()
    response = await stack.score(fraud_txn())
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    answer = response.json()
    assert answer["label"] == "uncertain" and answer["score"] is None and answer["degraded"] is True
    assert codes(answer) == ["FEATURES_UNAVAILABLE"]
    assert answer["model"] == {"name": MODEL, "version": "3"}  # the cached metadata's
    assert elapsed < BUDGET_S + MARGIN_S
    assert stack.predictor.calls == []


async def test_encoder_unreachable_is_uncertain(redis_url: str) -> None:
    async with gateway(redis_url, wire_encoder=False) as stack:  # nothing listens on its port
        started = time.perf_counter()
        answer = (await stack.score(txn())).json()
        assert time.perf_counter() - started < BUDGET_S + MARGIN_S
    assert answer["label"] == "uncertain" and codes(answer) == ["FEATURES_UNAVAILABLE"]


async def test_encoder_slow_is_uncertain_within_the_budget(stack: Stack) -> None:
    stack.encoder.delay_s = 2.0
    started = time.perf_counter()
    answer = (await stack.score(txn())).json()
    elapsed = time.perf_counter() - started
    assert codes(answer) == ["FEATURES_UNAVAILABLE"]
    assert HOP_S * 0.9 < elapsed < BUDGET_S + MARGIN_S


async def test_predictor_down_is_model_unavailable(stack: Stack) -> None:
    stack.predictor.fail_status = 503
    response = await stack.score(txn())
    assert response.status_code == 200
    answer = response.json()
    assert answer["label"] == "uncertain" and answer["degraded"] is True
    assert codes(answer) == ["MODEL_UNAVAILABLE"]
    assert answer["model"] == {"name": MODEL, "version": "3"}


async def test_predictor_slow_answers_within_the_budget(stack: Stack) -> None:
    stack.predictor.delay_s = 2.0
    started = time.perf_counter()
    response = await stack.score(fraud_txn())
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    answer = response.json()
    assert answer["label"] == "uncertain" and answer["score"] is None
    assert codes(answer)[0] in {"MODEL_UNAVAILABLE", "TIMEOUT"}
    assert elapsed < BUDGET_S + MARGIN_S


async def test_total_budget_is_enforced_across_hops(redis_url: str) -> None:
    # Each hop is within its own timeout, together they overrun the budget.
    encoder, predictor = EncoderStandIn(delay_s=0.1), PredictorStandIn(delay_s=0.1)
    async with gateway(redis_url, encoder, predictor, total_budget_s=0.15) as stack:
        await stack.wait_for_metadata()
        started = time.perf_counter()
        answer = (await stack.score(txn())).json()
        elapsed = time.perf_counter() - started
        assert codes(answer) == ["TIMEOUT"] and answer["label"] == "uncertain"
        assert elapsed < 0.15 + MARGIN_S
        metrics = (await stack.client.get("/metrics")).text
    assert 'vigil_gateway_degraded_answers_total{model_version="3",reason="TIMEOUT"} 1.0' in metrics


async def test_stale_features_are_uncertain(stack: Stack) -> None:
    stack.encoder.stale_cards.add("card_good")
    answer = (await stack.score(txn())).json()
    assert answer["label"] == "uncertain" and answer["degraded"] is True
    assert codes(answer) == ["FEATURES_STALE"]
    assert stack.predictor.calls == []


async def test_too_many_missing_stored_features_are_uncertain(stack: Stack) -> None:
    # Unknown card (2 stored features) and no device (1): 3 of 4 stored features missing.
    answer = (await stack.score(txn(card_id="card_new", device_id=None))).json()
    assert codes(answer) == ["FEATURES_MISSING"] and answer["score"] is None
    # Too little history is no failure of Vigil's: uncertain, but not degraded (nor counted so).
    assert answer["label"] == "uncertain" and answer["degraded"] is False
    metrics = (await stack.client.get("/metrics")).text
    assert 'reason="FEATURES_MISSING"' not in metrics
    assert 'vigil_gateway_decisions_total{label="uncertain",model_version="3"} 1.0' in metrics
    # Unknown card with a known device: 2 of 4 missing is within the model's policy (0.5).
    answer = (await stack.score(txn(card_id="card_new"))).json()
    assert answer["degraded"] is False and answer["score"] is not None


async def test_policy_applies_per_row_in_a_batch(stack: Stack) -> None:
    stack.encoder.stale_cards.add("card_busy")
    response = await stack.client.post(
        "/v1/transactions/score-batch",
        json={"transactions": [txn(), fraud_txn(), suspicious_txn()]},
    )
    results = [r["result"] for r in response.json()["results"]]
    assert [r["label"] for r in results] == ["not_fraud", "uncertain", "suspicious"]
    assert codes(results[1]) == ["FEATURES_STALE"]
    assert stack.predictor.calls[0]["body"]["inputs"][0]["shape"] == [2, len(FEATURES)]


async def test_feature_contract_mismatch_is_uncertain(stack: Stack) -> None:
    stack.predictor.contract = "sha256:another-order"
    answer = (await stack.score(txn())).json()
    assert answer["label"] == "uncertain" and codes(answer) == ["FEATURE_CONTRACT_MISMATCH"]


async def test_predictor_down_at_start_then_back(redis_url: str) -> None:
    predictor = PredictorStandIn(metadata_down=True)
    async with gateway(redis_url, predictor=predictor) as stack:
        answer = (await stack.score(txn())).json()
        assert codes(answer) == ["MODEL_UNAVAILABLE"]
        assert answer["model"] == {"name": MODEL, "version": None}
        body = assert_problem(await stack.client.get("/readyz"), 503)
        assert body["checks"]["model_metadata"]["ok"] is False
        predictor.metadata_down = False
        answer = (await stack.score(txn())).json()  # metadata read on demand
        assert answer["label"] == "not_fraud" and answer["model"]["version"] == "3"


# --- request ids, readiness, metrics, ui -----------------------------------------------------


async def test_request_id_is_forwarded_and_echoed(stack: Stack) -> None:
    response = await stack.score(txn(), headers={"x-request-id": "req-abc.123"})
    assert response.headers["x-request-id"] == "req-abc.123"
    assert response.json()["request_id"] == "req-abc.123"
    assert stack.encoder.calls[0]["request_id"] == "req-abc.123"
    assert stack.predictor.calls[0]["request_id"] == "req-abc.123"
    assert stack.predictor.calls[0]["body"]["id"] == "req-abc.123"


async def test_the_encoder_is_told_how_long_the_gateway_waits(stack: Stack) -> None:
    """x-vigil-timeout-ms: the hop's time left, at most the single hop's 150 ms for one
    transaction and the batch hop's 1 s for a batch (the encoder may give its store most of it)."""
    await stack.score(txn())
    single = int(stack.encoder.calls[-1]["timeout_ms"])
    await stack.client.post("/v1/transactions/score-batch", json={"transactions": [txn(), txn()]})
    batch = int(stack.encoder.calls[-1]["timeout_ms"])
    assert 0 < single <= 150 < batch <= 1000, (single, batch)


async def test_request_id_is_generated_when_absent_or_unsafe(stack: Stack) -> None:
    for headers in ({}, {"x-request-id": "bad id\twith spaces"}):
        response = await stack.score(txn(), headers=headers)
        request_id = response.headers["x-request-id"]
        assert len(request_id) == 32 and int(request_id, 16) >= 0
        assert response.json()["request_id"] == request_id
        assert stack.encoder.calls[-1]["request_id"] == request_id


async def test_readyz(stack: Stack) -> None:
    response = await stack.client.get("/readyz")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert all(c["ok"] for c in checks.values())
    assert set(checks) == {"model_metadata", "encoder", "decision_store"}
    assert (await stack.client.get("/healthz")).json() == {"status": "alive"}
    assert "vigil_gateway_ready 1.0" in (await stack.client.get("/metrics")).text

    stack.encoder.ready = False
    # A scrape alone sees it (what the VigilServiceNotReady alert reads).
    assert "vigil_gateway_ready 0.0" in (await stack.client.get("/metrics")).text
    body = assert_problem(await stack.client.get("/readyz"), 503)
    assert body["checks"]["encoder"]["ok"] is False
    assert body["checks"]["model_metadata"]["ok"] is True
    assert "encoder" in body["detail"]
    assert (await stack.client.get("/healthz")).status_code == 200


async def test_metrics_count_requests_decisions_and_degradations(stack: Stack) -> None:
    await stack.score(fraud_txn())
    await stack.score(txn())
    await stack.score(txn(amount=-1))
    stack.predictor.fail_status = 503
    await stack.score(txn())
    text = (await stack.client.get("/metrics")).text
    assert 'vigil_gateway_decisions_total{label="highly_suspicious",model_version="3"} 1.0' in text
    assert 'vigil_gateway_decisions_total{label="not_fraud",model_version="3"} 1.0' in text
    assert 'vigil_gateway_decisions_total{label="uncertain",model_version="3"} 1.0' in text
    assert (
        'vigil_gateway_degraded_answers_total{model_version="3",reason="MODEL_UNAVAILABLE"} 1.0'
        in text
    )
    assert (
        'vigil_gateway_requests_total{method="POST",route="/v1/transactions/score",status="200"} 3.0'
        in text
    )
    assert (
        'vigil_gateway_requests_total{method="POST",route="/v1/transactions/score",status="422"} 1.0'
        in text
    )
    assert (
        'vigil_gateway_downstream_errors_total{downstream="predictor",kind="server_error"} 1.0'
        in text
    )
    assert (
        'vigil_gateway_request_duration_seconds_bucket{le="0.4",method="POST",route="/v1/transactions/score"}'
        in text
    )
    assert 'vigil_gateway_model_info{model="fraud_detector",version="3"} 1.0' in text


async def test_ui_is_served(stack: Stack) -> None:
    response = await stack.client.get("/ui")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<form" in html and "/v1/transactions/score" in html and "fetch(" in html
    assert "http://" not in html and "https://" not in html  # no CDN, nothing external


async def test_openapi_documents_the_business_api(stack: Stack) -> None:
    spec = (await stack.client.get("/openapi.json")).json()
    assert {"/v1/transactions/score", "/v1/transactions/score-batch", "/readyz"} <= set(
        spec["paths"]
    )


# --- against the real predictor app ----------------------------------------------------------


async def test_with_the_real_predictor(redis_url: str, tmp_path) -> None:
    """The gateway speaks V2 to the real predictor app (a tiny booster trained here)."""
    np = pytest.importorskip("numpy")
    xgb = pytest.importorskip("xgboost")
    booster, predictor_app = real_predictor_app(
        tmp_path, thresholds={"suspicious": 0.3, "highly_suspicious": 0.7}
    )
    encoder = EncoderStandIn()
    async with on_real_predictor(redis_url, encoder.app, predictor_app) as client:
        items = [fraud_txn(), txn(), txn(device_id="dev_unknown")]
        response = await client.post("/v1/transactions/score-batch", json={"transactions": items})
    assert response.status_code == 200, response.text
    answers = [r["result"] for r in response.json()["results"]]
    vectors = np.array(
        [
            [np.nan if v is None else v for v in row["values"]]
            for row in encoder.calls[0]["encoded"]
        ],
        dtype=np.float32,
    )
    expected = booster.inplace_predict(vectors, missing=np.nan)
    contribs = booster.predict(
        xgb.DMatrix(vectors, missing=np.nan, feature_names=FEATURES), pred_contribs=True
    )
    for answer, score, row_contribs in zip(answers, expected, contribs, strict=True):
        assert answer["degraded"] is False
        assert answer["model"] == {"name": MODEL, "version": "1"}
        assert answer["score"] == pytest.approx(float(score), abs=1e-5)
        assert answer["label"] == label_for_score(
            answer["score"], {"suspicious": 0.3, "highly_suspicious": 0.7}
        )
        if answer["label"] == "not_fraud":
            assert codes(answer) == ["NO_RISK_SIGNAL"]
            continue
        # Flagged: explained by XGBoost's own contributions, the largest first.
        assert answer["reasons"][0]["contribution"] == pytest.approx(
            float(max(row_contribs[:-1])), abs=1e-3
        )
        for reason in answer["reasons"]:
            if reason["feature"] is not None:
                i = FEATURES.index(reason["feature"])
                assert reason["contribution"] == pytest.approx(float(row_contribs[i]), abs=1e-3)
    assert {a["label"] for a in answers} >= {"not_fraud", "highly_suspicious"}, answers


# --- the request path as stages --------------------------------------------------------------

# The stages in the order a transaction meets them (``vigil_gateway.pipeline``'s docstring).
STAGES = {
    "pipeline",
    "idempotency",
    "preprocess",
    "encode",
    "policy",
    "safeguards",
    "predict",
    "postprocess",
    "record",
}
# Not followed: the ASGI body limit, whose ``receive`` wrapper is called once per body chunk.
PLUMBING = {"body_limit"}


async def module_entries(stack: Stack, body: dict[str, Any]) -> list[list[str]]:
    """Every entry into a gateway module while ``body`` is scored, per asyncio task (and one
    list for callbacks run outside any task), in the order the tasks started: a function of
    module M called from outside M. A coroutine resumed is no new entry."""
    import sys

    started: set[Any] = set()
    entries: dict[Any, list[str]] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("vigil_gateway.") or frame in started:
            return
        started.add(frame)
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back is not None else ""
        if caller != module:
            task = asyncio.current_task()
            entries.setdefault(task, []).append(module.removeprefix("vigil_gateway."))

    sys.setprofile(profile)
    try:
        response = await stack.score(body)
    finally:
        sys.setprofile(None)
    assert response.status_code == 200, response.text
    started.clear()
    return [[m for m in modules if m not in PLUMBING] for modules in entries.values()]


@pytest.mark.parametrize("body", [txn(), fraud_txn()], ids=["legit", "fraud"])
async def test_a_transaction_meets_the_stages_in_order_entering_each_module_at_most_twice(
    stack: Stack, body: dict[str, Any]
) -> None:
    await stack.score(txn(transaction_id="warm-up"))  # connections, caches
    await stack.settled()
    entries = await module_entries(stack, {**body, "transaction_id": f"trace-{uuid.uuid4()}"})
    await stack.settled()
    by_start = {modules[0]: modules for modules in entries}
    # The request's own task: the route, then the stages in order (the claim opened, then
    # settled); the encoding and the decision store's look-up run in tasks of their own.
    main = by_start["rest"]
    assert [m for m in main if m in STAGES] == [
        "pipeline",
        "idempotency",
        "preprocess",
        "policy",
        "safeguards",
        "predict",
        "postprocess",
        "idempotency",
        "record",
    ]
    assert by_start["encode"][0] == "encode"
    assert by_start["idempotency"][0] == "idempotency"
    for modules in entries:
        counts = {m: modules.count(m) for m in modules}
        assert max(counts.values()) <= 2, " ".join(modules)


# --- safeguards ------------------------------------------------------------------------------

RULES_TOML = """
version = "test-1"

[[rules]]
code = "AMOUNT_OUTSIDE_TRAINING_RANGE"
feature = "txn_amount"
outside_training_range = true
at_least = "suspicious"
text = "amount {value:.0f} is beyond the training range"

[[rules]]
code = "HUGE_RATIO"
feature = "amount_to_card_avg_30d"
above = 30.0
at_least = "highly_suspicious"
text = "amount is {value:.0f}x the card's average"
"""


@pytest.fixture
async def guarded(redis_url, tmp_path) -> AsyncIterator[Stack]:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES_TOML)
    predictor = PredictorStandIn(training_range={"request_features__txn_amount": [1.0, 100.0]})
    async with gateway(redis_url, predictor=predictor, safeguards_path=str(rules)) as s:
        await s.wait_for_metadata()
        yield s


async def test_a_safeguard_raises_a_not_fraud_answer_and_says_so(guarded: Stack) -> None:
    # 120 on a card averaging 100: the model's not_fraud, but beyond the training range.
    body = txn(amount=120.0)
    assert (
        expected_score(
            {
                "card_stats__card_amount_avg_30d": 100.0,
                "request_features__txn_amount": 120.0,
                "merchant_stats__merchant_txn_count_24h": 3,
                "device_stats__device_distinct_cards_7d": 1,
                "request_features__amount_to_card_avg_30d": 1.2,
            }
        )
        < THRESHOLDS["3"]["suspicious"]
    )
    answer = (await guarded.score(body)).json()
    assert answer["label"] == "suspicious" and answer["degraded"] is False
    assert answer["safeguards"] == {"version": "test-1", "fired": ["AMOUNT_OUTSIDE_TRAINING_RANGE"]}
    assert answer["reasons"] == [
        {
            "code": "AMOUNT_OUTSIDE_TRAINING_RANGE",
            "text": "amount 120 is beyond the training range",
            "feature": "txn_amount",
            "value": 120.0,
            "contribution": None,
        }
    ]
    # Within the range nothing fires, and the answer says which rule set checked it.
    calm = (await guarded.score(txn(amount=90.0))).json()
    assert calm["label"] == "not_fraud" and calm["safeguards"] == {"version": "test-1", "fired": []}
    await guarded.settled()
    # The stored decision keeps what the rules said; a replay answers it.
    replay = (await guarded.score(body)).json()
    assert replay["cached"] is True and replay["safeguards"] == answer["safeguards"]
    metrics = (await guarded.client.get("/metrics")).text
    assert (
        'vigil_gateway_safeguards_fired_total{rule="AMOUNT_OUTSIDE_TRAINING_RANGE",version="test-1"} 1.0'
        in metrics
    )


async def test_safeguards_never_lower_a_label_and_come_first_among_reasons(guarded: Stack) -> None:
    # 3,500 on a card averaging 100: both rules fire; the model flagged it too.
    answer = (await guarded.score(txn(amount=3500.0))).json()
    assert answer["label"] == "highly_suspicious"
    assert answer["safeguards"]["fired"] == ["AMOUNT_OUTSIDE_TRAINING_RANGE", "HUGE_RATIO"]
    assert codes(answer)[:2] == ["AMOUNT_OUTSIDE_TRAINING_RANGE", "HUGE_RATIO"]
    assert len(codes(answer)) > 2  # the model's own reasons follow
    # In a batch, per row; a row whose features are missing is uncertain with the rules' word.
    response = await guarded.client.post(
        "/v1/transactions/score-batch",
        json={
            "transactions": [
                txn(amount=120.0),
                txn(amount=50.0),
                txn(card_id="card_new", device_id=None, amount=150.0),
            ]
        },
    )
    results = [r["result"] for r in response.json()["results"]]
    assert [r["label"] for r in results] == ["suspicious", "not_fraud", "uncertain"]
    assert codes(results[2]) == ["FEATURES_MISSING", "AMOUNT_OUTSIDE_TRAINING_RANGE"]
    assert results[2]["safeguards"]["fired"] == ["AMOUNT_OUTSIDE_TRAINING_RANGE"]


async def test_an_unchecked_answer_has_no_safeguards(stack: Stack) -> None:
    stack.encoder.fail_status = 503
    answer = (await stack.score(txn())).json()
    assert answer["label"] == "uncertain" and answer["safeguards"] is None


def test_the_shipped_rules_load_and_a_broken_rule_file_fails_the_start(tmp_path) -> None:
    from vigil_gateway.safeguards import load_rules

    shipped = load_rules()
    assert shipped.version and {r.code for r in shipped.rules} >= {
        "AMOUNT_FAR_ABOVE_CARD_HISTORY",
        "AMOUNT_OUTSIDE_TRAINING_RANGE",
    }
    broken = tmp_path / "broken.toml"
    broken.write_text(
        'version = "x"\n[[rules]]\ncode = "NO_CONDITION"\nfeature = "txn_amount"\n'
        'text = "t"\nat_least = "suspicious"\n'
    )
    with pytest.raises(ValidationError, match="needs above, below or outside_training_range"):
        create_app(GatewaySettings(environment="test", safeguards_path=str(broken)))


# --- money -----------------------------------------------------------------------------------


async def test_amounts_are_judged_in_eur_and_currencies_are_iso_4217(stack: Stack) -> None:
    # 6,500 JPY is 39 EUR; 6,500 EUR is 65x the card's average: not the same transaction.
    yen = (await stack.score(txn(amount=6500.0, currency="JPY"))).json()
    euro = (await stack.score(txn(amount=6500.0, currency="EUR"))).json()
    assert yen["label"] == "not_fraud" and euro["label"] == "highly_suspicious"
    [amount_fed] = [
        v
        for name, v in zip(FEATURES, stack.encoder.calls[0]["encoded"][0]["values"], strict=True)
        if name == "request_features__txn_amount"
    ]
    assert amount_fed == pytest.approx(39.0)
    # Not ISO 4217, or more decimals than the currency has: a 422 naming the field.
    for body, field_name in (
        (txn(currency="ABC"), "currency"),
        (txn(amount=6500.5, currency="JPY"), "amount"),
        (txn(amount=12.345, currency="EUR"), "amount"),
    ):
        problem_body = assert_problem(await stack.score(body), 422)
        assert [p["name"] for p in problem_body["invalid_params"]] == [field_name], problem_body
    # An ISO currency without a rate to EUR: uncertain, and no failure of Vigil's.
    answer = (await stack.score(txn(amount=50.0, currency="CHF"))).json()
    assert answer["label"] == "uncertain" and answer["degraded"] is False
    assert codes(answer)[0] == "CURRENCY_UNSUPPORTED"


def test_a_money_reason_names_eur_and_the_amount_as_paid() -> None:
    from vigil_gateway.reasons import Context, describe

    paid_in_usd = Context(currency="USD", paid=900.0, device_present=True, raising=True)
    assert describe("request_features__txn_amount", 810.0, paid_in_usd) == (
        "TRANSACTION_AMOUNT",
        "amount of 810.00 EUR (900.00 USD as paid)",
    )
    assert describe("card_stats__card_amount_avg_30d", 33.1, paid_in_usd) == (
        "CARD_AVERAGE_AMOUNT",
        "this card's average amount in the 30 days before this transaction is 33.10 EUR",
    )
    in_eur = Context(currency="EUR", paid=810.0, device_present=True, raising=True)
    assert describe("request_features__txn_amount", 810.0, in_eur)[1] == "amount of 810.00 EUR"


# --- the scoring horizon -----------------------------------------------------------------------


async def test_a_transaction_older_than_the_horizon_is_uncertain_not_scored(redis_url) -> None:
    async with gateway(redis_url, max_transaction_age_s=3 * 86400, max_features_lead_s=0) as stack:
        await stack.wait_for_metadata()
        now = datetime.now(UTC)
        recent = txn(timestamp=(now - timedelta(days=2)).isoformat())
        ancient = txn(timestamp="2019-03-01T10:00:00+01:00")
        assert (await stack.score(recent)).json()["label"] == "not_fraud"
        answer = (await stack.score(ancient)).json()
        assert answer["label"] == "uncertain" and answer["degraded"] is False
        assert codes(answer) == ["TRANSACTION_TOO_OLD"] and answer["score"] is None
        assert len(stack.predictor.calls) == 1  # the old one never reached the model
        # Per item in a batch.
        response = await stack.client.post(
            "/v1/transactions/score-batch",
            json={
                "transactions": [
                    txn(timestamp=now.isoformat()),
                    ancient | {"transaction_id": "old-in-batch"},
                ]
            },
        )
        labels = [r["result"]["label"] for r in response.json()["results"]]
        assert labels == ["not_fraud", "uncertain"]


async def test_a_transaction_older_than_its_features_is_uncertain_not_scored(redis_url) -> None:
    """The stand-in's stored rows are a minute old: a transaction stamped more than the allowed
    lateness before them came after them in the store (TRANSACTION_BEFORE_FEATURES, not
    degraded, never sent to the model); within the lateness it is scored; an entity with no
    row has no lead; the horizon is checked first."""
    async with gateway(
        redis_url, max_transaction_age_s=3 * 86400, max_features_lead_s=3600
    ) as stack:
        await stack.wait_for_metadata()
        now = datetime.now(UTC)
        within = txn(timestamp=(now - timedelta(minutes=50)).isoformat())
        behind = txn(timestamp=(now - timedelta(hours=3)).isoformat())
        ancient = txn(timestamp="2019-03-01T10:00:00+01:00")
        assert (await stack.score(within)).json()["label"] == "not_fraud"
        answer = (await stack.score(behind)).json()
        assert answer["label"] == "uncertain" and answer["degraded"] is False
        assert codes(answer) == ["TRANSACTION_BEFORE_FEATURES"] and answer["score"] is None
        assert codes((await stack.score(ancient)).json()) == ["TRANSACTION_TOO_OLD"]
        assert len(stack.predictor.calls) == 1  # only the one within the lateness was scored
        unknown = behind | {
            "transaction_id": "unknown-entities",
            "card_id": "c_never_seen",
            "merchant_id": "m_never_seen",
            "device_id": None,
        }
        assert codes((await stack.score(unknown)).json()) != ["TRANSACTION_BEFORE_FEATURES"]
        response = await stack.client.post(
            "/v1/transactions/score-batch",
            json={"transactions": [within, behind | {"transaction_id": "behind-in-batch"}]},
        )
        results = [r["result"] for r in response.json()["results"]]
        assert [r["label"] for r in results] == ["not_fraud", "uncertain"]
        assert codes(results[1]) == ["TRANSACTION_BEFORE_FEATURES"]
