"""Checking an encode request against a serving plan: join keys present, request fields typed.

The request's shape (``vigil_contracts.encoding.EncodeRequest`` or ``EncodeColumnsRequest``) is
checked by the route; what a row must carry depends on the feature service, so it is checked
here, naming each offending field the way the client wrote it (``rows.3.entities.card_id``,
``columns.request.amount.3``).

Rows are plain dicts (``{"entities": {...}, "request": {...}}``). The common case, a batch whose
values all already have their field's type, is decided column by column (:func:`check_columns`:
the set of a column's types, one C loop each); a batch that is not is checked row by row
(:func:`check_rows`), a row whose values have their types with a type test per field, anything
else through :func:`_request_value`, which converts what may be converted and names the rest.
A batch sent as columns is checked as such (:func:`check_request_columns`): a column whose
values all have their type is used as sent, any other value by value through
:func:`_request_value`, so both forms accept, convert and refuse the same values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import contains, itemgetter
from typing import Any, NoReturn

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
    request: dict[str, Any],
    entities: dict[str, Any],
    join_keys: Sequence[str],
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


def _refuse(form: str, plan: ServicePlan, problems: list[InvalidParam]) -> NoReturn:
    """Raise the 422 naming (at most :data:`MAX_REPORTED` of) the bad fields of a request."""
    problems = problems[:MAX_REPORTED]
    names = ", ".join(p.name for p in problems)
    raise InvalidEncodeRequest(
        f"invalid {form} for feature service {plan.name!r}: {names}", invalid_params=problems
    )


def check_rows(plan: ServicePlan, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's request fields converted to their dtypes; raise naming every bad field."""
    fields = [
        (name, _AS_IS[dtype], dtype in _FLOATS) for name, dtype in plan.request_fields.items()
    ]
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
                problems.append(
                    InvalidParam(name=f"rows.{i}.entities.{key}", reason="missing join key")
                )
        out: dict[str, Any] = {}
        for name, dtype in plan.request_fields.items():
            if name not in request:
                problems.append(
                    InvalidParam(
                        name=f"rows.{i}.request.{name}", reason=f"missing request field ({dtype})"
                    )
                )
                continue
            value, reason = _request_value(dtype, request[name])
            if reason is not None:
                problems.append(
                    InvalidParam(name=f"rows.{i}.request.{name}", reason=f"{reason} ({dtype})")
                )
            out[name] = value
        converted.append(out)
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        _refuse("rows", plan, problems)
    return converted


_REQUEST = itemgetter("request")
_ENTITIES = itemgetter("entities")


def _fast_columns(plan: ServicePlan, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """The request fields as columns when every row has every join key and every value already
    has its field's type (what :func:`_fast_row` accepts, for all rows at once), else None."""
    entities = list(map(_ENTITIES, rows))
    for key in plan.join_keys:
        if not all(map(contains, entities, repeat(key))):
            return None
    requests = list(map(_REQUEST, rows))
    columns: dict[str, list[Any]] = {}
    for name, dtype in plan.request_fields.items():
        column = list(map(dict.get, requests, repeat(name), repeat(_ABSENT)))
        if not set(map(type, column)) <= _AS_IS_SETS[dtype]:
            return None
        # All finite exactly when their sum is, but for a sum that overflows: that batch goes
        # row by row, which decides each value on its own.
        if dtype in _FLOATS and (total := sum(column)) - total != 0.0:
            return None
        columns[name] = column
    return columns


_AS_IS_SETS = {dtype: frozenset(types) for dtype, types in _AS_IS.items()}


def check_columns(plan: ServicePlan, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """:func:`check_rows` as columns: request field -> each row's converted value, in the
    plan's order of fields; raises as :func:`check_rows` does."""
    # One row (a single transaction) is checked faster as a row than as columns.
    columns = _fast_columns(plan, rows) if len(rows) > 1 else None
    if columns is None:
        converted = check_rows(plan, rows)
        if len(converted) == 1:  # every field, in the plan's order
            return {name: [value] for name, value in converted[0].items()}
        columns = {name: [row[name] for row in converted] for name in plan.request_fields}
    return columns


def check_request_columns(
    plan: ServicePlan, entities: Mapping[str, Sequence[Any]], request: Mapping[str, Sequence[Any]]
) -> dict[str, Sequence[Any]]:
    """:func:`check_columns` of a batch sent as columns (join key -> each row's value, request
    field -> each row's value, all of one length): request field -> each row's converted value,
    in the plan's order of fields; raises naming every bad column or value
    (``columns.request.amount.3``). A column that needs no conversion is returned as sent."""
    problems: list[InvalidParam] = []
    for key in plan.join_keys:
        if key not in entities:
            problems.append(InvalidParam(name=f"columns.entities.{key}", reason="missing join key"))
    columns: dict[str, Sequence[Any]] = {}
    for name, dtype in plan.request_fields.items():
        column = request.get(name)
        if column is None:
            problems.append(
                InvalidParam(
                    name=f"columns.request.{name}", reason=f"missing request field ({dtype})"
                )
            )
            continue
        if len(column) == 1:  # a single transaction: one type test, as in _fast_row
            value = column[0]
            if type(value) in _AS_IS[dtype] and (dtype not in _FLOATS or value - value == 0.0):
                columns[name] = column
                continue
        # As in _fast_columns: all finite exactly when their sum is, but for a sum that
        # overflows, which is then decided value by value.
        elif set(map(type, column)) <= _AS_IS_SETS[dtype] and (
            dtype not in _FLOATS or (total := sum(column)) - total == 0.0
        ):
            columns[name] = column
            continue
        converted: list[Any] = []
        for i, value in enumerate(column):
            value, reason = _request_value(dtype, value)
            if reason is not None:
                problems.append(
                    InvalidParam(name=f"columns.request.{name}.{i}", reason=f"{reason} ({dtype})")
                )
                if len(problems) >= MAX_REPORTED:
                    break
            converted.append(value)
        columns[name] = converted
        if len(problems) >= MAX_REPORTED:
            break
    if problems:
        _refuse("columns", plan, problems)
    return columns
