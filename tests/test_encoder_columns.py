"""The encoder's batch answer against a plain, row-by-row reading of the same Redis.

The data plane builds a batch as flat row-major lists (joined over the rows in C loops, one row
on its own path) and packs its binary form from them; here every answer is compared, value for
value, age for age and flag for flag, with an independent reading of each row: HMGET its
hashes, parse every ``Value`` with protobuf, enforce the TTL, run ``transform_row``. Batches
hold known, unknown, stale and repeated entities, in the service's order or an interleaved
one. The fast paths beneath (``Value`` decoding without a parse, the transform's vector form)
are checked against what they replace on many values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import struct
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import orjson
import pandas as pd
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from test_encoder import _card_stats_row
from vigil import feast_repo
from vigil_contracts import request_features, windows
from vigil_contracts.encoding import encode_binary
from vigil_contracts.request_features import NO_DEVICE_ID, OUTPUT_FEATURES, transform_row
from vigil_encoder import dataplane
from vigil_encoder.dataplane import Encoder, _getter
from vigil_encoder.feast_values import ValueProto, decode_values
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.store import OnlineStore

SERVICE = "fraud_model_v1"
NAN = math.nan


# --- Value decoding without a parse ----------------------------------------------------------


def _parsed(raw: bytes | None) -> object:
    """What protobuf itself makes of a stored field (the decoding before the fast paths)."""
    if not raw:
        return None
    message = ValueProto.FromString(raw)
    which = message.WhichOneof("val")
    if which is not None and which.endswith("_list_val"):
        return list(getattr(message, which).val)
    return None if which is None or which == "null_val" else getattr(message, which)


def _same_value(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):  # bit for bit: NaN payloads and the sign of zero included
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def _value_samples() -> list[bytes]:
    rng = random.Random(7)
    doubles = [
        0.0,
        -0.0,
        1.0,
        -1.5,
        1e-310,
        -1e-310,
        1e308,
        -1e308,
        math.inf,
        -math.inf,
        NAN,
        struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0],  # a NaN payload
        struct.unpack("<d", b"\x00\x00\x00\x00\x00\x00\xf8\xff")[0],
    ]  # negative NaN
    doubles += [rng.uniform(-1e9, 1e9) for _ in range(3000)]
    doubles += [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(3000)]
    ints = list(range(-300, 20_000)) + [
        2**14 - 1,
        2**14,
        2**21,
        2**31,
        2**32,
        2**62,
        2**63 - 1,
        -(2**63),
        -(2**31),
        -1,
        -128,
    ]
    ints += [rng.randrange(-(2**63), 2**63) for _ in range(3000)]
    raws = [ValueProto(double_val=d).SerializeToString() for d in doubles]
    raws += [ValueProto(int64_val=i).SerializeToString() for i in ints]
    raws += [ValueProto(int32_val=i).SerializeToString() for i in (0, 1, -1, 300, -(2**31))]
    raws += [ValueProto(bool_val=b).SerializeToString() for b in (True, False)]
    raws += [ValueProto(float_val=f).SerializeToString() for f in (0.0, 0.1, -2.5, NAN)]
    raws += [ValueProto(string_val=s).SerializeToString() for s in ("", "DE", "zürich ✓")]
    raws += [
        ValueProto(bytes_val=b"\x00\xff").SerializeToString(),
        ValueProto(unix_timestamp_val=1795318510).SerializeToString(),
        ValueProto(null_val=0).SerializeToString(),
        ValueProto().SerializeToString(),
    ]
    # Valid messages the serializer never writes: non-canonical varints, a member written
    # twice (the last wins), a double followed by another field, an unknown field.
    raws += [
        b"\x20\x80\x00",
        b"\x20\x80\x80\x00",
        b"\x20\xff\x00",
        b"\x20\x01\x20\x02",
        b"\x20\x05\x29" + struct.pack("<d", 2.5),
        b"\x29" + struct.pack("<d", 2.5) + b"\x20\x05",
        b"\x29" + struct.pack("<d", 1.0) + b"\x29" + struct.pack("<d", 3.0),
        b"\xa0\x06\x01",
        b"\xa0\x06\x01\x20\x07",
        b"\x20\x07\xa0\x06\x01",
    ]
    return raws


def test_values_decode_as_protobuf_parses_them():
    raws = _value_samples()
    # Each alone, then all in one batch twice over with a shared memo (the second time from it).
    for raw in raws:
        assert _same_value(decode_values([raw])[0], _parsed(raw)), raw
    memo: dict[bytes, object] = {}
    for _ in range(2):
        for raw, got in zip(raws, decode_values(raws, memo), strict=True):
            assert _same_value(got, _parsed(raw)), raw
    assert decode_values([None, b""] + raws[:3]) == [None, None] + [_parsed(r) for r in raws[:3]]


def test_malformed_values_still_fail_as_protobuf_fails():
    from google.protobuf.message import DecodeError

    for raw in (
        b"\x29\x00",
        b"\x29" + bytes(9),
        b"\x20",
        b"\x20\x80",
        b"\x20\x80\x80",
        b"\x12\x05ab",
    ):
        with pytest.raises(DecodeError):
            _parsed(raw)
        with pytest.raises(DecodeError):
            decode_values([raw])


def test_getter_takes_the_positions_asked():
    values = list("abcdefgh")
    for positions in ([], [0], [3], [0, 1, 2], [2, 3], [4, 5, 7], [5, 1], [0, 2, 4], [7, 0]):
        assert list(_getter(positions)(values)) == [values[p] for p in positions]


# --- batches against a row-by-row reading ----------------------------------------------------


def _reference_rows(client: redis.Redis, plan, rows: list[dict], now: float) -> list[dict]:
    """Each row as read alone: every view's hash, every ``Value`` parsed by protobuf, the TTL
    enforced, ``transform_row`` run on the request and the stored values, in ``plan``'s order."""

    def entry(value):  # a vector entry: a finite float, else NaN
        if value is None:
            return NAN
        value = float(value)
        return value if math.isfinite(value) else NAN

    out = []
    for row in rows:
        inputs = dict(row["request"])
        stored = {}
        for view in plan.views:
            raws = client.hmget(view.codec.redis_key(row["entities"]), list(view.hmget.fields))
            ts = None
            if raws[-1]:
                stamp = Timestamp.FromString(raws[-1])
                ts = stamp.seconds + stamp.nanos / 1e9
            age = None if ts is None else max(0.0, now - ts)
            stale = view.ttl_seconds is not None and age is not None and age > view.ttl_seconds
            for feature, raw in zip(view.features, raws[:-1], strict=True):
                value = None if stale else _parsed(raw)
                inputs[feature] = value
                stored[(view.name, feature)] = (value, age, stale)
        computed = transform_row(inputs)
        view_stale, view_age = {}, {}
        for view in windows.VIEWS:
            computed |= windows.transform_row(view, inputs)
            view_stale[view] = any(s for (v, _), (_, _, s) in stored.items() if v == view)
            view_age[view] = next((a for (v, _), (_, a, _) in stored.items() if v == view), None)
        answer = {"values": [], "missing": [], "stale": [], "age_seconds": []}
        for ref in plan.spec.features:
            if ref.kind == "stored":
                value, age, stale = stored[(ref.view, ref.feature)]
                value = entry(value)
                age = NAN if value != value or age is None else age
            else:
                # A view's windows are as stale, and as old, as the view they are finished from.
                source = ref.view.replace("_windows", "_stats")
                value, stale = entry(computed[ref.feature]), view_stale.get(source, False)
                age = 0.0 if value == value else NAN
                if source in view_age:
                    row_age = view_age[source]
                    age = NAN if value != value or row_age is None or stale else age + row_age
            answer["values"].append(value)
            answer["missing"].append(value != value)
            answer["stale"].append(stale)
            answer["age_seconds"].append(age)
        out.append(answer)
    return out


