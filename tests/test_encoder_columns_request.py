"""``POST /v1/encode`` with the rows as columns (``EncodeColumnsRequest``): answered exactly as
the same rows sent as rows are, JSON and binary bytes, metrics and refusals alike.

The body's shape is read as the model reads it (the route's fast path for plain bodies against
``EncodeColumnsRequest.model_validate``), the column checks as the row checks (converted values
and types, refusals naming the same fields), and the answers through the real app
(``create_app``, lifespan run, ``httpx.ASGITransport``) on the session's Redis materialized by
Feast, at a frozen clock so that two requests get the very same ages.
"""

from __future__ import annotations

import json
import math
import random
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from test_encoder import _card_stats_row
from vigil import feast_repo
from vigil_contracts.encoding import BINARY_MEDIA_TYPE, EncodeColumnsRequest
from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_contracts.request_features import NO_DEVICE_ID
from vigil_encoder import dataplane
from vigil_encoder.app import create_app
from vigil_encoder.dataplane import BatchColumns
from vigil_encoder.errors import InvalidEncodeRequest
from vigil_encoder.rest import parse_encode_request
from vigil_encoder.settings import EncoderSettings
from vigil_encoder.validation import check_columns, check_request_columns

SERVICE = "fraud_model_v1"
ENTITY_KEYS = ("card_id", "merchant_id", "device_id")
REQUEST_KEYS = ("amount", "txn_epoch", "txn_hour", "channel", "country", "device_present")


