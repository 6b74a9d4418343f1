"""The encoder's re-implementation of Feast's Redis layout equals Feast's own.

Keys and field names are compared with Feast's functions; values are compared both on messages
built here and on the bytes `feast materialize` actually wrote into the test Redis.
"""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as FeastValue
from feast.type_map import feast_value_type_to_python_type
from google.protobuf.timestamp_pb2 import Timestamp

from vigil import feast_repo
from vigil_encoder.feast_keys import EntityKeyCodec, field_name, timestamp_field
from vigil_encoder.feast_values import (
    SCALAR_DTYPES,
    ValueProto,
    decode_timestamp,
    decode_value,
    decode_values,
)

FEAST_VALUES = [
    FeastValue(int64_val=0),
    FeastValue(int64_val=42),
    FeastValue(int64_val=-(2**63)),
    FeastValue(int64_val=2**63 - 1),
    FeastValue(double_val=0.0),
    FeastValue(double_val=-1.25e-300),
    FeastValue(double_val=123456.789),
    FeastValue(double_val=math.inf),
    FeastValue(string_val=""),
    FeastValue(string_val="DE"),
    FeastValue(string_val="zürich ✓"),
    FeastValue(int32_val=-7),
    FeastValue(float_val=0.1),
    FeastValue(bool_val=True),
    FeastValue(bool_val=False),
    FeastValue(bytes_val=b"\x00\xff"),
    FeastValue(),  # how Feast stores a null of any dtype
    # The event lists (decoded through a slice of the parsed list: a list of the same values).
    FeastValue(int64_list_val={"val": [1_733_500_000_123_456, 0, -3, 2**62]}),
    FeastValue(int64_list_val={"val": []}),
    FeastValue(double_list_val={"val": [12.5, 0.0, -1e-300, math.inf]}),
    FeastValue(string_list_val={"val": ["m1", "", "zürich ✓"]}),
]


def _feast_python(raw: bytes | None):
    """What Feast's online read makes of a stored field (``redis.py`` + ``type_map``)."""
    value = FeastValue()
    if raw:
        value.ParseFromString(raw)
    return feast_value_type_to_python_type(value)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", FEAST_VALUES, ids=lambda v: str(v).strip() or "empty")
def test_value_decoding_equals_feast(value):
    raw = value.SerializeToString()
    assert _same(decode_value(raw), _feast_python(raw))


def test_declared_dtypes_decode_like_feast():
    samples = {
        "Bytes": b"x",
        "String": "s",
        "Int32": 3,
        "Int64": 2**40,
        "Float64": 0.5,
        "Float32": 0.25,
        "Bool": True,
    }
    assert set(SCALAR_DTYPES) == set(samples)
    for dtype, member in SCALAR_DTYPES.items():
        raw = FeastValue(**{member: samples[dtype]}).SerializeToString()
        assert _same(decode_value(raw), _feast_python(raw)), dtype


def test_missing_field_decodes_to_none_like_feast():
    assert decode_value(None) is None and _feast_python(None) is None
    # Feast never writes null_val (a null is an empty Value); its feature server reads it as
    # null, while the SDK's type_map would hand out the enum's 0. Null is the meaning.
    assert decode_value(FeastValue(null_val=0).SerializeToString()) is None
    assert decode_values([None, b"", FeastValue(int64_val=3).SerializeToString()]) == [
        None,
        None,
        3,
    ]


def test_value_descriptor_matches_feast_field_numbers_and_types():
    ours = ValueProto.DESCRIPTOR
    theirs = FeastValue.DESCRIPTOR
    assert ours.full_name == theirs.full_name
    for field in ours.fields:
        twin = theirs.fields_by_name[field.name]
        assert (field.number, field.type, field.containing_oneof.name) == (
            twin.number,
            twin.type,
            twin.containing_oneof.name,
        )


