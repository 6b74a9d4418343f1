"""The gateway's cheap paths give exactly what the straightforward ones gave: batch validation in
one call, payload hashes from field values, stored decisions and batch answers serialised without
intermediate models, the encoder's answer read without pydantic. No app, no network."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from vigil_contracts.api import BatchResponse, ModelRef, Reason, ScoreResponse, Transaction
from vigil_contracts.encoding import EncodeResponse
from vigil_contracts.thresholds import label_for_score
from vigil_gateway.decisions import StoredDecision, encode_entry, payload_hash
from vigil_gateway.encoder_client import parse_encode_response
from vigil_gateway.errors import DecisionConflict, InvalidTransaction
from vigil_gateway.rest import batch_response_body
from vigil_gateway.validation import invalid_params, summary, validate_items


def transaction(**changes: Any) -> dict[str, Any]:
    body = {
        "transaction_id": "tx-1",
        "card_id": "c1",
        "merchant_id": "m1",
        "amount": 10,
        "currency": "EUR",
        "timestamp": "2024-06-01T10:00:00+02:00",
        "channel": "pos",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


VARIANTS = [
    transaction(),
    transaction(amount=12.5, timestamp="2024-06-01T08:00:00Z"),
    transaction(timestamp="2024-06-01t08:00:00.123456789z", ip_address="2001:DB8::1"),
    transaction(timestamp="2024-06-01 08:00:00.5-00:00", ip_address="10.0.0.1", country="DE"),
    transaction(timestamp="2024-06-01T08:00:00.000001+05:30", device_id="d-1", channel="mobile"),
    transaction(ip_address="::ffff:1.2.3.4", amount=1e9),
]


@pytest.mark.parametrize("body", VARIANTS, ids=range(len(VARIANTS)))
def test_payload_hash_is_the_hash_of_the_json_dump(body: dict[str, Any]) -> None:
    # What decisions already in the store were hashed with: they must keep matching.
    t = Transaction.model_validate(body)
    canonical = orjson.dumps(t.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    assert payload_hash(t) == "sha256:" + hashlib.sha256(canonical).hexdigest()


def test_payload_hash_of_many_addresses_is_the_hash_of_the_json_dump() -> None:
    import random

    rng = random.Random(11)
    for _ in range(300):
        octets = [rng.choice([0, 1, 9, 10, 99, 100, 255, rng.randrange(256)]) for _ in range(4)]
        t = Transaction.model_validate(transaction(ip_address=".".join(map(str, octets))))
        canonical = orjson.dumps(t.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        assert payload_hash(t) == "sha256:" + hashlib.sha256(canonical).hexdigest()


def test_batch_validation_equals_validating_each_item() -> None:
    items: list[Any] = [
        *VARIANTS,
        transaction(currency="eur"),
        "not an object",
        None,
        5,
        transaction(amount=-1, timestamp="yesterday"),
        {"transaction_id": "x"},
        transaction(extra_field=1),
        transaction(amount=True),
    ]
    outcomes = validate_items(items)
    assert len(outcomes) == len(items)
    for i, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
        try:
            expected = Transaction.model_validate(item)
        except ValidationError as exc:
            params = invalid_params(exc.errors(), ("transactions", i))
            assert isinstance(outcome, InvalidTransaction), i
            assert outcome.invalid_params == params and outcome.detail == summary(params)
        else:
            assert outcome == expected, i
    assert sum(isinstance(o, Transaction) for o in outcomes) == len(VARIANTS)
    assert all(isinstance(o, Transaction) for o in validate_items(VARIANTS))


def _answer(tid: str, **changes: Any) -> ScoreResponse:
    values: dict[str, Any] = {
        "transaction_id": tid,
        "label": "highly_suspicious",
        "score": 0.912345,
        "reasons": [
            Reason(
                code="AMOUNT_HIGH_FOR_CARD",
                text="amount is 8× this card's average",
                feature="request_features__amount_to_card_avg_30d",
                value=8.0,
                contribution=1.2345,
            ),
            Reason(code="NEW_DEVICE", text="first transaction from this device"),
        ],
        "model": ModelRef(name="fraud_detector", version="3"),
        "degraded": False,
        "request_id": "req-1",
    }
    values.update(changes)
    return ScoreResponse(**values)


def test_a_stored_entry_is_what_storing_the_decision_wrote() -> None:
    answer = _answer("tx-9")
    entry = orjson.loads(encode_entry(answer, "sha256:abc"))
    legacy = orjson.loads(StoredDecision.of(answer, "sha256:abc").encode())
    assert entry.pop("stored_at") == pytest.approx(legacy.pop("stored_at"), abs=5)
    assert entry == legacy
    replayed = StoredDecision.decode(encode_entry(answer, "sha256:abc")).replay("req-2")
    assert replayed == answer.model_copy(update={"request_id": "req-2", "cached": True})


def test_the_batch_body_is_the_batch_response_model() -> None:
    conflict = DecisionConflict("transaction_id 'tx-3' was already scored")
    invalid = validate_items([transaction(currency="eur")])[0]
    assert isinstance(invalid, InvalidTransaction)
    outcomes = [
        _answer("tx-1"),
        conflict,
        _answer("tx-2", cached=True, score=None, label="uncertain", degraded=True),
        invalid,
    ]
    body = batch_response_body(
        outcomes, request_id="req-1", instance="/v1/transactions/score-batch"
    )
    expected = BatchResponse(
        request_id="req-1",
        results=[
            {"index": 0, "status": 200, "result": outcomes[0]},
            {
                "index": 1,
                "status": 409,
                "error": conflict.problem(
                    instance="/v1/transactions/score-batch", request_id="req-1"
                ),
            },
            {"index": 2, "status": 200, "result": outcomes[2]},
            {
                "index": 3,
                "status": 422,
                "error": invalid.problem(
                    instance="/v1/transactions/score-batch", request_id="req-1"
                ),
            },
        ],
    )
    assert body == expected.model_dump_json().encode()  # byte for byte what the model writes
    assert BatchResponse.model_validate_json(body) == expected


def _encoded(n: int = 2, width: int = 3) -> dict[str, Any]:
    return {
        "feature_service": "svc",
        "feature_names": [f"v__f{j}" for j in range(width)],
        "feature_contract": "sha256:x",
        "rows": [
            {
                "values": [1.5, None, 3] if width == 3 else [0.0] * width,
                "missing": [False, True, False][:width] + [False] * (width - 3),
                "stale": [False] * width,
                "age_seconds": [10.0, None, 0][:width] + [0.0] * (width - 3),
            }
            for _ in range(n)
        ],
    }


def test_the_encoder_answer_reads_like_the_encode_response_model() -> None:
    content = orjson.dumps(_encoded())
    parsed = parse_encode_response(content, 2)
    model = EncodeResponse.model_validate_json(content)
    assert parsed.feature_names == model.feature_names
    assert parsed.feature_contract == model.feature_contract
    assert parsed.feature_service == model.feature_service
    for ours, theirs in zip(parsed.rows, model.rows, strict=True):
        for name in ("values", "missing", "stale", "age_seconds"):
            assert getattr(ours, name) == getattr(theirs, name)


def _broken(change: str) -> bytes:
    body = _encoded()
    row = body["rows"][1]
    if change == "not-json":
        return b"{nope"
    if change == "list":
        return b"[]"
    if change == "row-count":
        body["rows"].pop()
    elif change == "width":
        row["values"].append(1.0)
    elif change == "flags-width":
        row["stale"] = [False]
    elif change == "value-text":
        row["values"][0] = "1.5"
    elif change == "value-bool":
        row["values"][0] = True
    elif change == "age-text":
        row["age_seconds"][0] = "10"
    elif change == "flag-number":
        row["missing"][0] = 2
    elif change == "flag-null":
        row["stale"][0] = None
    elif change == "row-not-object":
        body["rows"][1] = [1, 2]
    elif change == "no-ages":
        del row["age_seconds"]
    elif change == "names":
        body["feature_names"][0] = 7
    elif change == "contract":
        body["feature_contract"] = None
    elif change == "values-not-list":
        row["values"] = {"a": 1}
    return orjson.dumps(body)


@pytest.mark.parametrize(
    "change",
    [
        "not-json",
        "list",
        "row-count",
        "width",
        "flags-width",
        "value-text",
        "value-bool",
        "age-text",
        "flag-number",
        "flag-null",
        "row-not-object",
        "no-ages",
        "names",
        "contract",
        "values-not-list",
    ],
)
def test_an_encoder_answer_that_is_not_one_is_refused(change: str) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_encode_response(_broken(change), 2)


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4",
        "0.0.0.0",
        "255.255.255.255",
        "10.0.0.1",
        "01.2.3.4",
        "1.2.3.04",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4\n",
        "1.2.3.4\x00",
        "1.2.3.-4",
        "1.2.3.+4",
        "0x1.2.3.4",
        "1..3.4",
        "\u0661.2.3.4",
        "1.2.3.00",
        "::ffff:1.2.3.4",
        "2001:DB8::1",
    ],
)
def test_the_ipv4_fast_path_accepts_and_refuses_exactly_what_ipaddress_does(text: str) -> None:
    from pydantic import IPvAnyAddress, TypeAdapter

    try:
        expected: Any = TypeAdapter(IPvAnyAddress).validate_python(text)
    except ValidationError:
        expected = "refused"
    try:
        got: Any = Transaction(**transaction(ip_address=text)).ip_address
    except ValidationError as exc:
        assert exc.errors()[0]["loc"] == ("ip_address",)
        got = "refused"
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("request_id", ["req-1", "ü-ñ-\u2028", 'quote"back\\slash', "\x01ctl"])
@pytest.mark.parametrize("cached", [False, True])
def test_an_answer_built_from_its_stored_part_is_its_own_serialisation(request_id, cached) -> None:
    from vigil_gateway.decisions import answer_json, decision_json

    for answer in (
        ScoreResponse(
            transaction_id="tx-1",
            label="suspicious",
            score=0.612345,
            reasons=[
                Reason(
                    code="AMOUNT_HIGH_FOR_CARD",
                    text="8x the card's average",
                    feature="f",
                    value=8.0,
                    contribution=1.25,
                )
            ],
            model=ModelRef(name="m", version="3"),
            degraded=False,
            request_id=request_id,
            cached=cached,
        ),
        ScoreResponse(
            transaction_id="tx-2",
            label="not_fraud",
            score=1e-7,
            reasons=[Reason(code="NO_RISK_SIGNAL", text="none")],
            model=ModelRef(name="m", version=None),
            degraded=False,
            request_id=request_id,
            cached=cached,
        ),
    ):
        own = ScoreResponse.__pydantic_serializer__.to_json(answer)
        assert answer_json(decision_json(answer), request_id, cached) == own


def _odd_answers() -> list[ScoreResponse]:
    """Answers of every shape a batch can hold, ids and reasons that need escaping included."""
    import random

    from vigil_gateway.reasons import explain

    rng = random.Random(3)
    shared = explain("not_fraud", [], [], None, currency="EUR", device_present=True, max_reasons=3)
    models = [
        ModelRef(name="fraud_detector", version="3"),
        ModelRef(name="m", version=None),
        ModelRef(name='q"uote', version="ü-\u2028"),
    ]
    ids = ["tx-1", "ü-ñ", 'quote"back\\slash', "\x01ctl", "a" * 64]
    scores = [0.0, 1.0, 1e-7, 1e-6, 0.5, 0.123456, 5e-324, None, float("nan"), float("inf")]
    answers = []
    for n in range(400):
        k = rng.randrange(4)
        reasons = (
            shared
            if k == 0
            else []
            if k == 1
            else [
                Reason(
                    code="AMOUNT_HIGH_FOR_CARD",
                    text='8× the card\'s "average"',
                    feature="f",
                    value=rng.choice([8.0, None, 1e-9]),
                    contribution=rng.choice([1.25, -0.5, None]),
                )
            ]
            * rng.randrange(1, 4)
        )
        answers.append(
            ScoreResponse(
                transaction_id=rng.choice(ids) + str(n),
                label=rng.choice(["not_fraud", "suspicious", "highly_suspicious", "uncertain"]),
                score=rng.choice(scores) if rng.random() < 0.5 else rng.random(),
                reasons=reasons,
                model=rng.choice(models),
                degraded=rng.random() < 0.2,
                request_id="req-1",
            )
        )
    return answers


def test_decisions_of_a_batch_are_what_the_model_serialiser_writes() -> None:
    from vigil_gateway.decisions import decision_json, decisions_json

    answers = _odd_answers()
    expected = [
        ScoreResponse.__pydantic_serializer__.to_json(a, exclude={"request_id", "cached"})
        for a in answers
    ]
    assert decisions_json(answers) == expected
    assert [decision_json(a) for a in answers] == expected
    assert decisions_json([]) == []


def test_stored_entries_of_a_batch_are_what_storing_each_decision_wrote() -> None:
    from vigil_gateway.decisions import decisions_json, encode_entries

    answers = _odd_answers()[:50]
    hashes = [f"sha256:{i:064x}" for i in range(len(answers))]
    entries = encode_entries(decisions_json(answers), hashes, "req-1")
    for answer, payload, entry in zip(answers, hashes, entries, strict=True):
        legacy = orjson.loads(StoredDecision.of(answer, payload).encode())
        got = orjson.loads(entry)
        assert got.pop("stored_at") == pytest.approx(legacy.pop("stored_at"), abs=5)
        assert got == legacy
        if answer.score is None or math.isfinite(answer.score):  # JSON has no NaN nor inf
            assert StoredDecision.decode(entry).replay("req-2") == answer.model_copy(
                update={"request_id": "req-2", "cached": True}
            )


@pytest.mark.parametrize(
    "segments",
    [
        {},
        # ecom flags lower than the global pair, pos higher; mobile has none.
        {
            "channel": {
                "ecom": {"suspicious": 0.2, "highly_suspicious": 0.5},
                "pos": {"suspicious": 0.5, "highly_suspicious": 0.9},
            }
        },
    ],
    ids=["global", "segments"],
)
def test_answers_of_a_batch_are_what_postprocessing_each_row_gives(
    segments: dict[str, Any],
) -> None:
    import random

    from vigil_contracts.api import SafeguardsRef
    from vigil_gateway.encoder_client import EncodedVector, EncodedVectors
    from vigil_gateway.model_metadata import ModelMetadata
    from vigil_gateway.postprocess import Postprocess
    from vigil_gateway.predictor_client import Inference
    from vigil_gateway.safeguards import Checked

    rng = random.Random(5)
    names = [
        "card_stats__card_amount_avg_30d",
        "merchant_stats__merchant_fraud_rate_30d",
        "request_features__amount_to_card_avg_30d",
        "request_features__txn_hour",
    ]
    meta = ModelMetadata(
        name="fraud_detector",
        version="7",
        feature_service="svc",
        feature_names=names,
        feature_contract="sha256:x",
        thresholds={"suspicious": 0.3, "highly_suspicious": 0.7},
        segment_thresholds=segments,
    )
    n = 300
    encoded = EncodedVectors(
        "svc",
        names,
        "sha256:x",
        [
            EncodedVector(
                [rng.choice([None, rng.uniform(0, 50)]) for _ in names],
                [False] * 4,
                [False] * 4,
                [0.0] * 4,
            )
            for _ in range(n)
        ],
    )
    rows = sorted(rng.sample(range(n), 200))
    # Scores on and around the thresholds, and contributions missing for some flagged rows.
    scores = [
        rng.choice([0.0, 0.1999999, 0.2, 0.2999999, 0.3, 0.4, 0.5, 0.7, 0.9, 0.9999, rng.random()])
        for _ in rows
    ]
    contributions = [
        None if rng.random() < 0.3 else [rng.uniform(-2, 2) for _ in range(5)] for _ in rows
    ]
    inference = Inference("fraud_detector", "7", scores, contributions)
    transactions = [
        Transaction.model_validate(
            transaction(
                transaction_id=f"tx-{i}",
                device_id=rng.choice([None, "d1"]),
                currency=rng.choice(["EUR", "JPY"]),
                channel=rng.choice(["pos", "ecom", "mobile"]),
            )
        )
        for i in range(n)
    ]
    postprocess = Postprocess(None, max_reasons=3)  # type: ignore[arg-type]
    checked = Checked(SafeguardsRef(version="1"), {})
    many = postprocess.answers(transactions, encoded, rows, inference, meta, checked, "req-1")
    one_by_one = [
        postprocess.answer(transactions[i], encoded, i, inference, k, meta, checked, "req-1")
        for k, i in enumerate(rows)
    ]
    assert many == one_by_one
    for k, (i, answer) in enumerate(zip(rows, many, strict=True)):  # each by its own pair
        pair = segments.get("channel", {}).get(
            transactions[i].channel, meta.thresholds.as_mapping()
        )
        assert answer.label == label_for_score(scores[k], pair)
    assert {a.label for a in many} == {"not_fraud", "suspicious", "highly_suspicious"}
    for fast, slow in zip(many, one_by_one, strict=True):  # the same objects, not only equal ones
        assert type(fast) is ScoreResponse
        assert fast.__dict__ == slow.__dict__
        assert fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__
        assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (None, None)
        assert fast.model_dump_json() == slow.model_dump_json()
        assert fast.model_copy(update={"cached": True}).cached is True
    not_fraud = [a for a in many if a.label == "not_fraud"]
    assert not_fraud[0].reasons is not not_fraud[1].reasons  # each its own list, as validated


def test_the_not_fraud_shortcut_is_in_use_and_equal_to_the_constructor() -> None:
    from vigil_contracts.api import ModelRef
    from vigil_gateway import fast_answers
    from vigil_gateway.reasons import NO_RISK_REASON

    # With the pydantic this project pins, the shortcut holds (else it falls back, warning).
    assert fast_answers.not_fraud is fast_answers._not_fraud_fast
    from vigil_contracts.api import SafeguardsRef

    model = ModelRef(name="fraud_detector", version="7")
    for score in (0.0, 1e-9, 0.2999999, 0.125):
        args = (f"tx-{score}", score, NO_RISK_REASON, model, SafeguardsRef(version="1"), "req-1")
        fast, slow = fast_answers._not_fraud_fast(*args), fast_answers.not_fraud_validated(*args)
        assert fast_answers._same(fast, slow)
        assert fast == slow and fast.model_dump_json() == slow.model_dump_json()