def as_columns(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """The columns of rows that all carry the same keys (as the gateway builds them)."""
    return {
        part: {name: [row[part][name] for row in rows] for name in rows[0][part]}
        for part in ("entities", "request")
    }


def columns_body(rows: list[dict[str, Any]], service: str = SERVICE) -> dict[str, Any]:
    return {"feature_service": service, "columns": as_columns(rows)}


# --- the body's shape, as the model reads it (no app, no Redis) -----------------------------


def _cols(n: int = 2, **request: list[Any]) -> dict[str, Any]:
    columns = {
        "amount": [12.5] * n,
        "txn_epoch": [1.7e9] * n,
        "txn_hour": [3] * n,
        "channel": ["pos"] * n,
        "country": ["DE"] * n,
        "device_present": [1] * n,
    }
    columns.update(request)
    return {
        "entities": {"card_id": [f"c{i}" for i in range(n)], "merchant_id": ["m1"] * n},
        "request": columns,
    }


def _body(columns: Any, **extra: Any) -> dict[str, Any]:
    return {"feature_service": "svc", "columns": columns, **extra}


def _expected(body: Any) -> tuple[str, BatchColumns] | list[dict[str, Any]]:
    """What validating through ``EncodeColumnsRequest`` (as FastAPI would) gives."""
    try:
        request = EncodeColumnsRequest.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        return [
            {"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
    columns = request.columns
    return request.feature_service, BatchColumns(columns.entities, columns.request, columns.n_rows)


BODIES: list[Any] = [
    _body(_cols()),
    _body(_cols(1)),
    _body(_cols(3, country=["DE", None, ""], amount=[1, 2.5, 3])),
    _body(_cols(2, amount=[True, 1.0], device_present=[False, 1])),  # bools convert
    _body({"entities": {}, "request": {}}),  # no column: no row (refused per service)
    _body({"entities": {"card_id": ["c1"]}, "request": {}}),
    _body(_cols(2, amount=[1.0])),  # lengths differ
    _body(
        _cols(2, amount=[], txn_epoch=[], txn_hour=[], channel=[], country=[], device_present=[])
        | {"entities": {}}
    ),  # every column empty
    _body(_cols(4, amount=[1.0, 2.0, 3.0, [1]])),
    _body(_cols(2, amount=[1.0, {"a": 1}])),
    _body(_cols(2, amount=12.5)),
    _body(_cols(2, amount=None)),
    _body({"entities": {"card_id": ["c1", 5]}, "request": {}}),
    _body({"entities": {"card_id": ["c1", None]}, "request": {}}),
    _body({"entities": {"card_id": "c1"}, "request": {}}),
    _body({"entities": ["c1"], "request": {}}),
    _body({"entities": {"card_id": ["c1"]}}),
    _body({"request": {"amount": [1.0]}}),
    _body({**_cols(), "extra": {}}),
    _body(_cols(), extra=1),
    _body(_cols(), rows=[]),  # both forms at once
    _body(None),
    _body([]),
    {"columns": _cols()},
    {"feature_service": 5, "columns": _cols()},
    {"feature_service": "svc", "columns": _cols(), "rows": [{"entities": {}, "request": {}}]},
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_a_columns_body_reads_as_the_model_reads_it(body: Any) -> None:
    expected = _expected(body)
    if isinstance(expected, list):
        with pytest.raises(RequestValidationError) as caught:
            parse_encode_request(body)
        assert [
            {k: e[k] for k in ("loc", "msg", "type")} for e in caught.value.errors()
        ] == expected
    else:
        service, batch = parse_encode_request(body)
        assert (service, batch) == expected
        assert {
            k: [list(map(type, v)) for v in part.values()]
            for k, part in (("e", batch.entities), ("r", batch.request))
        } == {
            k: [list(map(type, v)) for v in part.values()]
            for k, part in (("e", expected[1].entities), ("r", expected[1].request))
        }


def test_a_plain_body_is_used_as_parsed() -> None:
    """What the gateway sends (values of the model's types) costs no model and no copy."""
    for n in (1, 3):
        body = _body(_cols(n, country=["DE", None, ""][:n]))
        _, batch = parse_encode_request(body)
        assert batch.entities is body["columns"]["entities"] and len(batch) == n
        assert batch.request is body["columns"]["request"]


def test_a_body_with_both_forms_is_refused_naming_rows() -> None:
    body = {"feature_service": "svc", "columns": _cols(), "rows": []}
    with pytest.raises(RequestValidationError) as caught:
        parse_encode_request(body)
    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [
        (("body", "rows"), "extra_forbidden")
    ]


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
    1e308,
    math.nan,
    math.inf,
    "",
    "x",
    "13",
]


def _row_outcome(rows: list[dict[str, Any]]) -> Any:
    try:
        return "ok", check_columns(PLAN, rows)  # type: ignore[arg-type]
    except InvalidEncodeRequest as exc:
        return "problem", {(p.name, p.reason) for p in exc.invalid_params or []}


def _column_outcome(columns: dict[str, Any]) -> Any:
    try:
        return "ok", check_request_columns(
            PLAN,
            columns["entities"],  # type: ignore[arg-type]
            columns["request"],
        )
    except InvalidEncodeRequest as exc:
        assert exc.detail.startswith("invalid columns for feature service 'svc': ")
        return "problem", {(p.name, p.reason) for p in exc.invalid_params or []}


_ROW_NAME = re.compile(r"rows\.(\d+)\.request\.(\w+)")


def test_column_checks_equal_row_checks() -> None:
    """The columns of a batch are accepted, converted (value for value, type for type) and
    refused (the same reasons, for the same field of the same row) as its rows are."""
    rng = random.Random(12)
    seen = {"ok": 0, "problem": 0}
    for _ in range(1500):
        n = rng.choice([1, 2, 5, 40])
        rows = []
        for i in range(n):
            request = {
                "amount": rng.uniform(-1e6, 1e6),
                "txn_epoch": rng.uniform(0, 2e9),
                "txn_hour": rng.randrange(24),
                "channel": rng.choice(["pos", "ecom"]),
                "country": rng.choice(["DE", "", None]),
                "device_present": rng.choice([0, 1]),
                "flag": rng.choice([True, False]),
            }
            if rng.random() < 0.03:
                request[rng.choice(list(FIELDS))] = rng.choice(CANDIDATES)
            rows.append(
                {
                    "entities": {"card_id": f"c{i}", "merchant_id": "m", "other": "x"},
                    "request": request,
                }
            )
        if rng.random() < 0.05:  # ints for floats, integral floats for ints, all the column
            for r in rows:
                r["request"]["amount"] = rng.randrange(100)
                r["request"]["txn_hour"] = float(rng.randrange(24))
        columns = as_columns(rows)
        if rng.random() < 0.02:
            name = rng.choice(list(FIELDS))
            del columns["request"][name]
            for r in rows:
                del r["request"][name]
        if rng.random() < 0.02:
            del columns["entities"]["merchant_id"]
            for r in rows:
                del r["entities"]["merchant_id"]
        want, got = _row_outcome(rows), _column_outcome(columns)
        seen[want[0]] += 1
        assert got[0] == want[0]
        if want[0] == "ok":
            assert list(got[1]) == list(FIELDS)
            assert {k: list(v) for k, v in got[1].items()} == want[1]
            assert {k: list(map(type, v)) for k, v in got[1].items()} == {
                k: list(map(type, v)) for k, v in want[1].items()
            }
        elif len(want[1]) < 20 and len(got[1]) < 20:  # else each form reports its first 20
            renamed = set()
            for name, reason in want[1]:
                if match := _ROW_NAME.fullmatch(name):
                    i, field = match.groups()
                    # a missing field is named once, for its column
                    name = (
                        f"columns.request.{field}"
                        if reason.startswith("missing")
                        else f"columns.request.{field}.{i}"
                    )
                else:
                    name = "columns.entities." + name.rsplit(".", 1)[1]
                renamed.add((name, reason))
            assert got[1] == renamed
    assert seen["ok"] > 500 and seen["problem"] > 200


def test_many_bad_values_report_at_most_twenty() -> None:
    columns = _cols(30, amount=["x"] * 30, txn_hour=["y"] * 30)
    with pytest.raises(InvalidEncodeRequest) as caught:
        check_request_columns(
            PLAN,  # type: ignore[arg-type]
            columns["entities"],
            columns["request"],
        )
    names = [p.name for p in caught.value.invalid_params or []]
    assert names == [f"columns.request.amount.{i}" for i in range(20)]


# --- answers through the real app -------------------------------------------------------------


@pytest.fixture(scope="module")
def picks(feature_env) -> list[dict]:
    """Entities of the world, and two cards of this module's own: one stale, one fresh."""
    now = datetime.now(UTC)
    feast_repo.open_store(feature_env.repo).write_to_online_store(
        "card_stats",
        pd.DataFrame(
            [
                _card_stats_row("c_colreq_expired", now - timedelta(days=45)),
                _card_stats_row("c_colreq_fresh", now - timedelta(hours=2)),
            ]
        ),
    )
    raw = pd.read_parquet(
        feature_env.raw_path, columns=["card_id", "merchant_id", "device_id", "country", "currency"]
    )
    return raw.sample(n=1200, replace=True, random_state=3).to_dict("records")


def generated_rows(picks: list[dict], rng: random.Random, n: int) -> list[dict]:
    """Rows as the gateway sends them, and then some: unknown cards, merchants and devices, no
    device, a stale card, a null country, ints for floats and integral floats for ints."""
    now = datetime.now(UTC).timestamp()
    odd = rng.random() < 0.5  # half the batches are all plain values, as the gateway's are
    rows = []
    for i in range(n):
        pick = rng.choice(picks)
        card, merchant, device = pick["card_id"], pick["merchant_id"], pick["device_id"]
        kind = rng.randrange(12)
        if kind == 1:
            card = f"c_unknown_{rng.randrange(50)}"
        elif kind == 2:
            merchant = f"m_unknown_{i}"
        elif kind == 3:
            device = f"d_unknown_{i}"
        elif kind == 4 or device is None:
            device = None
        elif kind == 5:
            card = "c_colreq_expired"
        elif kind == 6:
            card = "c_colreq_fresh"
        request = {
            "amount": round(rng.lognormvariate(3.5, 1.2), 2),
            "txn_epoch": now - rng.uniform(0, 86400),
            "txn_hour": rng.randrange(24),
            "channel": rng.choice(["pos", "ecom", "mobile", "atm"]),
            "country": pick["country"] if rng.random() < 0.7 else rng.choice(["DE", "US", ""]),
            "device_present": 0 if device is None else 1,
        }
        if odd and kind == 7:
            request.update(
                country=None, txn_hour=float(request["txn_hour"]), amount=rng.randrange(1, 500)
            )
        if odd and kind == 8:
            request.update(txn_epoch=int(request["txn_epoch"]), amount=0)
        rows.append(
            {
                "entities": {
                    "card_id": card,
                    "merchant_id": merchant,
                    "device_id": device or NO_DEVICE_ID,
                    "currency": pick["currency"],
                },
                "request": request,
            }
        )
    return rows


def encoder_settings(feature_env, **overrides) -> EncoderSettings:
    values = {
        "redis_url": feature_env.redis.url,
        "spec_path": feast_repo.spec_path(feature_env.repo),
    }
    values.update(overrides)
    return EncoderSettings(**values)


@pytest.fixture(scope="module")
async def client(feature_env):
    """The real app, its clock frozen (two requests for the same rows get the same ages)."""
    now = datetime.now(UTC).timestamp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataplane, "time", SimpleNamespace(time=lambda: now))
        app = create_app(encoder_settings(feature_env))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://encoder"
            ) as c:
                yield c


BINARY = {"accept": BINARY_MEDIA_TYPE}


async def _post(client: httpx.AsyncClient, body: dict, **kwargs: Any) -> httpx.Response:
    return await client.post(
        "/v1/encode",
        content=orjson.dumps(body),
        headers={"content-type": "application/json", **kwargs},
    )


async def _same_answers(client: httpx.AsyncClient, rows: list[dict]) -> httpx.Response:
    by_rows = {"feature_service": SERVICE, "rows": rows}
    by_columns = columns_body(rows)
    answers = []
    for headers in ({}, BINARY):
        a = await _post(client, by_rows, **headers)
        b = await _post(client, by_columns, **headers)
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        assert a.headers["content-type"] == b.headers["content-type"]
        assert a.headers.get("encode-header-content-length") == b.headers.get(
            "encode-header-content-length"
        )
        assert a.content == b.content
        answers.append(a)
    return answers[0]


async def test_columns_are_answered_exactly_as_their_rows(client, picks):
    rng = random.Random(30)
    sizes = [1, 1, 2, 3, 7, 50, 333, 1000, 1000] + [rng.randrange(1, 200) for _ in range(20)]
    stale = missing = odd = 0
    for n in sizes:
        rows = generated_rows(picks, rng, n)
        answer = (await _same_answers(client, rows)).json()
        assert len(answer["rows"]) == n
        stale += sum(any(r["stale"]) for r in answer["rows"])
        missing += sum(r["missing"].count(True) for r in answer["rows"])
        odd += sum(
            type(r["request"]["amount"]) is int or r["request"]["country"] is None for r in rows
        )
    # The batches held what they should: stale views, missing values, converted values.
    assert stale > 50 and missing > 1000 and odd > 50


async def test_a_row_alone_is_answered_as_in_its_batch(client, picks):
    rows = generated_rows(picks, random.Random(31), 40)
    batch = (await _post(client, columns_body(rows))).json()["rows"]
    for i in range(0, 40, 3):
        alone = (await _post(client, columns_body(rows[i : i + 1]))).json()["rows"]
        assert orjson.dumps(alone) == orjson.dumps(batch[i : i + 1])


def _counters(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vigil_encoder_rows_encoded_total", "vigil_encoder_view_reads_total"))
    }


async def test_columns_count_in_the_metrics_as_their_rows(client, picks):
    rows = generated_rows(picks, random.Random(32), 120)
    deltas = []
    for body in ({"feature_service": SERVICE, "rows": rows}, columns_body(rows)):
        before = _counters((await client.get("/metrics")).text)
        assert (await _post(client, body)).status_code == 200
        after = _counters((await client.get("/metrics")).text)
        deltas.append(
            {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
        )
    assert deltas[0] == deltas[1]
    assert deltas[0][f'vigil_encoder_rows_encoded_total{{feature_service="{SERVICE}"}}'] == 120


async def test_unused_entity_columns_and_request_fields_are_ignored(client, picks):
    rows = generated_rows(picks, random.Random(33), 9)
    body = columns_body(rows)
    body["columns"]["entities"]["terminal_id"] = [f"t{i}" for i in range(9)]
    body["columns"]["request"]["note"] = ["x"] * 9
    assert (await _post(client, body)).content == (
        await _post(client, {"feature_service": SERVICE, "rows": rows})
    ).content


# --- refusals ---------------------------------------------------------------------------------


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
                "txn_epoch": 1.7e9,
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
    assert body["status"] == status and body["type"].endswith("/" + slug)
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def _params(body: dict) -> list[tuple[str, str]]:
    return [(p["name"], p["reason"]) for p in body["invalid_params"]]


async def test_missing_join_key_column_names_it(client):
    body = columns_body(_valid_rows(5))
    del body["columns"]["entities"]["card_id"]
    problem = assert_problem(await _post(client, body), 422, "validation-failed")
    assert _params(problem) == [("columns.entities.card_id", "missing join key")]


async def test_missing_request_column_names_it(client):
    body = columns_body(_valid_rows(3))
    del body["columns"]["request"]["txn_hour"]
    problem = assert_problem(await _post(client, body), 422, "validation-failed")
    assert _params(problem) == [("columns.request.txn_hour", "missing request field (Int64)")]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("amount", None, "must not be null (Float64)"),
        ("amount", "12.5", "must be a number (Float64)"),
        ("amount", math.nan, "must be a finite number (Float64)"),
        ("txn_hour", 13.5, "must be an integer (Int64)"),
        ("txn_hour", "13", "must be an integer (Int64)"),
        ("channel", 5, "must be a string (String)"),
    ],
    ids=str,
)
async def test_a_value_of_the_wrong_type_names_its_row(client, field, value, reason):
    rows = _valid_rows(5)
    rows[3]["request"][field] = value
    # NaN is not JSON: sent the way a sloppy client would, as a bare NaN token.
    content = json.dumps(columns_body(rows))
    response = await client.post(
        "/v1/encode", content=content, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 422, "validation-failed")
    assert _params(problem) == [(f"columns.request.{field}.3", reason)]
    # The same value sent as a row is refused for the same reason.
    by_rows = (
        await _post(client, {"feature_service": SERVICE, "rows": rows})
        if value == value
        else response
    )
    if value == value:
        assert _params(assert_problem(by_rows, 422, "validation-failed")) == [
            (f"rows.3.request.{field}", reason)
        ]


