"""How the encoder reads an encode request: the route's fast path for plain bodies and the row
checks' fast path give exactly what validating through the models and checking field by field
give. No app, no Redis."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from vigil_contracts.encoding import EncodeRequest
from vigil_encoder.errors import InvalidEncodeRequest
from vigil_encoder.rest import parse_encode_request
from vigil_encoder.validation import _request_value, check_columns, check_rows

FIELDS = {
    "amount": "Float64",
    "txn_epoch": "Float64",
    "txn_hour": "Int64",
    "channel": "String",
    "country": "String",
    "device_present": "Int64",
    "flag": "Bool",
}
PLAN = SimpleNamespace(name="svc", request_fields=FIELDS, join_keys=("card_id", "merchant_id"))


def row(**request: Any) -> dict[str, Any]:
    values = {
        "amount": 12.5,
        "txn_epoch": 1.7e9,
        "txn_hour": 3,
        "channel": "pos",
        "country": "DE",
        "device_present": 1,
        "flag": True,
    }
    values.update(request)
    return {
        "entities": {"card_id": "c1", "merchant_id": "m1"},
        "request": {k: v for k, v in values.items() if v is not ...},
    }


def _expected(body: Any) -> tuple[str, list[dict[str, Any]]] | list[dict[str, Any]]:
    """What validating through ``EncodeRequest`` (as FastAPI did) gives: rows, or the errors."""
    try:
        request = EncodeRequest.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        return [
            {"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
    return request.feature_service, [
        {"entities": r.entities, "request": r.request} for r in request.rows
    ]


BODIES: list[Any] = [
    {"feature_service": "svc", "rows": [row(), row(country=None)]},
    {"feature_service": "svc", "rows": [row(amount=12, flag=False)], "extra": 1},
    {"feature_service": "svc", "rows": [{**row(), "extra": 1}]},
    {"feature_service": "svc", "rows": [row(amount=True, device_present=False)]},  # bools convert
    {"feature_service": "svc", "rows": [row(amount=[1])]},
    {"feature_service": "svc", "rows": [row(amount={"a": 1})]},
    {"feature_service": "svc", "rows": [{"entities": {"card_id": 5}, "request": {}}]},
    {"feature_service": "svc", "rows": [{"entities": {"card_id": None}, "request": {}}]},
    {"feature_service": "svc", "rows": [{"entities": ["c"], "request": {}}]},
    {"feature_service": "svc", "rows": [{"request": {}}]},
    {"feature_service": "svc", "rows": ["x", None]},
    {"feature_service": "svc", "rows": []},
    {"feature_service": "svc", "rows": {"a": 1}},
    {"feature_service": 5, "rows": [row()]},
    {"rows": [row()]},
    [1, 2],
    "text",
    None,
    b"raw bytes",
    # one odd row among plain ones, at each level the batch is checked at
    {"feature_service": "svc", "rows": [row(), row(), {"entities": {"card_id": 5}, "request": {}}]},
    {"feature_service": "svc", "rows": [row(), row(amount=True), row()]},
    {"feature_service": "svc", "rows": [row(), row(amount=[1, 2])]},
    {"feature_service": "svc", "rows": [row(), "x", row()]},
    {"feature_service": "svc", "rows": [row(), {"entities": None, "request": {}}]},
    {"feature_service": "svc", "rows": [row(), {"entities": {}, "request": []}]},
    {"feature_service": "svc", "rows": [row(), {"entities": {}}]},
    {"feature_service": "svc", "rows": [row(), {"entities": {}, "request": {}}]},
    {"feature_service": "svc", "rows": [row(txn_hour=3.0, device_present=None), row(country=5)]},
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_a_body_reads_as_the_model_reads_it(body: Any) -> None:
    expected = _expected(body)
    if isinstance(expected, list):
        with pytest.raises(RequestValidationError) as caught:
            parse_encode_request(body)
        assert [
            {k: e[k] for k in ("loc", "msg", "type")} for e in caught.value.errors()
        ] == expected
    else:
        assert parse_encode_request(body) == expected


def _checked_field_by_field(
    rows: list[dict[str, Any]],
) -> list[dict[str, Any]] | list[tuple[str, str]]:
    """The row checks without their fast path: converted rows, or (name, reason) of problems."""
    problems, converted = [], []
    for i, r in enumerate(rows):
        for key in PLAN.join_keys:
            if key not in r["entities"]:
                problems.append((f"rows.{i}.entities.{key}", "missing join key"))
        out = {}
        for name, dtype in FIELDS.items():
            if name not in r["request"]:
                problems.append((f"rows.{i}.request.{name}", f"missing request field ({dtype})"))
                continue
            value, reason = _request_value(dtype, r["request"][name])
            if reason is not None:
                problems.append((f"rows.{i}.request.{name}", f"{reason} ({dtype})"))
            out[name] = value
        converted.append(out)
        if len(problems) >= 20:
            break
    return problems[:20] if problems else converted


CANDIDATES = [
    None,
    True,
    False,
    0,
    1,
    7,
    -3,
    2**70,
    0.0,
    13.0,
    13.5,
    -1e300,
    math.nan,
    math.inf,
    "",
    "x",
    "13",
]


def test_row_checks_equal_field_by_field_checks() -> None:
    rng = random.Random(4)
    for _ in range(400):
        rows = []
        for _ in range(rng.randint(1, 4)):
            r = row(**{name: rng.choice(CANDIDATES) for name in rng.sample(list(FIELDS), 2)})
            if rng.random() < 0.1:
                del r["request"][rng.choice(list(FIELDS))]
            if rng.random() < 0.1:
                del r["entities"]["merchant_id"]
            rows.append(r)
        expected = _checked_field_by_field(rows)
        try:
            got: Any = check_rows(PLAN, rows)  # type: ignore[arg-type]
        except InvalidEncodeRequest as exc:
            got = [(p.name, p.reason) for p in exc.invalid_params or []]
        assert got == expected
        if expected and isinstance(expected[0], dict):
            # Same values *and* types (1 and 1.0 and True compare equal).
            assert [[type(v) for v in r.values()] for r in got] == [
                [type(v) for v in r.values()] for r in expected
            ]


def test_many_bad_rows_report_at_most_twenty_fields() -> None:
    with pytest.raises(InvalidEncodeRequest) as caught:
        check_rows(PLAN, [row(amount="x", txn_hour="y")] * 30)  # type: ignore[arg-type]
    assert len(caught.value.invalid_params or []) == 20


def _as_columns(converted: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [r[name] for r in converted] for name in FIELDS}


def _outcome(check: Any, rows: list[dict[str, Any]]) -> Any:
    try:
        return "ok", check(PLAN, rows)  # type: ignore[arg-type]
    except InvalidEncodeRequest as exc:
        return "problem", exc.detail, [(p.name, p.reason) for p in exc.invalid_params or []]


def test_column_checks_equal_row_checks() -> None:
    """check_columns (one pass per field over the batch) gives the columns of check_rows, value
    for value and type for type, or the very same problem."""
    rng = random.Random(8)
    seen = {"ok": 0, "problem": 0}
    for _ in range(1500):
        rows = []
        for _ in range(rng.choice([1, 2, 5, 40])):
            r = row(
                amount=rng.uniform(-1e6, 1e6),
                txn_epoch=rng.uniform(0, 2e9),
                txn_hour=rng.randrange(24),
                country=rng.choice(["DE", "", None]),
                device_present=rng.choice([0, 1]),
                flag=rng.choice([True, False]),
            )
            if rng.random() < 0.03:
                r["request"][rng.choice(list(FIELDS))] = rng.choice(CANDIDATES + [1e308])
            if rng.random() < 0.01:
                del r["request"][rng.choice(list(FIELDS))]
            if rng.random() < 0.01:
                del r["entities"]["merchant_id"]
            if rng.random() < 0.01:
                r["request"]["extra"] = [1]  # a field of no plan is not looked at
            rows.append(r)
        want = _outcome(check_rows, rows)
        got = _outcome(check_columns, rows)
        seen[want[0]] += 1
        if want[0] == "ok":
            expected = _as_columns(want[1])
            assert got[0] == "ok" and list(got[1]) == list(FIELDS)
            assert got[1] == expected
            assert {k: list(map(type, v)) for k, v in got[1].items()} == {
                k: list(map(type, v)) for k, v in expected.items()
            }
        else:
            assert got == want
    assert seen["ok"] > 500 and seen["problem"] > 200
    assert check_columns(PLAN, []) == {name: [] for name in FIELDS}  # type: ignore[arg-type]
    # finite amounts whose sum is not: converted one by one, all accepted
    huge = [row(amount=1e308), row(amount=1e308)]
    assert check_columns(PLAN, huge)["amount"] == [1e308, 1e308]  # type: ignore[arg-type]
