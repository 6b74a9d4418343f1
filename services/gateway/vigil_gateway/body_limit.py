"""The request body size limit: bodies above ``max_bytes`` are refused with 413 before they are
all in memory."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil_contracts.problems import PROBLEM_MEDIA_TYPE
from vigil_gateway.errors import GatewayError
from vigil_servicekit.request_context import request_id_of


class BodyLimitMiddleware:
    """Refuses request bodies above ``max_bytes`` with 413, before they are all in memory.

    A declared Content-Length over the limit is answered at once; a body that grows past it
    while streaming fails the read with an HTTPException the error handler renders.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = GatewayError(
            self._detail(), status=413, title="Request too large", slug="request-too-large"
        )
        body = error.problem_body(instance=scope.get("path"), request_id=request_id_of(scope))
        response = JSONResponse(body, status_code=413, media_type=PROBLEM_MEDIA_TYPE)
        await response(scope, receive, send)