def _identical(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert list(a) == ["values", "missing", "stale", "age_seconds"], i
        for key in a:
            assert len(a[key]) == len(b[key]), (i, key)
            for j, (x, y) in enumerate(zip(a[key], b[key], strict=True)):
                assert type(x) is type(y) and (x == y or x != x and y != y), (i, key, j, x, y)
                if isinstance(x, float) and x == x:
                    assert math.copysign(1, x) == math.copysign(1, y), (i, key, j)


@pytest.fixture(scope="module")
def mixed_rows(feature_env) -> list[dict]:
    """Rows as the gateway sends them, and then some: unknown cards, merchants and devices, no
    device, a stale card, odd request values, and repeats of all of them."""
    now = datetime.now(UTC)
    feast_repo.open_store(feature_env.repo).write_to_online_store(
        "card_stats",
        pd.DataFrame(
            [
                _card_stats_row("c_cols_expired", now - timedelta(days=45)),
                _card_stats_row("c_cols_fresh", now - timedelta(hours=3)),
            ]
        ),
    )
    raw = pd.read_parquet(
        feature_env.raw_path, columns=["card_id", "merchant_id", "device_id", "country", "currency"]
    )
    rng = random.Random(21)
    rows = []
    for i, pick in enumerate(raw.sample(n=240, random_state=21).to_dict("records")):
        card, merchant, device = pick["card_id"], pick["merchant_id"], pick["device_id"]
        kind = i % 12
        if kind == 1:
            card = f"c_unknown_{i}"
        elif kind == 2:
            merchant = f"m_unknown_{i}"
        elif kind == 3:
            device = f"d_unknown_{i}"
        elif kind == 4:
            device = None
        elif kind == 5:
            card = "c_cols_expired"
        elif kind == 6:
            card = "c_cols_fresh"
        request = {
            "amount": round(rng.lognormvariate(3.5, 1.2), 2),
            "txn_epoch": now.timestamp() - rng.uniform(0, 86400),
            "txn_hour": rng.randrange(24),
            "channel": rng.choice(["pos", "ecom", "mobile", "atm"]),
            "country": pick["country"] if rng.random() < 0.7 else rng.choice(["DE", "US", ""]),
            "device_present": 0 if device is None else 1,
        }
        if kind == 7:
            request.update(country=None, channel=None, txn_hour=13.0, amount=5)
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
    rows += [json.loads(json.dumps(r)) for r in rows[::5]]
    return rows


@pytest.fixture
async def make_encoder(feature_env, monkeypatch):
    """Encoders on the test Redis, at a frozen clock (the ages are then exact)."""
    now = datetime.now(UTC).timestamp()
    monkeypatch.setattr(dataplane, "time", SimpleNamespace(time=lambda: now))
    stores = []

    def make(spec_path=None) -> Encoder:
        metrics = EncoderMetrics()
        store = OnlineStore(feature_env.redis.url, 2.0, metrics)
        store.open()
        stores.append(store)
        encoder = Encoder(
            spec_path or feast_repo.spec_path(feature_env.repo), store, metrics, max_rows=5000
        )
        assert encoder.load_spec()
        return encoder

    make.now = now
    yield make
    for store in stores:
        await store.close()


@pytest.fixture(scope="module")
def client(feature_env):
    c = redis.Redis.from_url(feature_env.redis.url)
    yield c
    c.close()


async def _check(encoder: Encoder, client, rows: list[dict], now: float) -> list[dict]:
    """The batch equals the row-by-row reading, its binary form packs exactly its JSON form,
    and a row asked alone gets what it gets in the batch."""
    batch = await encoder.encode_batch(SERVICE, rows)
    got = batch.rows()
    _identical(got, _reference_rows(client, encoder.plan(SERVICE), rows, now))
    assert batch.binary() == encode_binary(batch.response())
    assert orjson.dumps(await encoder.encode_rows(SERVICE, rows)) == orjson.dumps(batch.response())
    for i in range(0, len(rows), 9):
        alone = await encoder.encode_batch(SERVICE, [rows[i]])
        _identical(alone.rows(), [got[i]])
        assert alone.binary() == encode_binary(alone.response())
    return got


async def test_a_batch_equals_its_rows_read_one_by_one(make_encoder, client, mixed_rows):
    encoder = make_encoder()
    got = await _check(encoder, client, mixed_rows, make_encoder.now)
    # The sample holds what it should: stale views, missing values, present values.
    assert sum(any(r["stale"]) for r in got) >= 20
    assert sum(r["missing"].count(True) for r in got) > 1000
    assert sum(r["missing"].count(False) for r in got) > 3000
    _identical(got[240:], got[:240:5])  # a repeated row gets the same answer
    for size in (2, 3, 17, 100):
        await _check(encoder, client, mixed_rows[size : 2 * size], make_encoder.now)


async def test_an_interleaved_feature_order_equals_its_rows_read_one_by_one(
    make_encoder, client, mixed_rows, feature_env, tmp_path
):
    document = json.loads(feast_repo.spec_path(feature_env.repo).read_text())
    features = document["feature_services"][SERVICE]["features"]
    random.Random(4).shuffle(features)
    # and a service without some stored features its on-demand view still reads
    document["feature_services"][SERVICE]["features"] = [
        f for f in features if f["feature"] not in ("card_amount_avg_30d", "device_txn_count_24h")
    ]
    spec_file = tmp_path / "serving_spec.json"
    spec_file.write_text(json.dumps(document))
    encoder = make_encoder(spec_file)
    assert encoder.plan(SERVICE).order is not None
    await _check(encoder, client, mixed_rows, make_encoder.now)


async def test_a_transform_without_a_vector_form_gives_the_same_answers(
    make_encoder, client, mixed_rows, monkeypatch
):
    fast = await (make_encoder()).encode_batch(SERVICE, mixed_rows)
    from vigil_encoder import plan

    shared = plan.ON_DEMAND_IMPLS["request_features"]
    monkeypatch.setitem(
        plan.ON_DEMAND_IMPLS,
        "request_features",
        plan.OnDemandImpl(shared.transform, shared.outputs),
    )
    plain_encoder = make_encoder()
    layout = plain_encoder._layout(plain_encoder.plan(SERVICE))
    assert layout.od_vectors[0] is not request_features.transform_row_vector
    await _check(plain_encoder, client, mixed_rows, make_encoder.now)
    _identical((await plain_encoder.encode_batch(SERVICE, mixed_rows)).rows(), fast.rows())


async def test_no_rows_is_an_empty_answer(make_encoder):
    batch = await make_encoder().encode_batch(SERVICE, [])
    assert batch.response()["rows"] == []
    assert batch.binary() == encode_binary(batch.response())


def test_the_vector_form_serves_the_plans_outputs(feature_env):
    plan = dataplane.load_plans(feast_repo.spec_path(feature_env.repo))[SERVICE]
    layout = dataplane._Layout(plan)
    names = [od.name for od in plan.on_demand]
    assert names == ["card_windows", "merchant_windows", "device_windows", "request_features"]
    assert plan.on_demand[3].vector_outputs == OUTPUT_FEATURES
    assert layout.od_vectors[3] is request_features.transform_row_vector
    for od in plan.on_demand[:3]:
        assert od.impl.stale_with_inputs and od.vector_outputs == od.impl.outputs


def _spy_columns(monkeypatch) -> list[int]:
    """Make encoders built from now on count the batches their column form computes."""
    from vigil_encoder import plan

    shared = plan.ON_DEMAND_IMPLS["request_features"]
    computed: list[int] = []

    def columns(inputs):
        outputs = shared.columns(inputs)
        if outputs is not None:
            computed.append(len(outputs[0]))
        return outputs

    monkeypatch.setitem(
        plan.ON_DEMAND_IMPLS,
        "request_features",
        plan.OnDemandImpl(shared.transform, shared.outputs, shared.vector, shared.reads, columns),
    )
    return computed


@pytest.mark.parametrize("interleaved", [False, True])
async def test_the_column_form_gives_what_the_rows_give(
    make_encoder, client, mixed_rows, monkeypatch, feature_env, tmp_path, interleaved
):
    """Batches of typed rows (known, unknown, stale and repeated entities) go through the
    on-demand view's column form; their answers, bytes included, are those of the per-row form
    (an implementation without a column form) and of the row-by-row reading."""
    spec_file = None
    if interleaved:  # the service's order differs from the assembly order, outputs included
        document = json.loads(feast_repo.spec_path(feature_env.repo).read_text())
        random.Random(9).shuffle(document["feature_services"][SERVICE]["features"])
        spec_file = tmp_path / "serving_spec.json"
        spec_file.write_text(json.dumps(document))
    typed = [
        r
        for r in mixed_rows
        if type(r["request"]["channel"]) is str
        and type(r["request"]["country"]) is str
        and type(r["request"]["amount"]) is float
        and type(r["request"]["txn_hour"]) is int
    ]
    assert len(typed) > 200
    from vigil_encoder import plan

    originals = dict(plan.ON_DEMAND_IMPLS)
    for name, impl in originals.items():  # every on-demand view without its column form
        monkeypatch.setitem(plan.ON_DEMAND_IMPLS, name, dataclasses.replace(impl, columns=None))
    per_row = make_encoder(spec_file)
    assert per_row._layout(per_row.plan(SERVICE)).od_columns == (None,) * 4
    for name, impl in originals.items():
        monkeypatch.setitem(plan.ON_DEMAND_IMPLS, name, impl)
    computed = _spy_columns(monkeypatch)
    columns = make_encoder(spec_file)
    assert (columns.plan(SERVICE).order is not None) == interleaved
    for rows in (typed, typed[:2], typed[5:22], typed[::-1], mixed_rows[:100]):
        want = await per_row.encode_batch(SERVICE, rows)
        got = await columns.encode_batch(SERVICE, rows)
        _identical(got.rows(), want.rows())
        assert got.binary() == want.binary()
        assert orjson.dumps(got.response()) == orjson.dumps(want.response())
    assert computed == [len(typed), 2, 17, len(typed)]  # mixed_rows[:100]: left to the rows
    await _check(columns, client, typed, make_encoder.now)
