"""Dependencies the routes ask for; tests swap them through ``app.dependency_overrides``.

The metrics and the request id come from ``vigil_servicekit.deps``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil_predictor.dataplane import DataPlane


async def get_dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
