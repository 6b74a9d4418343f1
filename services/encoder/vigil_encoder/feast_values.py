"""Decoding of the values Feast writes to Redis: ``feast.types.Value`` and ``Timestamp``.

Saves: a protobuf parse for the two commonest ``ValueProto`` forms; held equal: tested bit for
bit against the parse (tests/test_encoder_feast_layout.py); fallback: the parse, for every other
form.

The encoder image does not install Feast (its import alone takes seconds), so the one message it
needs is declared here as a descriptor and built by the ``protobuf`` library in a private
descriptor pool (no clash with Feast's own classes when both live in one process, as in tests).
Field numbers and types are Feast 0.67's ``feast/types/Value.proto``; of its composite members
only the string, int64 and double lists are declared (the entities' event lists); sets, maps and
the other lists are left out because no served dtype uses them (the serving plan refuses such
dtypes), and protobuf keeps any it meets as unknown fields.
"""

from __future__ import annotations

import struct

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.timestamp_pb2 import Timestamp

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type) of the scalar members of Value's ``val`` oneof, as in Value.proto.
_SCALAR_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("bytes_val", 1, _F.TYPE_BYTES),
    ("string_val", 2, _F.TYPE_STRING),
    ("int32_val", 3, _F.TYPE_INT32),
    ("int64_val", 4, _F.TYPE_INT64),
    ("double_val", 5, _F.TYPE_DOUBLE),
    ("float_val", 6, _F.TYPE_FLOAT),
    ("bool_val", 7, _F.TYPE_BOOL),
    ("unix_timestamp_val", 8, _F.TYPE_INT64),
)
_NULL_FIELD = ("null_val", 19)  # enum feast.types.Null { NULL = 0; }
# (member name, number, list message, element type) of the list members served (event lists).
_LIST_FIELDS: tuple[tuple[str, int, str, int], ...] = (
    ("string_list_val", 12, "StringList", _F.TYPE_STRING),
    ("int64_list_val", 14, "Int64List", _F.TYPE_INT64),
    ("double_list_val", 15, "DoubleList", _F.TYPE_DOUBLE),
)

#: Feast dtypes (as the serving spec spells them) this module decodes to the very Python value
#: Feast's SDK would hand out, and the Value member each is stored in. UnixTimestamp is left
#: out: Feast turns it into a datetime, which an on-demand transform would see differently.
SCALAR_DTYPES: dict[str, str] = {
    "Bytes": "bytes_val",
    "String": "string_val",
    "Int32": "int32_val",
    "Int64": "int64_val",
    "Float64": "double_val",
    "Float32": "float_val",
    "Bool": "bool_val",
}
#: Feast array dtypes decoded to a Python list (of str, int or float), as Feast's SDK hands them
#: to an on-demand transform.
LIST_DTYPES: dict[str, str] = {
    "Array(String)": "string_list_val",
    "Array(Int64)": "int64_list_val",
    "Array(Float64)": "double_list_val",
}
DECODED_DTYPES: frozenset[str] = frozenset(SCALAR_DTYPES) | frozenset(LIST_DTYPES)


def _value_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="feast/types/Value.proto", package="feast.types", syntax="proto3"
    )
    null = file.enum_type.add(name="Null")
    null.value.add(name="NULL", number=0)
    for _, _, message, element in _LIST_FIELDS:
        lst = file.message_type.add(name=message)
        lst.field.add(name="val", number=1, type=element, label=_F.LABEL_REPEATED)
    value = file.message_type.add(name="Value")
    value.oneof_decl.add(name="val")
    for name, number, type_ in _SCALAR_FIELDS:
        value.field.add(
            name=name, number=number, type=type_, label=_F.LABEL_OPTIONAL, oneof_index=0
        )
    for name, number, message, _ in _LIST_FIELDS:
        value.field.add(
            name=name,
            number=number,
            type=_F.TYPE_MESSAGE,
            type_name=f".feast.types.{message}",
            label=_F.LABEL_OPTIONAL,
            oneof_index=0,
        )
    value.field.add(
        name=_NULL_FIELD[0],
        number=_NULL_FIELD[1],
        type=_F.TYPE_ENUM,
        type_name=".feast.types.Null",
        label=_F.LABEL_OPTIONAL,
        oneof_index=0,
    )
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_value_file())
ValueProto = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("feast.types.Value"))


# The two forms most stored values take, read without a parse (a test holds them equal to it):
# ``double_val`` is its tag (field 5, 64-bit) and 8 little-endian bytes; a small ``int64_val``
# its tag (field 4, varint) and a varint of one or two bytes, as protobuf writes them.
_DOUBLE_TAG = 0x29
_INT64_TAG = 0x20
_unpack_double = struct.Struct("<d").unpack_from
_LIST_MEMBERS = frozenset(name for name, _, _, _ in _LIST_FIELDS)


def decode_values(
    raws: list[bytes | None], memo: dict[bytes, object] | None = None
) -> list[object]:
    """Python values of serialized ``feast.types.Value`` messages; None where a value is absent.

    Absent means: no such field in the hash, an empty message (Feast writes one for a null), an
    explicit ``null_val``, or a member this module does not declare. A NaN double stays NaN;
    callers that need "missing" treat it as such. ``memo`` (raw bytes -> value) may be shared
    across the calls of one batch: counts and flags repeat a lot, and a lookup is much cheaper
    than a parse.
    """
    message = None
    if memo is None:
        memo = {}
    out: list[object] = []
    for raw in raws:
        if not raw:
            out.append(None)
            continue
        if raw[0] == _DOUBLE_TAG and len(raw) == 9:
            out.append(_unpack_double(raw, 1)[0])  # as cheap as a memo lookup
            continue
        value = memo.get(raw, memo)
        if value is memo:
            if raw[0] == _INT64_TAG and len(raw) == 2 and raw[1] < 0x80:
                value = raw[1]
            elif raw[0] == _INT64_TAG and len(raw) == 3 and raw[1] >= 0x80 and 0 < raw[2] < 0x80:
                value = (raw[1] & 0x7F) | (raw[2] << 7)
            else:
                if message is None:
                    message = ValueProto()
                message.ParseFromString(raw)
                which = message.WhichOneof("val")
                if which is None or which == "null_val":
                    value = None
                elif which in _LIST_MEMBERS:
                    # A slice is the list at once (measured: 15 % less decoding than list()).
                    value = getattr(message, which).val[:]  # shared read-only via the memo
                else:
                    value = getattr(message, which)
            memo[raw] = value
        out.append(value)
    return out


def decode_value(raw: bytes | None) -> object:
    """One value; see :func:`decode_values`."""
    return decode_values([raw])[0]


def decode_timestamp(raw: bytes | None) -> float | None:
    """Seconds since the epoch of a serialized ``google.protobuf.Timestamp``; None if absent."""
    if not raw:
        return None
    ts = Timestamp.FromString(raw)
    return ts.seconds + ts.nanos / 1e9


def decode_timestamp_us(raw: bytes | None) -> int | None:
    """:func:`decode_timestamp` in whole µs (exact, where a float of seconds is not always)."""
    if not raw:
        return None
    ts = Timestamp.FromString(raw)
    return ts.seconds * 1_000_000 + ts.nanos // 1_000
