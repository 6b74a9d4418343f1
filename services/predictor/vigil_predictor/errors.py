"""The predictor's one error root; every failure a client can see is one of these.

``handlers.py`` renders them as RFC 9457 problem details. The data plane raises them; it never
builds a response itself.
"""

from __future__ import annotations

from vigil_contracts.problems import InvalidParam


class PredictorError(Exception):
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


class ModelNotFound(PredictorError):
    status = 404
    title = "Model not found"
    slug = "model-not-found"


class ModelNotReady(PredictorError):
    status = 503
    title = "Model not ready"
    slug = "model-not-ready"


class ServerNotReady(PredictorError):
    status = 503
    title = "Predictor not ready"
    slug = "predictor-not-ready"


class InvalidRequest(PredictorError):
    """The inference request is malformed: not JSON, not V2, or its binary part is inconsistent."""

    status = 400
    title = "Invalid inference request"
    slug = "invalid-inference-request"


class InvalidTensor(InvalidRequest):
    """A tensor's name, datatype, shape, size or values do not fit the model."""

    title = "Invalid tensor"
    slug = "invalid-tensor"


class FeatureContractMismatch(InvalidRequest):
    """The vector was built for another feature order than the model's."""

    title = "Feature contract mismatch"
    slug = "feature-contract-mismatch"


class RequestTooLarge(PredictorError):
    status = 413
    title = "Request too large"
    slug = "request-too-large"
