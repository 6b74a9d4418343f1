"""Checking encode rows against a serving plan: join keys present, request fields typed.

Pydantic has already checked the shape of the request (``vigil_contracts.encoding``); what a
row must carry depends on the feature service, so it is checked here, naming each offending
field the way the client wrote it (``rows.3.entities.card_id``).
"""

from __future__ import annotations

import math
from typing import Any

from vigil_contracts.encoding import EncodeRow
from vigil_contracts.problems import InvalidParam

from vigil_encoder.errors import InvalidEncodeRequest
from vigil_encoder.plan import ServicePlan

# Enough to fix a client, short enough that a thousand bad rows do not make a huge answer.
MAX_REPORTED = 20


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


def check_rows(plan: ServicePlan, rows: list[EncodeRow]) -> list[dict[str, Any]]:
    """Each row's request fields converted to their dtypes; raise naming every bad field."""
    problems: list[InvalidParam] = []
    converted: list[dict[str, Any]] = []
    fields = plan.request_fields.items()
    for i, row in enumerate(rows):
        entities = row.entities
        for key in plan.join_keys:
            if key not in entities:
                problems.append(InvalidParam(name=f"rows.{i}.entities.{key}",
                                             reason="missing join key"))
        request = row.request
        out: dict[str, Any] = {}
        for name, dtype in fields:
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
