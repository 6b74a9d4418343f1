"""The internal hops' shared token: the encoder and the predictor answer only a caller that
sends it (``x-vigil-internal-token``), when their ``*_INTERNAL_TOKEN`` is set.

They are reachable only on the stack's internal network already; the token is a second wall
for when that network is shared (a flat cluster network, a mistaken port mapping). Health
and metrics routes stay open for the orchestrator's probes and the scraper. A missing or wrong token is a 401 problem.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from pydantic import AfterValidator, SecretStr
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_servicekit.errors import ServiceError
from vigil_servicekit.request_context import request_id_of

INTERNAL_TOKEN_HEADER = "x-vigil-internal-token"
_HEADER = INTERNAL_TOKEN_HEADER.encode()

#: Fewest characters of a token (``secrets.token_urlsafe(24)`` gives 32).
MIN_TOKEN_LENGTH = 16
#: How the deployment templates' placeholders begin (``deploy/k8s/secrets.yaml``).
PLACEHOLDER_PREFIX = "REPLACE-ME"


def _checked(token: SecretStr) -> SecretStr:
    value = token.get_secret_value()
    if value.upper().startswith(PLACEHOLDER_PREFIX):
        raise ValueError(
            "the internal token is still the template's placeholder: set a random one "
            "(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if value and len(value) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the internal token is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


#: A setting holding the internal token: a service refuses to start with the deployment
#: template's placeholder or a short token (an empty one still switches the check off).
InternalToken = Annotated[SecretStr, AfterValidator(_checked)]


class InternalTokenMiddleware:
    """Refuses requests without the token (401) except on ``open_paths``; sits inside the
    request-context middleware so the refusal is logged and counted like any answer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        error_root: type[ServiceError],
        open_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.token = token.encode()
        self.error_root = error_root
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        sent = b""
        for key, value in scope["headers"]:
            if key == _HEADER:
                sent = value
                break
        if hmac.compare_digest(sent, self.token):
            await self.app(scope, receive, send)
            return
        error = self.error_root(
            "this service answers only the stack's own services",
            status=401,
            title="Unauthenticated",
            slug="internal-token-required",
        )
        body = error.problem_body(instance=scope.get("path"), request_id=request_id_of(scope))
        response = JSONResponse(
            body,
            status_code=401,
            media_type=PROBLEM_MEDIA_TYPE,
            headers={"WWW-Authenticate": 'Vigil-Internal realm="vigil"'},
        )
        await response(scope, receive, send)
