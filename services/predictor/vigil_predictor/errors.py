"""The predictor's one error root; every failure a client can see is one of these.

``vigil_servicekit.handlers`` renders them as RFC 9457 problem details. The data plane raises
them; it never builds a response itself.
"""

from __future__ import annotations

from typing import Any

from vigil_servicekit.errors import ServiceError


class PredictorError(ServiceError):
    """The predictor's error root (status, title, slug: see ``ServiceError``)."""

    def problem_body(
        self, *, instance: str | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        body = super().problem_body(instance=instance, request_id=request_id)
        # V2 clients (tritonclient, KServe's) read the message from "error"; RFC 9457 allows
        # extension members, so both audiences get what they look for.
        body["error"] = self.detail
        return body


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
