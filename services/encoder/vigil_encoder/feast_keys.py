"""Names in Feast's Redis online store: hash keys and field names, without importing Feast.

Feast 0.67 (``feast/infra/online_stores/redis.py``, ``helpers.py``, ``key_encoding_utils.py``)
keeps one Redis hash per entity key, shared by every feature view of that entity:

- hash key = ``serialize_entity_key(entity_key, entity_key_serialization_version=3)`` followed by
  the project name in UTF-8;
- field of a feature = murmur3_32 (unsigned) of ``"<view>:<feature>"`` as 4 little-endian bytes;
- field ``_ts:<view>`` = the row's event time as a protobuf ``Timestamp``.

Only version 3 of the key serialization exists in Feast 0.67 (2 and below are removed). A test
compares every function here with Feast's own.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import mmh3

ENTITY_KEY_SERIALIZATION_VERSION = 3

# feast.types.ValueType.Enum numbers that can appear in an entity key.
_STRING = 2
_INT64 = 4

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_STRING_HEAD = struct.Struct("<II")  # value type, then length


def field_name(view: str, feature: str) -> bytes:
    """The hash field holding ``view``'s ``feature`` (Feast's ``helpers._mmh3``)."""
    return _U32.pack(mmh3.hash(f"{view}:{feature}", signed=False))


def timestamp_field(view: str) -> bytes:
    """The hash field holding the event time of ``view``'s row for the entity."""
    return f"_ts:{view}".encode()


def _value_bytes(value: str | int) -> bytes:
    # bool is an int to Python but has no place in an entity key.
    if isinstance(value, str):
        encoded = value.encode("utf8")
        return _STRING_HEAD.pack(_STRING, len(encoded)) + encoded
    if isinstance(value, int) and not isinstance(value, bool):
        return _U32.pack(_INT64) + _U32.pack(8) + _I64.pack(value)
    raise TypeError(f"entity key values must be str or int, not {type(value).__name__}")


class EntityKeyCodec:
    """Hash keys for one set of join keys, with everything that does not vary precomputed.

    Feast sorts the join keys by name; the prefix (count + key names) is the same for every row.
    """

    def __init__(self, join_keys: Sequence[str], project: str) -> None:
        if not join_keys:
            raise ValueError("an entity key needs at least one join key")
        if len(set(join_keys)) != len(join_keys):
            raise ValueError(f"duplicate join keys: {list(join_keys)}")
        self.join_keys = tuple(sorted(join_keys))
        parts = [_U32.pack(len(self.join_keys))]
        for key in self.join_keys:
            encoded = key.encode("utf8")
            parts += [_U32.pack(_STRING), _U32.pack(len(encoded)), encoded]
        self._prefix = b"".join(parts)
        self._project = project.encode("utf-8")
        #: The join key when there is exactly one (the common case, served by a shorter path).
        self.single_key: str | None = self.join_keys[0] if len(self.join_keys) == 1 else None

    def serialize(self, values: Mapping[str, str | int]) -> bytes:
        """Feast's ``serialize_entity_key`` (version 3) of ``{join key: value}``."""
        return self._prefix + b"".join(_value_bytes(values[key]) for key in self.join_keys)

    def redis_key(self, values: Mapping[str, str | int]) -> bytes:
        """Feast's ``helpers._redis_key``: the serialized entity key, then the project."""
        if self.single_key is not None:
            return self.single_redis_key(values[self.single_key])
        return self.serialize(values) + self._project

    def single_redis_key(self, value: str | int) -> bytes:
        """:meth:`redis_key` of ``{single_key: value}``, for a codec of one join key."""
        return b"".join((self._prefix, _value_bytes(value), self._project))
