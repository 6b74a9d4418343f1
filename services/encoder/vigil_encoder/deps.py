"""Dependencies the routes ask for; tests swap them through ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil_encoder.dataplane import Encoder
from vigil_encoder.metrics import EncoderMetrics


def get_encoder(request: Request) -> Encoder:
    return request.app.state.encoder


def get_metrics(request: Request) -> EncoderMetrics:
    return request.app.state.metrics


EncoderDep = Annotated[Encoder, Depends(get_encoder)]
MetricsDep = Annotated[EncoderMetrics, Depends(get_metrics)]
