"""The encoder's internal API: keys + request-time fields in, ordered feature vectors out."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EncodeRow(BaseModel):
    entities: dict[str, str] = Field(description="join key -> value, e.g. {'card_id': 'c12'}")
    request: dict[str, float | int | str | None] = Field(
        description="Request-time fields of the feature service (see request_features.REQUEST_FIELDS)."
    )


class EncodeRequest(BaseModel):
    feature_service: str
    rows: list[EncodeRow] = Field(min_length=1)


class EncodedRow(BaseModel):
    values: list[float | None] = Field(description="In model order; None = missing (NaN to XGBoost).")
    missing: list[bool]
    stale: list[bool] = Field(description="True where a stored value was older than its view's TTL (then also missing).")
    age_seconds: list[float | None] = Field(description="Age of each stored value; 0 for on-demand; None when missing.")


class EncodeResponse(BaseModel):
    feature_service: str
    feature_names: list[str]
    feature_contract: str
    rows: list[EncodedRow]
