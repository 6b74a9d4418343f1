"""Problem details (RFC 9457): the one error shape every Vigil service answers with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://vigil.dev/problems/"


class InvalidParam(BaseModel):
    name: str = Field(
        description="Dotted path of the offending field, e.g. 'amount' or 'items.3.currency'."
    )
    reason: str


class Problem(BaseModel):
    type: str = Field(description="URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    invalid_params: list[InvalidParam] | None = Field(
        default=None, description="Each field that failed validation (422 only)."
    )

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def problem_type(slug: str) -> str:
    return PROBLEM_BASE + slug
