"""Rows written into Feast's Redis online store exactly as Feast writes them, without Feast.

Saves: importing Feast (seconds) and its per-row Python in the consumer loop; held equal: a test
writes the same rows with Feast's ``RedisOnlineStore.online_write_batch`` and with this module
and compares the hashes byte for byte (tests/test_streamer.py); fallback: none needed at run
time (the layout is Feast 0.67's, pinned).

Layout (Feast 0.67 ``redis.py`` / ``helpers.py`` / ``key_encoding_utils.py``): one hash per
entity key = ``serialize_entity_key`` v3 + the project; a feature's field = murmur3_32 of
``"<view>:<feature>"`` (4 bytes, little-endian); ``_ts:<view>`` = a protobuf ``Timestamp``.

Newer wins, as in Feast: a row older than the stored one is never written (one Lua call per
row, comparing the stored ``Timestamp`` with the row's). Feast also skips a row of the *same*
instant; the streamer writes one if its history snapshot is newer than the one that wrote the
stored row (a late event recomputes the row of the entity's newest instant).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import mmh3

_U32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_STRING = 2  # feast.types.ValueType.STRING


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # protobuf writes negative int64 as ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# A hot entity's window is encoded again by every batch that touches it: its elements' bytes
# (a time's varint, an id's length-prefixed field) are cached, which makes a list ~30x cheaper.
_list_int = lru_cache(maxsize=1 << 18)(_varint)


@lru_cache(maxsize=1 << 16)
def _list_string(text: str) -> bytes:
    data = text.encode()
    return b"\x0a" + _varint(len(data)) + data


def redis_key(join_key: str, value: str, project: str) -> bytes:
    """Feast's hash key of a one-key entity ``{join_key: value}`` (string) in ``project``."""
    name, text = join_key.encode(), value.encode()
    return b"".join(
        (
            _U32.pack(1),
            _U32.pack(_STRING),
            _U32.pack(len(name)),
            name,
            _U32.pack(_STRING),
            _U32.pack(len(text)),
            text,
            project.encode(),
        )
    )


@lru_cache(maxsize=256)
def field_name(view: str, feature: str) -> bytes:
    return _U32.pack(mmh3.hash(f"{view}:{feature}", signed=False))


def timestamp_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


def timestamp_bytes(t_us: int) -> tuple[bytes, int, int]:
    """A protobuf ``Timestamp`` of ``t_us`` (µs since the epoch), and its seconds and nanos."""
    seconds, micros = divmod(t_us, 1_000_000)
    nanos = micros * 1000
    out = b"\x08" + _varint(seconds) if seconds else b""
    if nanos:
        out += b"\x10" + _varint(nanos)
    return out, seconds, nanos


def value_bytes(value: Any, dtype: str) -> bytes:
    """A ``feast.types.Value`` of ``value`` as Feast stores a feature of ``dtype``; missing
    (None, NaN) is the empty message, as Feast writes it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return b""
    if dtype == "Float64":
        return b"\x29" + _DOUBLE.pack(float(value))
    if dtype == "Int64":
        return b"\x20" + _varint(int(value))
    if dtype == "String":
        text = str(value).encode()
        return b"\x12" + _varint(len(text)) + text
    if dtype in _LISTS:
        # A list member (StringList / Int64List / DoubleList): its field 1 repeated, numbers
        # packed (proto3's default), each string its own field.
        tag, kind = _LISTS[dtype]
        items = list(value)
        if not items:
            inner = b""
        elif kind == "String":
            inner = b"".join(map(_list_string, map(str, items)))
        else:
            packed = (
                struct.pack(f"<{len(items)}d", *map(float, items))
                if kind == "Float64"
                else b"".join(map(_list_int, map(int, items)))
            )
            inner = b"\x0a" + _varint(len(packed)) + packed
        return tag + _varint(len(inner)) + inner
    raise ValueError(f"no encoding for dtype {dtype}")


# Value's list members: (tag of field 12 / 14 / 15, length-delimited; element type).
_LISTS: dict[str, tuple[bytes, str]] = {
    "Array(String)": (b"\x62", "String"),
    "Array(Int64)": (b"\x72", "Int64"),
    "Array(Float64)": (b"\x7a", "Float64"),
}


# KEYS[1] Feast's hash, KEYS[2] the history version that wrote it; ARGV: ts field, seconds,
# nanos, Timestamp bytes, history version, version ttl (ms), then field, value pairs.
# Returns 1 when written, 0 when the stored row is newer.
WRITE_NEWER = """
local function ts(b)
  local s, n, i = 0, 0, 1
  while i <= #b do
    local tag = string.byte(b, i); i = i + 1
    local v, mul = 0, 1
    repeat
      local c = string.byte(b, i); i = i + 1
      v = v + (c % 128) * mul; mul = mul * 128
    until c < 128
    if tag == 8 then s = v elseif tag == 16 then n = v end
  end
  return s, n
end
local sec, nanos = tonumber(ARGV[2]), tonumber(ARGV[3])
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  local ps, pn = ts(prev)
  if sec < ps or (sec == ps and nanos < pn) then return 0 end
  if sec == ps and nanos == pn then
    local wv = tonumber(redis.call('GET', KEYS[2]) or '-1')
    if tonumber(ARGV[5]) < wv then return 0 end
  end
end
local args = {ARGV[1], ARGV[4]}
for i = 7, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
return 1
"""


def row_args(
    view: str,
    features: Mapping[str, Any],
    dtypes: Mapping[str, str],
    t_us: int,
    version: int,
    version_ttl_ms: int,
) -> list[bytes | int | str]:
    """ARGV of :data:`WRITE_NEWER` for one row of ``view`` stamped ``t_us``."""
    stamp, seconds, nanos = timestamp_bytes(t_us)
    args: list[bytes | int | str] = [
        timestamp_field(view),
        seconds,
        nanos,
        stamp,
        version,
        version_ttl_ms,
    ]
    for name, value in features.items():
        args += [field_name(view, name), value_bytes(value, dtypes[name])]
    return args
