"""The binary form of the encoder's answer (``vigil_contracts.encoding``) and how the gateway
reads it: the same vectors, flags and ages as the JSON form, refused when malformed, and handed
to the predictor as the same FP32 matrix the JSON form gives."""

from __future__ import annotations

import json
import math
import struct

import pytest

from vigil_contracts.encoding import (
    BINARY_TENSORS,
    EncodeResponse,
    binary_header,
    decode_binary,
    encode_binary,
    encode_binary_flat,
)
from vigil_gateway.encoder_client import parse_binary_encode_response, parse_encode_response
from vigil_gateway.predictor_client import Features

NAMES = ["card_stats__a", "card_stats__b", "request_features__c"]


def body(n: int = 3) -> dict:
    rows = []
    for i in range(n):
        values = [float(i) + 0.125, None if i % 2 else 1e-300, -2.5e10 * i]
        rows.append(
            {
                "values": values,
                "missing": [v is None for v in values],
                "stale": [bool(i % 2), False, False],
                "age_seconds": [None if v is None else 60.0 * i for v in values[:2]] + [0.0],
            }
        )
    out = {
        "feature_service": "svc",
        "feature_names": NAMES,
        "feature_contract": "sha256:ab",
        "rows": rows,
    }
    EncodeResponse.model_validate(out)  # a valid JSON answer to begin with
    return out


def test_round_trip_gives_back_every_value_flag_and_age() -> None:
    data = body(5)
    raw, header_length = encode_binary(data)
    parsed = parse_binary_encode_response(raw, str(header_length), 5)
    same = parse_encode_response(json.dumps(data).encode(), 5)
    assert (parsed.feature_service, parsed.feature_names, parsed.feature_contract) == (
        same.feature_service,
        same.feature_names,
        same.feature_contract,
    )
    for got, want in zip(parsed.rows, same.rows, strict=True):
        assert got.values == want.values
        assert got.age_seconds == want.age_seconds
        assert [bool(b) for b in got.missing] == want.missing
        assert [bool(b) for b in got.stale] == want.stale
    # The predictor gets the same FP32 matrix either way, for every row or a choice of them.
    assert parsed.features(range(5)) == same.features(range(5))
    assert parsed.features([4, 0, 2]) == same.features([4, 0, 2])
    assert parsed.features([4, 0, 2]) == Features.from_rows(
        [same.rows[i].values for i in (4, 0, 2)]
    )


def _frame(header: dict, tensors: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + tensors, str(len(head))


def _split(data: dict) -> tuple[dict, bytes]:
    raw, length = encode_binary(data)
    return json.loads(raw[:length]), raw[length:]


@pytest.mark.parametrize(
    "change",
    [
        "rows",
        "tensor order",
        "datatype",
        "shape",
        "size",
        "trailing",
        "short",
        "flag",
        "names",
    ],
)
def test_a_malformed_binary_answer_is_refused(change: str) -> None:
    header, tensors = _split(body(2))
    n = 2
    if change == "rows":
        n = 3
    elif change == "tensor order":
        header["tensors"][2], header["tensors"][3] = header["tensors"][3], header["tensors"][2]
        header["tensors"][2]["name"], header["tensors"][3]["name"] = "missing", "missing"
    elif change == "datatype":
        header["tensors"][0]["datatype"] = "FP32"
    elif change == "shape":
        header["tensors"][1]["shape"] = [3, 2]
    elif change == "size":
        header["tensors"][0]["binary_data_size"] -= 8
    elif change == "trailing":
        tensors += b"\x00"
    elif change == "short":
        tensors = tensors[:-1]
    elif change == "flag":
        tensors = tensors[:-1] + b"\x02"
    elif change == "names":
        header["feature_names"] = [1, 2, 3]
    content, length = _frame(header, tensors)
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_binary(content, length, n)


@pytest.mark.parametrize("length", [None, "", "-1", "x", "99999"])
def test_a_missing_or_wrong_header_length_is_refused(length) -> None:
    raw, _ = encode_binary(body(1))
    with pytest.raises(ValueError):
        decode_binary(raw, length, 1)


def test_the_tensors_are_little_endian_in_the_declared_order() -> None:
    raw, length = encode_binary(body(2))
    header = json.loads(raw[:length])
    assert [t["name"] for t in header["tensors"]] == [name for name, _, _ in BINARY_TENSORS]
    values = raw[length : length + 6 * 8]
    assert values[:8] == struct.pack("<d", 0.125)
    assert math.isnan(struct.unpack("<d", values[32:40])[0])  # row 1's missing value is NaN
    flags = raw[length + 12 * 8 :]
    assert flags == bytes([0, 0, 0, 0, 1, 0]) + bytes([0, 0, 0, 1, 0, 0])  # missing, then stale


@pytest.mark.parametrize("stale_is_uncertain", [True, False])
@pytest.mark.parametrize("max_missing", [0.0, 0.5, 1.0])
def test_the_serving_policy_reads_both_forms_alike(stale_is_uncertain, max_missing) -> None:
    from vigil_gateway.model_metadata import ServingPolicy
    from vigil_gateway.policy import policy_verdict, stored_mask

    data = body(6)
    for j in (0, 1):  # row 2: both stored features missing (rows 1, 3, 5: one of two)
        data["rows"][2]["values"][j] = None
        data["rows"][2]["missing"][j] = True
        data["rows"][2]["age_seconds"][j] = None
    raw, length = encode_binary(data)
    binary = parse_binary_encode_response(raw, str(length), 6)
    plain = parse_encode_response(json.dumps(data).encode(), 6)
    policy = ServingPolicy(
        max_missing_stored_fraction=max_missing, stale_is_uncertain=stale_is_uncertain
    )
    stored = stored_mask(NAMES)
    verdicts = [policy_verdict(row, stored, policy) for row in binary.rows]
    assert verdicts == [policy_verdict(row, stored, policy) for row in plain.rows]
    if max_missing < 1.0 or stale_is_uncertain:
        assert len(set(verdicts)) > 1  # the rows really differ under this policy


@pytest.mark.parametrize("n", [0, 1, 2, 7])
def test_flat_lists_pack_to_the_same_bytes_as_rows(n: int) -> None:
    """The encoder packs its flat row-major lists (NaN where missing) with a header it keeps
    per batch size: the very bytes ``encode_binary`` makes of the same answer as rows."""
    data = body(n)
    for row in data["rows"]:  # the encoder's own rows carry NaN, not None
        row["values"] = [math.nan if v is None else v for v in row["values"]]
        row["age_seconds"] = [math.nan if v is None else v for v in row["age_seconds"]]
    rows = data["rows"]

    def flat(key: str) -> list:
        return [x for row in rows for x in row[key]]

    header = binary_header(data["feature_service"], NAMES, data["feature_contract"], n)
    packed = encode_binary_flat(
        header, flat("values"), flat("age_seconds"), flat("missing"), flat("stale")
    )
    assert packed == encode_binary(data) == encode_binary(body(n))
    decoded = decode_binary(packed[0], str(packed[1]), n)
    assert (decoded.n_rows, decoded.width) == (n, len(NAMES))