async def test_converted_values_are_accepted_as_in_rows(client):
    rows = _valid_rows(3)
    rows[0]["request"].update(txn_hour=13.0, amount=7)
    rows[1]["request"].update(country=None, txn_epoch=1_700_000_000)
    await _same_answers(client, rows)
    await _same_answers(client, rows[:1])


@pytest.mark.parametrize(
    ("columns", "name", "reason"),
    [
        (
            {"entities": {"card_id": ["c1", 5]}, "request": {}},
            "columns.entities.card_id.1",
            "Input should be a valid string",
        ),
        (
            {"entities": {"card_id": ["c1"]}, "request": {"amount": [[1]]}},
            "columns.request.amount.0",
            "Input should be a valid number; Input should be a valid integer; "
            "Input should be a valid string",
        ),
        (
            {"entities": {"card_id": ["c1", "c2"]}, "request": {"amount": [1.0]}},
            "columns",
            "Value error, every column must have one value per row (the same length)",
        ),
        (
            {"entities": {"card_id": []}, "request": {}},
            "columns",
            "Value error, the columns hold no row",
        ),
        (
            {"entities": {"card_id": "c1"}, "request": {}},
            "columns.entities.card_id",
            "Input should be a valid list",
        ),
        ({"entities": {"card_id": ["c1"]}}, "columns.request", "Field required"),
    ],
    ids=[
        "entity-not-text",
        "value-not-scalar",
        "lengths-differ",
        "no-row",
        "not-a-list",
        "no-request",
    ],
)
async def test_a_body_of_the_wrong_shape_names_the_field(client, columns, name, reason):
    body = {"feature_service": SERVICE, "columns": columns}
    problem = assert_problem(await _post(client, body), 422, "validation-failed")
    assert problem["invalid_params"][0] == {"name": name, "reason": reason}


