"""The gateway's one error root; every failure a client can see is one of these.

``handlers.py`` renders them as RFC 9457 problem details, and batch items carry the same problem
in their slot. Downstream failures are errors too, but the scoring path turns them into degraded
answers: they only reach a client from endpoints that are not about scoring.
"""

from __future__ import annotations

from vigil_contracts.problems import InvalidParam, Problem, problem_type


class GatewayError(Exception):
    """A failure with the HTTP status, title and problem type slug it is answered with."""

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


class InvalidTransaction(GatewayError):
    """The request (or one batch item) does not match the business API."""

    status = 422
    title = "Invalid transaction"
    slug = "invalid-transaction"


class BatchTooLarge(GatewayError):
    status = 413
    title = "Batch too large"
    slug = "batch-too-large"


class DecisionConflict(GatewayError):
    """A transaction id already has a decision for a different payload."""

    status = 409
    title = "Transaction id reused"
    slug = "transaction-id-conflict"


class DownstreamError(GatewayError):
    """The encoder or the predictor failed; ``kind`` says how (for metrics and reason codes)."""

    status = 502
    title = "Dependency failed"
    slug = "dependency-failed"

    def __init__(self, downstream: str, kind: str, detail: str) -> None:
        super().__init__(f"{downstream}: {detail}")
        self.downstream = downstream
        self.kind = kind  # "timeout" | "unavailable" | "server_error" | "rejected" | "invalid_response"


class FeatureContractMismatch(DownstreamError):
    """The predictor refused the encoder's vector: the two disagree about the feature order."""


class NotReady(GatewayError):
    status = 503
    title = "Not ready"
    slug = "not-ready"
