"""The encoder's one error root; every failure a client can see is one of these.

``handlers.py`` renders them as RFC 9457 problem details. The data plane raises them; it never
builds a response itself.
"""

from __future__ import annotations

from typing import Any

from vigil_contracts.problems import InvalidParam


class EncoderError(Exception):
    """A failure with the HTTP status, title and problem type slug it is answered with.

    ``extensions`` are extra members of the problem document (RFC 9457 allows them), e.g. the
    readiness checks that failed.
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


class FeatureServiceNotFound(EncoderError):
    status = 404
    title = "Feature service not found"
    slug = "feature-service-not-found"


class InvalidEncodeRequest(EncoderError):
    """A row lacks a join key or a request field, or a request field has the wrong type."""

    status = 422
    title = "Validation failed"
    slug = "validation-failed"


class TooManyRows(EncoderError):
    status = 413
    title = "Too many rows"
    slug = "too-many-rows"


class FeatureStoreUnavailable(EncoderError):
    """Redis refused, dropped or timed out: the caller should fall back, not retry at once."""

    status = 503
    title = "Feature store unavailable"
    slug = "feature-store-unavailable"


class EncoderNotReady(EncoderError):
    """The serving spec is not loaded (or a readiness check failed)."""

    status = 503
    title = "Encoder not ready"
    slug = "encoder-not-ready"


class SpecError(Exception):
    """The serving spec is missing, unreadable, or describes something the encoder cannot serve.

    Not an ``EncoderError``: it is never a client's fault; it keeps the encoder not ready.
    """
