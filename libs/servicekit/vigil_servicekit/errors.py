"""The error root every client-visible failure of a service derives from.

Each service subclasses it once (``EncoderError``, ...) and then per kind of failure, with the
HTTP status, title and problem type slug it is answered with; ``handlers.py`` renders them.
"""

from __future__ import annotations

from typing import Any

from vigil_contracts.problems import InvalidParam, Problem, problem_type


class ServiceError(Exception):
    """A failure with the HTTP status, title and problem type slug it is answered with.

    ``extensions`` are extra members of the problem document (RFC 9457 allows them), e.g. the
    readiness checks that failed; they never replace a standard member. ``headers`` go on the
    answer (a 401's ``WWW-Authenticate``, a 429's ``Retry-After``).
    """

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal-error"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        slug: str | None = None,
        invalid_params: list[InvalidParam] | None = None,
        extensions: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        if slug is not None:
            self.slug = slug
        self.invalid_params = invalid_params
        self.extensions = extensions or {}
        self.headers = headers or {}
        """HTTP headers the answer carries (``WWW-Authenticate``, ``Retry-After``)."""

    def problem(self, *, instance: str | None = None, request_id: str | None = None) -> Problem:
        return Problem(
            type=problem_type(self.slug),
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            request_id=request_id,
            invalid_params=self.invalid_params,
        )

    def problem_body(
        self, *, instance: str | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """The problem document as sent; override to add members every answer carries."""
        body = self.problem(instance=instance, request_id=request_id).body()
        for key, value in self.extensions.items():
            body.setdefault(key, value)
        return body
