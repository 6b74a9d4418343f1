"""Checking encode rows against a serving plan: join keys present, request fields typed.

The request's shape (``vigil_contracts.encoding.EncodeRequest``) is checked by the route; what a
row must carry depends on the feature service, so it is checked here, naming each offending
field the way the client wrote it (``rows.3.entities.card_id``).

Rows are plain dicts (``{"entities": {...}, "request": {...}}``). The common case, a row whose
values already have their field's type, is decided with a type test per field; anything else
goes through :func:`_request_value`, which converts what may be converted and names the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vigil_contracts.problems import InvalidParam

from vigil_encoder.errors import InvalidEncodeRequest
from vigil_encoder.plan import ServicePlan

# Enough to fix a client, short enough that a thousand bad rows do not make a huge answer.
MAX_REPORTED = 20

# The type a request field's value has when it needs no conversion, by dtype.
_AS_IS: dict[str, tuple[type, ...]] = {
    "Float64": (float,),
    "Float32": (float,),
    "Int64": (int,),
    "Int32": (int,),
    "String": (str, type(None)),
    "Bool": (bool,),
}
_FLOATS = frozenset({"Float64", "Float32"})


def _request_value(dtype: str, value: Any) -> tuple[Any, str | None]:
    """``(converted value, None)`` or ``(None, reason)``."""
    if dtype == "String":
        # A missing string (e.g. no country) is a legitimate input to the transforms.
        if value is None or isinstance(value, str):
            return value, None
        return None, "must be a string"
    if value is None:
        return None, "must not be null"
    if dtype in ("Float64", "Float32"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, "must be a number"
        value = float(value)
        if not math.isfinite(value):
            return None, "must be a finite number"
        return value, None
    if dtype in ("Int64", "Int32"):
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "must be an integer"
        return value, None
    if dtype == "Bool":
        if isinstance(value, bool) or value in (0, 1):
            return bool(value), None
        return None, "must be a boolean"
    return None, f"has unsupported dtype {dtype}"  # plans refuse these; kept for safety


def _fast_row(
    request: dict[str, Any], entities: dict[str, Any], join_keys: Sequence[str],
    fields: Sequence[tuple[str, tuple[type, ...], bool]],
) -> dict[str, Any] | None:
    """The row's converted request fields when every value already has its type, else None."""
    for key in join_keys:
        if key not in entities:
            return None
    out: dict[str, Any] = {}
    for name, types, is_float in fields:
        value = request.get(name, _ABSENT)
        if type(value) not in types or (is_float and value - value != 0.0):  # NaN, inf
            return None
        out[name] = value
    return out


_ABSENT = object()


def check_rows(plan: ServicePlan, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's request fields converted to their dtypes; raise naming every bad field."""
    fields = [(name, _AS_IS[dtype], dtype in _FLOATS) for name, dtype in plan.request_fields.items()]
    join_keys = plan.join_keys
    converted: list[dict[str, Any]] = []
    problems: list[InvalidParam] = []
    for i, row in enumerate(rows):
        entities, request = row["entities"], row["request"]
        fast = _fast_row(request, entities, join_keys, fields)
        if fast is not None:
            converted.append(fast)
            continue
        for key in join_keys:
            if key not in entities:
                problems.append(InvalidParam(name=f"rows.{i}.entities.{key}",
                                             reason="missing join key"))
        out: dict[str, Any] = {}
        for name, dtype in plan.request_fields.items():
            if name not in request:
                problems.append(InvalidParam(name=f"rows.{i}.request.{name}",
                                             reason=f"missing request field ({dtype})"))
                continue
            value, reason = _request_value(dtype, request[name])
            if reason is not None:
                problems.append(InvalidParam(name=f"rows.{i}.request.{name}",
                                             reason=f"{reason} ({dtype})"))
            out[name] = value
        converted.append(out)
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        problems = problems[:MAX_REPORTED]
        names = ", ".join(p.name for p in problems)
        raise InvalidEncodeRequest(
            f"invalid rows for feature service {plan.name!r}: {names}", invalid_params=problems
        )
    return converted
