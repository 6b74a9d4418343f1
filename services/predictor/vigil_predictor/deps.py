"""Dependencies the routes ask for; tests swap them through ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil_predictor.dataplane import DataPlane
from vigil_predictor.metrics import PredictorMetrics


def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def get_metrics(request: Request) -> PredictorMetrics:
    return request.app.state.metrics


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
MetricsDep = Annotated[PredictorMetrics, Depends(get_metrics)]
