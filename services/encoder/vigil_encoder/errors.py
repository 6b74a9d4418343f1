"""The encoder's one error root; every failure a client can see is one of these.

``vigil_servicekit.handlers`` renders them as RFC 9457 problem details. The data plane raises
them; it never builds a response itself.
"""

from __future__ import annotations

from vigil_servicekit.errors import ServiceError


class EncoderError(ServiceError):
    """The encoder's error root (status, title, slug, ``extensions``: see ``ServiceError``)."""


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