def test_timestamp_decoding():
    ts = Timestamp()
    ts.FromDatetime(datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC))
    assert decode_timestamp(ts.SerializeToString()) == pytest.approx(
        datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC).timestamp(), abs=1e-6
    )
    assert decode_timestamp(None) is None


@pytest.mark.parametrize(
    "entities",
    [
        {"card_id": "c001"},
        {"card_id": ""},
        {"device_id": "__no_device__", "currency": "EUR"},
        {"merchant_id": "m-ü-42"},
        {"customer_id": 123456789},
        {"customer_id": -1},
        {"merchant_id": "m7", "card_id": "c9"},  # Feast sorts join keys by name
        {"zone": 3, "card_id": "c9"},
    ],
)
def test_entity_key_serialization_equals_feast(entities):
    proto = EntityKeyProto(
        join_keys=list(entities),
        entity_values=[
            FeastValue(string_val=v) if isinstance(v, str) else FeastValue(int64_val=v)
            for v in entities.values()
        ],
    )
    codec = EntityKeyCodec(list(entities), project="vigil")
    assert codec.serialize(entities) == serialize_entity_key(
        proto, entity_key_serialization_version=3
    )
    assert codec.redis_key(entities) == _redis_key("vigil", proto, 3)


def test_entity_key_refuses_other_types():
    with pytest.raises(TypeError):
        EntityKeyCodec(["card_id"], "vigil").serialize({"card_id": 1.5})
    with pytest.raises(TypeError):
        EntityKeyCodec(["card_id"], "vigil").serialize({"card_id": True})


@pytest.mark.parametrize(
    "view,feature",
    [
        ("card_stats", "card_txn_count_1h"),
        ("merchant_stats", "merchant_night_share_7d"),
        ("device_stats", "device_first_seen_epoch"),
        ("v", "ü"),
    ],
)
def test_field_names_equal_feast(view, feature):
    assert field_name(view, feature) == _mmh3(f"{view}:{feature}")
    assert timestamp_field(view) == f"_ts:{view}".encode()


def test_decoding_of_materialized_bytes_equals_feast(feature_env):
    """Every field of a sample of real hashes (Int64, Float64, String, nulls) decodes alike."""
    spec = feast_repo.load_serving_spec(feature_env.repo).feature_services["fraud_model_v1"]
    client = redis.Redis.from_url(feature_env.redis.url)
    try:
        seen_dtypes: set[str] = set()
        nulls = 0
        checked = 0
        for view in spec.views.values():
            codec = EntityKeyCodec(view.join_keys, spec.project)
            prefix = codec.serialize({view.join_keys[0]: ""})[:-4]  # count + key name + STRING tag
            for key in client.scan_iter(count=500):
                if not key.startswith(prefix) or not key.endswith(spec.project.encode()):
                    continue
                fields = [field_name(view.name, f) for f in view.features]
                raws = client.hmget(key, fields + [timestamp_field(view.name)])
                if raws[-1] is None:
                    continue  # another view's entity shares the prefix shape
                for (feature, dtype), raw in zip(view.features.items(), raws[:-1], strict=True):
                    ours, theirs = decode_value(raw), _feast_python(raw)
                    assert _same(ours, theirs), (view.name, feature, raw)
                    seen_dtypes.add(dtype)
                    nulls += theirs is None
                    checked += 1
                ts = Timestamp()
                ts.ParseFromString(raws[-1])
                assert decode_timestamp(raws[-1]) == ts.seconds + ts.nanos / 1e9
                checked += 1
                if checked > 3000:
                    break
        assert {"Float64", "Array(Int64)", "Array(Float64)", "Array(String)"} <= seen_dtypes
        assert checked > 500
    finally:
        client.close()


def test_encoder_does_not_import_feast():
    code = (
        "import sys\n"
        "from vigil_encoder.app import create_app\n"
        "from vigil_encoder.settings import EncoderSettings\n"
        "create_app(EncoderSettings())\n"
        "assert 'feast' not in sys.modules, 'feast was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
