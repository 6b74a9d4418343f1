"""Dependencies the routes ask for; tests swap them through ``app.dependency_overrides``.

The metrics and the request id come from ``vigil_servicekit.deps``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil_encoder.dataplane import Encoder


async def get_encoder(request: Request) -> Encoder:
    return request.app.state.encoder


EncoderDep = Annotated[Encoder, Depends(get_encoder)]
