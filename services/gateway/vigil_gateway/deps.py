"""Dependency aliases for routes: the objects the lifespan built, read from ``app.state``.

The metrics and the request id come from ``vigil_servicekit.deps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from vigil_gateway.authenticate import Authenticate
from vigil_gateway.decisions import DecisionStore
from vigil_gateway.encoder_client import EncoderClient
from vigil_gateway.errors import NotReady
from vigil_gateway.metrics import GatewayMetrics
from vigil_gateway.model_catalog import ModelCatalog
from vigil_gateway.pipeline import ScoringPipeline
from vigil_gateway.settings import GatewaySettings


@dataclass
class Services:
    """What the lifespan opens (and closes): clients, stores and the scoring path."""

    scoring: ScoringPipeline
    catalog: ModelCatalog
    encoder: EncoderClient
    store: DecisionStore
    authenticate: Authenticate
    metrics: GatewayMetrics


def services_of(request: Request) -> Services:
    """The running services, or :class:`NotReady` outside the lifespan."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise NotReady("the gateway is starting up or shutting down")
    return services


async def _services(request: Request) -> Services:
    return services_of(request)


async def _scoring(services: Annotated[Services, Depends(_services)]) -> ScoringPipeline:
    return services.scoring


async def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


ServicesDep = Annotated[Services, Depends(_services)]
ScoringDep = Annotated[ScoringPipeline, Depends(_scoring)]
SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
