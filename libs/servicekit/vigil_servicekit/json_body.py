"""Request bodies parsed by orjson where FastAPI parses JSON itself.

``OrjsonRoute`` is FastAPI's documented extension point for a custom request class (a
``route_class`` of the router): FastAPI still reads the body, checks its content type, reports a
body that is not JSON and validates the result; only the parse is orjson's, several times faster
than the standard library's on a large body. Where orjson refuses a body, the standard parser
decides: it accepts a few things orjson does not (``NaN``, numbers beyond a double, UTF-16/32) and
its error (position and message) is the one FastAPI has always reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._json = json.loads(body)
        return self._json


class OrjsonRoute(APIRoute):
    """An ``APIRoute`` whose handler sees an :class:`OrjsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler
