"""Stage *authenticate*: who is calling, and may they do this.

The caller sends ``Authorization: Bearer <key>``; the key is looked up in this process's mirror
of the key table (``api_keys.KeyRing``: no Redis round trip here). No key, a key that is not one
of ours, a revoked or an expired one is a 401 with ``WWW-Authenticate``; a key without the
route's scope is a 403. Both are problem documents and say nothing about which keys exist.
Knows nothing of scoring; runs before the body is read or validated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vigil_gateway.api_keys import KeyRecord, KeyRing
from vigil_gateway.errors import GatewayError, NotReady


@dataclass(frozen=True)
class Caller:
    """The authenticated caller as the later stages see it: ids, never the key."""

    key_id: str
    client: str
    record: KeyRecord | None = None


#: The caller of a gateway whose authentication is switched off (``GATEWAY_AUTH_ENABLED=false``).
ANONYMOUS = Caller(key_id="anonymous", client="anonymous")


class Unauthenticated(GatewayError):
    status = 401
    title = "Unauthenticated"
    slug = "unauthenticated"

    def __init__(self, detail: str, error: str = "invalid_token") -> None:
        # RFC 6750: no error code when the request carried no credentials at all.
        challenge = 'Bearer realm="vigil"' + (f', error="{error}"' if error else "")
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"
    slug = "insufficient-scope"

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"this API key lacks the {scope!r} scope",
            headers={
                "WWW-Authenticate": f'Bearer realm="vigil", error="insufficient_scope", scope="{scope}"'
            },
        )


class Authenticate:
    def __init__(self, ring: KeyRing | None) -> None:
        self.ring = ring  # None: authentication is off

    def __call__(self, authorization: str | None, scope: str) -> Caller:
        """The caller whose key ``authorization`` carries, allowed ``scope``; else the error."""
        ring = self.ring
        if ring is None:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated(
                "an API key is required: send `Authorization: Bearer <key>`", error=""
            )
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "send the API key as `Authorization: Bearer <key>`", error="invalid_request"
            )
        if ring.loaded_at is None:
            raise NotReady("the API key table has not been read yet", headers={"Retry-After": "1"})
        record = ring.lookup(token.strip())
        if record is None:
            raise Unauthenticated("the API key is not valid")
        if not record.active(time.time()):
            raise Unauthenticated("the API key is revoked or expired")
        if scope not in record.scopes:
            raise Forbidden(scope)
        return Caller(key_id=record.key_id, client=record.client, record=record)
