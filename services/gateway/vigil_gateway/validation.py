"""Pydantic validation errors -> the ``invalid_params`` of a problem, with dotted field names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vigil_contracts.problems import InvalidParam

_PREFIXES = ("Value error, ", "Assertion failed, ")


def _reason(error: Mapping[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "the body is not valid JSON" + (
            f" ({error['ctx']['error']})" if error.get("ctx", {}).get("error") else ""
        )
    if error.get("type") == "extra_forbidden":
        return "is not a field of this schema"
    message = str(error.get("msg", "is invalid"))
    for prefix in _PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def invalid_params(
    errors: Iterable[Mapping[str, Any]], prefix: Sequence[str | int] = (), *, strip_body: bool = False
) -> list[InvalidParam]:
    """One entry per error; ``strip_body`` drops FastAPI's leading ``body`` location."""
    params: list[InvalidParam] = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if strip_body and loc and loc[0] == "body":
            loc = loc[1:]
        if error.get("type") == "json_invalid":
            loc = []  # the position in the text is no field name
        path = [*prefix, *loc]
        name = ".".join(str(part) for part in path) or "body"
        params.append(InvalidParam(name=name, reason=_reason(error)))
    return params


def summary(params: Sequence[InvalidParam]) -> str:
    names = ", ".join(dict.fromkeys(p.name for p in params))
    return f"invalid field(s): {names}" if names else "the request is invalid"