async def test_both_forms_at_once_is_refused(client):
    body = {**columns_body(_valid_rows(2)), "rows": _valid_rows(2)}
    problem = assert_problem(await _post(client, body), 422, "validation-failed")
    assert _params(problem) == [("rows", "Extra inputs are not permitted")]


async def test_unknown_feature_service_is_404(client):
    assert_problem(
        await _post(client, columns_body(_valid_rows(2), "fraud_model_v9")),
        404,
        "feature-service-not-found",
    )


async def test_too_many_rows_is_413(feature_env):
    app = create_app(encoder_settings(feature_env, max_rows=5))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://encoder"
        ) as c:
            assert (await _post(c, columns_body(_valid_rows(5)))).status_code == 200
            problem = assert_problem(
                await _post(c, columns_body(_valid_rows(6))), 413, "too-many-rows"
            )
            by_rows = await _post(c, {"feature_service": SERVICE, "rows": _valid_rows(6)})
            assert problem["detail"] == by_rows.json()["detail"]


async def test_openapi_shows_both_forms(client):
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/v1/encode"]["post"]["requestBody"]
    forms = body["content"]["application/json"]["schema"]["oneOf"]
    assert [sorted(form["required"]) for form in forms] == [
        ["feature_service", "rows"],
        ["columns", "feature_service"],
    ]
    assert "$ref" not in json.dumps(forms)
