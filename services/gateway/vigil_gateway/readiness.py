"""Readiness: the gateway can give real decisions when it knows its model (metadata read from
the predictor), the encoder is ready, and the decision store answers."""

from __future__ import annotations

import asyncio
from typing import Any

from vigil_gateway.decisions import DecisionStore
from vigil_gateway.encoder_client import EncoderClient
from vigil_gateway.model_catalog import ModelCatalog


async def readiness(
    catalog: ModelCatalog, encoder: EncoderClient, store: DecisionStore, *, timeout: float
) -> dict[str, Any]:
    """``{"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}``; checks run concurrently."""

    async def store_check() -> tuple[bool, str]:
        try:
            async with asyncio.timeout(timeout):
                return await store.ping()
        except TimeoutError:
            return False, f"no answer within {timeout}s"

    encoder_ok, store_ok = await asyncio.gather(encoder.ready(timeout), store_check())
    current = catalog.current
    if current is not None:
        model = (True, f"{current.name} version {current.version}")
    else:
        model = (False, f"not read from the predictor yet ({catalog.last_error or 'pending'})")
    checks = {
        "model_metadata": model,
        "encoder": encoder_ok,
        "decision_store": store_ok,
    }
    return {
        "ready": all(ok for ok, _ in checks.values()),
        "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
    }
