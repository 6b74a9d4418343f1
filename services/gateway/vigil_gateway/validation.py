"""Stage *validate*: the items of a batch as transactions, or the problem each alone would
have had; and pydantic validation errors as the ``invalid_params`` of a problem, with dotted
field names. (A single transaction is validated by its route.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from vigil_contracts.api import Transaction
from vigil_contracts.problems import InvalidParam
from vigil_gateway.errors import BatchTooLarge, InvalidTransaction

# All the items of a batch in one call; built once (a TypeAdapter compiles its validator).
_TRANSACTIONS = TypeAdapter(list[Transaction])


def validate_batch(items: Sequence[Any], max_batch: int) -> list[Transaction | InvalidTransaction]:
    """Each item as a Transaction, or the problem with it; :class:`BatchTooLarge` beyond
    ``max_batch`` items."""
    if len(items) > max_batch:
        raise BatchTooLarge(
            f"{len(items)} transactions is more than the {max_batch} allowed per batch"
        )
    return validate_items(items)


def validate_items(items: Sequence[Any]) -> list[Transaction | InvalidTransaction]:
    """Each item as a Transaction, or the problem with it, named as in a batch
    (``transactions.3.amount``): exactly what validating each item on its own gives."""
    try:
        return list(_TRANSACTIONS.validate_python(items))
    except ValidationError as exc:
        bad = {error["loc"][0] for error in exc.errors(include_url=False, include_input=False)}
    out: list[Transaction | InvalidTransaction] = []
    good = [item for i, item in enumerate(items) if i not in bad]
    valid = iter(_TRANSACTIONS.validate_python(good))
    for i, item in enumerate(items):
        if i not in bad:
            out.append(next(valid))
            continue
        try:
            out.append(Transaction.model_validate(item))  # not expected to pass; kept exact
        except ValidationError as exc:
            params = invalid_params(exc.errors(), ("transactions", i))
            out.append(InvalidTransaction(summary(params), invalid_params=params))
    return out


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
            return message[len(prefix) :]
    return message


def invalid_params(
    errors: Iterable[Mapping[str, Any]],
    prefix: Sequence[str | int] = (),
    *,
    strip_body: bool = False,
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
