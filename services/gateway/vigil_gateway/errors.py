"""The gateway's one error root; every failure a client can see is one of these.

``vigil_servicekit.handlers`` renders them as RFC 9457 problem details, and batch items carry
the same problem in their slot. Downstream failures are errors too, but the scoring path turns
them into degraded answers: they only reach a client from endpoints that are not about scoring.
"""

from __future__ import annotations

from vigil_servicekit.errors import ServiceError


class GatewayError(ServiceError):
    """The gateway's error root (status, title, slug, ``problem()``: see ``ServiceError``)."""


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
        self.kind = (
            kind  # "timeout" | "unavailable" | "server_error" | "rejected" | "invalid_response"
        )


class FeatureContractMismatch(DownstreamError):
    """The predictor refused the encoder's vector: the two disagree about the feature order."""


class NotReady(GatewayError):
    status = 503
    title = "Not ready"
    slug = "not-ready"


class DecisionInProgress(GatewayError):
    """Another request for the same transaction is being scored and its decision is not in yet
    (a retry sent while the first attempt still runs)."""

    status = 409
    title = "Transaction in progress"
    slug = "transaction-in-progress"
