"""The gateway's plain modules on their own: the business API models, settings, the serving
policy, payload hashing, the reason sentences and the predictor's wire format. No app, no
network."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from settings_docs import undocumented_fields
from vigil_contracts.api import BatchItemResult, Transaction
from vigil_contracts.encoding import EncodedRow
from vigil_contracts.problems import Problem
from vigil_contracts.request_features import OUTPUT_FEATURES
from vigil_gateway.decisions import payload_hash
from vigil_gateway.errors import DownstreamError
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.model_metadata import ModelMetadata, ServingPolicy, is_stored
from vigil_gateway.policy import FEATURES_MISSING, FEATURES_STALE, policy_verdict, stored_mask
from vigil_gateway.predictor_client import (
    PredictorClient,
    decode_outputs,
    encode_request,
    split_rows,
)
from vigil_gateway.reasons import TEMPLATES, Context, describe, explain
from vigil_gateway.redis_wire import pack_command
from vigil_gateway.settings import GatewaySettings


def transaction(**changes: Any) -> dict[str, Any]:
    body = {
        "transaction_id": "tx:1.a_b-c",
        "card_id": "c1",
        "merchant_id": "m1",
        "amount": 10,
        "currency": "EUR",
        "timestamp": "2024-06-01T10:00:00+02:00",
        "channel": "pos",
    }
    body.update(changes)
    return body


# --- business API models ---------------------------------------------------------------------


def test_transaction_keeps_the_payers_offset() -> None:
    t = Transaction.model_validate(transaction())
    assert t.timestamp.utcoffset() == timedelta(hours=2)
    assert t.timestamp.hour == 10
    assert t.model_dump(mode="json")["timestamp"] == "2024-06-01T10:00:00+02:00"
    assert (
        Transaction.model_validate(transaction(timestamp="2024-06-01T08:00:00Z")).model_dump(
            mode="json"
        )["timestamp"]
        == "2024-06-01T08:00:00Z"
    )
    assert isinstance(t.amount, float)


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-06-01T10:00:00",
        "2024-06-01",
        "10:00:00Z",
        "2024-06-01T10:00Z",
        "2024-13-01T10:00:00Z",
        "2024-W22-6T10:00:00Z",
        "20240601T100000Z",
    ],
)
def test_timestamp_must_be_rfc3339_with_an_offset(timestamp: str) -> None:
    with pytest.raises(ValidationError) as info:
        Transaction.model_validate(transaction(timestamp=timestamp))
    assert [e["loc"] for e in info.value.errors()] == [("timestamp",)]


def test_timestamp_may_not_be_far_in_the_future() -> None:
    soon = (datetime.now(UTC) + timedelta(hours=20)).isoformat()
    Transaction.model_validate(transaction(timestamp=soon))
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    with pytest.raises(ValidationError, match="future"):
        Transaction.model_validate(transaction(timestamp=later))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", True),
        ("amount", float("inf")),
        ("amount", 1e9 + 1),
        ("currency", "EURO"),
        ("channel", "POS"),
        ("country", "de"),
        ("device_id", ""),
        ("merchant_id", "x" * 129),
        ("ip_address", "1.2.3"),
    ],
)
def test_field_rules(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Transaction.model_validate(transaction(**{field: value}))
    assert info.value.errors()[0]["loc"] == (field,)


def test_optional_fields_validate() -> None:
    t = Transaction.model_validate(
        transaction(ip_address="2001:db8::1", country="DE", device_id="d")
    )
    assert str(t.ip_address) == "2001:db8::1"
    assert Transaction.model_validate(transaction(amount=1e9)).amount == 1e9


def test_batch_item_has_exactly_one_of_result_and_error() -> None:
    problem = Problem(type="t", title="x", status=422, detail="d")
    BatchItemResult(index=0, status=422, error=problem)
    with pytest.raises(ValidationError):
        BatchItemResult(index=0, status=200)


def test_payload_hash_is_about_meaning() -> None:
    base = Transaction.model_validate(transaction())
    same = Transaction.model_validate(dict(reversed(list(transaction(amount=10.0).items()))))
    assert payload_hash(base) == payload_hash(same)
    # The same instant in another offset is another hour of day for the model: another payload.
    other = Transaction.model_validate(transaction(timestamp="2024-06-01T08:00:00Z"))
    assert payload_hash(base) != payload_hash(other)
    assert payload_hash(base) != payload_hash(Transaction.model_validate(transaction(amount=10.01)))


# --- settings --------------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ENCODER_URL", "http://encoder:8001")
    monkeypatch.setenv("GATEWAY_TOTAL_BUDGET_S", "0.25")
    monkeypatch.setenv("GATEWAY_MODEL_VERSION", "7")
    settings = GatewaySettings()
    assert settings.encoder_url == "http://encoder:8001"
    assert settings.total_budget_s == 0.25
    assert settings.model_version == "7"
    assert settings.max_batch == 1000 and settings.decision_ttl_s == 86400
    assert undocumented_fields(GatewaySettings) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"total_budget_s": 0},
        {"encoder_timeout_s": -1},
        {"predictor_timeout_s": 0.5},
        {"batch_hop_timeout_s": 5.0},
        {"metadata_refresh_s": 0},
        {"decision_store_timeout_s": 0.5},
    ],
)
def test_production_refuses_unsafe_settings(changes: dict[str, Any]) -> None:
    GatewaySettings(**changes)  # tolerated in development
    with pytest.raises(ValidationError, match="unsafe settings for production"):
        GatewaySettings(environment="production", **changes)


def test_production_accepts_the_defaults_with_a_secret() -> None:
    GatewaySettings(environment="production", auth_secret="s3cret-from-the-vault")


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"auth_secret": ""},
        {"auth_enabled": False, "auth_secret": "x"},
    ],
)
def test_production_refuses_auth_off_or_the_development_secret(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="unsafe settings for production"):
        GatewaySettings(environment="production", **changes)
    GatewaySettings(environment="production", auth_enabled=False, allow_auth_disabled=True)


# --- serving policy --------------------------------------------------------------------------

NAMES = [
    "card_stats__card_txn_count_1h",
    "merchant_stats__merchant_txn_count_24h",
    "device_stats__device_txn_count_24h",
    "request_features__txn_amount",
    "request_features__is_new_device",
]


def row(missing: list[bool], stale: list[bool] | None = None) -> EncodedRow:
    return EncodedRow(
        values=[None if m else 1.0 for m in missing],
        missing=missing,
        stale=stale or [False] * len(missing),
        age_seconds=[None if m else 1.0 for m in missing],
    )


def test_stored_and_on_demand_features() -> None:
    assert stored_mask(NAMES) == [True, True, True, False, False]
    assert not any(is_stored(f"request_features__{name}") for name in OUTPUT_FEATURES)


def test_policy_verdicts() -> None:
    stored = stored_mask(NAMES)
    policy = ServingPolicy(max_missing_stored_fraction=0.5, stale_is_uncertain=True)
    assert policy_verdict(row([False] * 5), stored, policy) is None
    # On-demand features missing do not count against the stored fraction.
    assert policy_verdict(row([True, False, False, True, True]), stored, policy) is None
    assert (
        policy_verdict(row([True, True, False, False, False]), stored, policy) == FEATURES_MISSING
    )
    stale = row([True, False, False, False, False], [True, False, False, False, False])
    assert policy_verdict(stale, stored, policy) == FEATURES_STALE
    lenient = ServingPolicy(max_missing_stored_fraction=0.5, stale_is_uncertain=False)
    assert policy_verdict(stale, stored, lenient) is None


# --- reasons ---------------------------------------------------------------------------------

CTX = Context(currency="EUR", device_present=True, raising=True)


@pytest.mark.parametrize("feature", sorted(TEMPLATES))
@pytest.mark.parametrize("value", [None, 0.0, 1.0, 2.5, 86400.0 * 3])
def test_every_template_says_something(feature: str, value: float | None) -> None:
    code, text = describe(f"some_view__{feature}", value, CTX)
    assert code.isupper() and text and "{" not in text and "None" not in text


def test_sentences() -> None:
    assert describe("request_features__amount_to_card_avg_30d", 8.04, CTX)[1] == (
        "amount is 8× this card's 30-day average"
    )
    assert describe("request_features__amount_to_card_avg_30d", 2.46, CTX)[1] == (
        "amount is 2.5× this card's 30-day average"
    )
    # Windows end at this transaction, and the sentence says so.
    assert describe("card_stats__card_txn_count_1h", 1.0, CTX)[1] == (
        "1 transaction on this card in the hour before this transaction"
    )
    assert describe("device_stats__device_distinct_cards_7d", 4.0, CTX)[1] == (
        "4 cards used on this device in the 7 days before this transaction"
    )
    assert describe("card_stats__card_distinct_countries_30d", 2.0, CTX)[1] == (
        "2 countries where this card was used in the 30 days before this transaction"
    )
    assert describe("card_stats__card_amount_avg_30d", 33.1, CTX)[1] == (
        "this card's average amount in the 30 days before this transaction is 33.10 EUR"
    )
    assert describe("request_features__seconds_since_card_last_txn", 90.0, CTX) == (
        "RAPID_SUCCESSION",
        "2 minutes since this card's previous transaction",
    )
    assert describe("request_features__txn_amount", 1234.5, CTX)[1] == "amount of 1,234.50 EUR"
    assert describe("request_features__hour_of_day", 3.0, CTX)[0] == "NIGHT_TIME"
    no_device = Context(currency="EUR", device_present=False, raising=True)
    assert describe("device_stats__device_txn_count_24h", None, no_device)[0] == "NO_DEVICE"
    assert describe("card_stats__card_txn_count_1h", None, CTX)[0] == "NO_CARD_HISTORY"
    assert describe("new_view__brand_new_feature", 3.0, CTX) == (
        "MODEL_SIGNAL",
        "brand new feature is 3",
    )


def test_explain_orders_dedupes_and_caps() -> None:
    names = [
        "request_features__is_new_device",
        "request_features__device_age_days",
        "request_features__country_mismatch",
        "card_stats__card_txn_count_1h",
        "request_features__is_night",
    ]
    values = [1.0, None, 1.0, 6.0, 0.0]
    contributions = [1.0, 0.9, 0.5, 2.0, -0.3, -1.0]  # the last one is the bias
    reasons = explain(
        "highly_suspicious",
        names,
        values,
        contributions,
        currency="EUR",
        device_present=True,
        max_reasons=3,
    )
    assert [r.code for r in reasons] == ["CARD_VELOCITY_1H", "NEW_DEVICE", "COUNTRY_MISMATCH"]
    assert reasons[0].feature == "card_stats__card_txn_count_1h" and reasons[0].value == 6.0

    # not_fraud is "no risk signal" alone: no contributions are fetched for it (and any that
    # came would not be listed).
    for given in (contributions, None):
        safe = explain(
            "not_fraud", names, values, given, currency="EUR", device_present=True, max_reasons=3
        )
        assert [(r.code, r.feature) for r in safe] == [("NO_RISK_SIGNAL", None)]

    flat = explain(
        "suspicious", names, values, [0.0] * 6, currency="EUR", device_present=True, max_reasons=3
    )
    assert [r.code for r in flat] == ["MODEL_BASELINE"]
    # A flagged transaction the predictor did not explain still gets a reason.
    unexplained = explain(
        "suspicious", names, values, None, currency="EUR", device_present=True, max_reasons=3
    )
    assert [r.code for r in unexplained] == ["MODEL_BASELINE"]


# --- the predictor's wire format (V2 binary tensors) ------------------------------------------


def test_features_are_sent_as_little_endian_fp32_with_nan_for_missing() -> None:
    rows = [[1.5, None, -2.0], [0.1, 1e39, 3.0]]
    content, headers = encode_request(
        rows, request_id="r-1", feature_contract="sha256:x", contributions_min_score=0.25
    )
    length = int(headers["Inference-Header-Content-Length"])
    assert headers["content-type"] == "application/octet-stream"
    header = json.loads(content[:length])
    assert header["id"] == "r-1"
    assert header["parameters"] == {"feature_contract": "sha256:x", "contributions_min_score": 0.25}
    [tensor] = header["inputs"]
    assert tensor["shape"] == [2, 3] and tensor["datatype"] == "FP32" and "data" not in tensor
    assert (
        tensor["parameters"]
        == {"binary_data_size": 24}
        == {"binary_data_size": len(content) - length}
    )
    assert [o["name"] for o in header["outputs"]] == ["score", "contributions"]
    assert all(o["parameters"] == {"binary_data": True} for o in header["outputs"])
    values = struct.unpack("<6f", content[length:])
    assert values[0] == 1.5 and math.isnan(values[1]) and values[2] == -2.0
    assert values[3] == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert values[4] == math.inf  # out of FP32 range: the predictor refuses it, as it did in JSON
    # Without a threshold the predictor explains every row.
    content, headers = encode_request(
        rows, request_id="r", feature_contract="c", contributions_min_score=None
    )
    assert (
        "contributions_min_score"
        not in json.loads(content[: int(headers["Inference-Header-Content-Length"])])["parameters"]
    )


def _binary_answer(outputs: dict[str, tuple[list[int], list[float]]]) -> tuple[bytes, str]:
    chunks = [struct.pack(f"<{len(flat)}f", *flat) for _, flat in outputs.values()]
    header = json.dumps(
        {
            "model_name": "m",
            "model_version": "1",
            "outputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(chunk)},
                }
                for (name, (shape, _)), chunk in zip(outputs.items(), chunks, strict=True)
            ],
        }
    ).encode()
    return header + b"".join(chunks), str(len(header))


def test_binary_and_json_answers_decode_alike() -> None:
    scores = [0.25, 0.75]
    contributions = [math.nan] * 4 + [0.5, -0.25, 1.0, -3.0]
    content, length = _binary_answer(
        {"score": ([2], scores), "contributions": ([2, 4], contributions)}
    )
    body, outputs = decode_outputs(content, length)
    assert body["model_version"] == "1"
    assert list(outputs["score"]) == scores
    assert split_rows(outputs["contributions"], 2, 4) == [None, [0.5, -0.25, 1.0, -3.0]]
    as_json = json.dumps(
        {
            "model_name": "m",
            "model_version": "1",
            "outputs": [
                {"name": "score", "datatype": "FP32", "shape": [2], "data": scores},
                {
                    "name": "contributions",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "data": [[None] * 4, [0.5, -0.25, 1.0, -3.0]],
                },
            ],
        }
    ).encode()
    _, from_json = decode_outputs(as_json, None)
    assert list(from_json["score"]) == scores
    assert split_rows(from_json["contributions"], 2, 4) == [None, [0.5, -0.25, 1.0, -3.0]]


@pytest.mark.parametrize("damage", ["short", "trailing", "length-beyond-body", "not-fp32"])
def test_malformed_binary_answers_are_refused(damage: str) -> None:
    content, length = _binary_answer({"score": ([2], [0.25, 0.75])})
    if damage == "short":
        content = content[:-1]
    elif damage == "trailing":
        content += b"\0\0\0\0"
    elif damage == "length-beyond-body":
        length = str(len(content) + 1)
    else:
        content = content.replace(b'"FP32"', b'"FP64"')
    with pytest.raises(ValueError):
        decode_outputs(content, length)


def _json_answer(scores: Any, contributions: Any) -> bytes:
    return json.dumps(
        {
            "model_name": "m",
            "model_version": "1",
            "outputs": [
                {"name": "score", "datatype": "FP32", "shape": [2], "data": scores},
                {
                    "name": "contributions",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "data": contributions,
                },
            ],
        }
    ).encode()


@pytest.mark.parametrize(
    "body", [[], "fraud_detector", {"name": "fraud_detector"}, {"parameters": ["1"]}]
)
def test_model_metadata_that_is_not_an_object_with_parameters_is_a_type_error(body) -> None:
    """The metadata client turns a TypeError into an invalid answer (a typed downstream error);
    anything else (an AttributeError on a list) had been a 500."""
    from vigil_gateway.model_metadata import ModelMetadata

    with pytest.raises(TypeError, match="not an object"):
        ModelMetadata.from_v2(body)


@pytest.mark.parametrize(
    "content,length",
    [
        (b"not json", None),
        (b'{"outputs": ["score"]}', None),
        (b'{"model_name": "m", "model_version": "1", "outputs": []}', None),
        (_json_answer([0.5, 1.5], [0.0] * 8), None),  # a score outside [0, 1]
        (_json_answer([0.5, None], [0.0] * 8), None),  # a missing score
        (_json_answer([0.5], [0.0] * 8), None),  # one score for two rows
        (_json_answer([0.5, 0.5], [0.0] * 7), None),
        (_binary_answer({"score": ([2], [0.5, 0.5])})[0], "9999"),
    ],
    ids=[
        "not-json",
        "outputs-not-objects",
        "no-outputs",
        "score-above-one",
        "score-null",
        "too-few-scores",
        "too-few-contributions",
        "bad-header-length",
    ],
)
def test_answers_that_are_not_v2_are_invalid_responses(content: bytes, length: str | None) -> None:
    client = PredictorClient(None, GatewayMetrics(), 1.0)  # type: ignore[arg-type]  # no HTTP here
    headers = {} if length is None else {"Inference-Header-Content-Length": length}
    with pytest.raises(DownstreamError) as caught:
        client._decode(httpx.Response(200, content=content, headers=headers), 2, 3)
    assert caught.value.kind == "invalid_response"


@pytest.mark.parametrize(
    "args",
    [
        (b"PING",),
        (b"MGET", b"vigil:decision:a", b"vigil:decision:b"),
        (b"SET", b"k", b"", b"EX", b"86400", b"NX"),
        (
            b"EVALSHA",
            b"f" * 40,
            b"2",
            b"k1",
            b"k2",
            b"1",
            b"60",
            "é\r\n$3".encode(),
            bytes(range(256)),
        ),
    ],
)
def test_decision_commands_are_packed_as_redis_py_packs_them(args: tuple[bytes, ...]) -> None:
    """The decision store packs its commands itself; the bytes are redis-py's, whatever the
    arguments hold (empty, CR LF, RESP markers, any byte)."""
    from redis.connection import Connection

    assert pack_command(*args) == b"".join(Connection().pack_command(*args))


def test_every_code_the_gateway_can_give_is_published() -> None:
    """docs/reasons.md is the published list: every code a template, an uncertain answer or a
    shipped safeguard can give is in it."""
    import re
    from pathlib import Path

    from vigil_gateway.safeguards import load_rules
    from vigil_gateway.uncertain import TEXT

    published = set(
        re.findall(
            r"`([A-Z][A-Z0-9_]+)`",
            (Path(__file__).resolve().parent.parent / "docs" / "reasons.md").read_text(),
        )
    )
    given: set[str] = {"NO_RISK_SIGNAL", "MODEL_BASELINE", "MODEL_SIGNAL", *TEXT}
    given |= {rule.code for rule in load_rules().rules}
    for feature in TEMPLATES:
        for view in ("card_stats", "merchant_stats", "device_stats", "request_features"):
            for value in (None, 0.0, 0.5, 1.0, 2.5, 7.0, 3600.0, 86400.0 * 3):
                for ctx in (
                    CTX,
                    Context(currency="USD", paid=9.0, device_present=False, raising=False),
                    Context(currency="EUR", device_present=True, raising=False),
                ):
                    given.add(describe(f"{view}__{feature}", value, ctx)[0])
    assert given - published == set()


async def test_the_model_metadata_refresh_outlives_a_failure_that_is_not_the_predictors() -> None:
    """A refresh that fails for a reason no code expected (a bug) is logged and counted, and
    the refresher goes on: the metadata is read on its next turn (before, the task died and the
    metadata went stale for good while /readyz kept saying ready)."""
    import asyncio

    from vigil_gateway.model_catalog import ModelCatalog

    metrics = GatewayMetrics()
    catalog = ModelCatalog(
        None,  # type: ignore[arg-type]  # no predictor: _fetch is replaced below
        metrics,
        name="fraud_detector",
        pinned_version=None,
        refresh_s=0.01,
        fetch_timeout_s=1.0,
    )
    import test_gateway

    meta = ModelMetadata.from_v2(
        {
            "name": test_gateway.MODEL,
            "parameters": {
                "version": "3",
                "feature_service": test_gateway.SERVICE,
                "feature_names": test_gateway.FEATURES,
                "feature_contract": test_gateway.CONTRACT,
                "thresholds": test_gateway.THRESHOLDS["3"],
            },
        }
    )
    answers: list[object] = [RuntimeError("a bug"), meta]

    async def fetch(version, timeout, request_id=None):
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    catalog._fetch = fetch  # type: ignore[method-assign]
    task = asyncio.create_task(catalog.run())
    for _ in range(300):
        if catalog.current is not None:
            break
        await asyncio.sleep(0.01)
    assert catalog.current is meta and not task.done()
    assert metrics.metadata_refresh_errors._value.get() == 1
    task.cancel()
