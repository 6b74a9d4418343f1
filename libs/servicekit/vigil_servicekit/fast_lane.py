"""A plain-ASGI lane for a service's hottest routes, in front of FastAPI's routing.

Saves: FastAPI's routing to a handler (~0.17-0.3 ms of CPU a request); held equal: the lane
defers what it does not take to FastAPI, and tests hold its answers equal to FastAPI's
(tests/test_servicekit_fast_lane.py); fallback: FastAPI itself.

FastAPI's way from the middleware to a handler (exception middleware, exit stack, router,
included routers, the route's request/response wrapper, dependency solving) cost about as much
CPU as a one-row prediction. The lane matches a few routes the app also declares, with each
route's own compiled path regex and converters, and calls a handler written for the lane with
the path parameters. Everything else goes on to FastAPI unchanged, and so does every request
while ``app.dependency_overrides`` is set: tests swap dependencies through FastAPI.

What a client or an operator sees does not tell the two ways apart:

- ``scope["route"]`` is the declared route, so metric labels and log lines name its template;
  the declared route is also what the OpenAPI document shows.
- An exception the app has a handler for (the service's error root, HTTP errors) is answered by
  that very handler, looked up the way Starlette's exception middleware looks it up; any other
  exception propagates to the app's outer error middleware, which answers the generic 500 (and
  logs it) exactly as for a FastAPI route.

A handler may answer only the plain case of a route and leave the rest to FastAPI: it raises
:class:`Defer` (before it answers or touches the scope's log fields), and the lane hands the
request to FastAPI with the body messages the handler has already received played again, then the
server's own ``receive``. FastAPI then decides what it always decided (a body that is not JSON, a
wrong content type, an empty body). Only a route declared with ``defers=True`` may do so: only its
``receive`` is recorded. A route with a body-size limit (its own or the app's) is not taken: the
limit wraps FastAPI's route, which the lane would pass by. A limit enforced by a middleware
around the lane (the gateway's) holds both ways; :func:`json_body_or_defer` lets its HTTP error
through to the app's handler.

:func:`install_fast_lane` must run before ``wiring.wire`` so that the lane sits inside the
request-context middleware (request id, access line, request metrics).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil_servicekit.request_context import RequestContextMiddleware

#: ``handler(request, **path_params) -> Response``.
FastHandler = Callable[..., Awaitable[Response]]
_ExceptionHandler = Callable[[Request, Exception], Any]


class Defer(Exception):
    """Raised by a lane handler of a ``defers=True`` route: FastAPI is to answer this request."""


@dataclass(frozen=True)
class FastRoute:
    """A declared route and the handler the lane answers it with (same path parameters)."""

    route: APIRoute
    handler: FastHandler
    defers: bool = False
    """Whether the handler may raise :class:`Defer` (then the lane records what it receives)."""


async def json_body_or_defer(request: Request) -> bytes:
    """The body of a request FastAPI surely reads as JSON (sent as exactly
    ``application/json``), else :class:`Defer`: another spelling of a JSON content type (or
    none) is FastAPI's to judge. An HTTP error raised while reading (a body-size limit around the
    app) propagates, to be answered by the app's handler as FastAPI's route would have it
    answered; a body that could not be read otherwise (the client gone) is deferred, and FastAPI
    meets the same failure."""
    if request.headers.get("content-type") != "application/json":
        raise Defer
    try:
        return await request.body()
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 - FastAPI meets the same failure and answers it
        raise Defer from None


def declared_route(router: APIRouter, endpoint: Callable[..., Any]) -> APIRoute:
    """The route ``router`` declares for ``endpoint`` (the object FastAPI puts in the scope)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint:
            return route
    raise LookupError(f"{endpoint.__qualname__} is not a route of this router")


class FastLaneMiddleware:
    """Instantiated by Starlette when the app first builds its middleware stack, after the
    routes and exception handlers are in place."""

    def __init__(self, app: ASGIApp, *, owner: FastAPI, routes: Sequence[FastRoute]) -> None:
        self.app = app
        self.owner = owner
        self.routes = [
            (fast.route, frozenset(fast.route.methods or ()), fast.handler, fast.defers)
            for fast in routes
        ]
        limited = [fast.route.path for fast in routes if _body_limit(owner, fast.route)]
        if limited:
            raise RuntimeError(
                f"the fast lane cannot take a route with a body-size limit: {', '.join(limited)}"
            )
        # As ExceptionMiddleware splits them: the generic 500 (Exception, 500) is the outer
        # error middleware's, status handlers are for HTTP exceptions only.
        self.status_handlers: dict[int, _ExceptionHandler] = {}
        self.exception_handlers: dict[type[BaseException], _ExceptionHandler] = {}
        for key, handler in owner.exception_handlers.items():
            if key in (500, Exception):
                continue
            if isinstance(key, int):
                self.status_handlers[key] = handler
            else:
                self.exception_handlers[key] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not scope.get("root_path")
            and not self.owner.dependency_overrides
        ):
            method = scope["method"]
            for route, methods, handler, defers in self.routes:
                if method in methods:
                    match = route.path_regex.match(scope["path"])
                    if match is not None:
                        convertors = route.param_convertors
                        params = {
                            key: convertors[key].convert(value)
                            for key, value in match.groupdict().items()
                        }
                        if defers:
                            await self._answer_or_defer(
                                scope, receive, send, route, handler, params
                            )
                        else:
                            await self._answer(scope, receive, send, route, handler, params)
                        return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: APIRoute,
        handler: FastHandler,
        params: dict[str, Any],
    ) -> None:
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {**scope.get("path_params", {}), **params}
        request = Request(scope, receive)
        try:
            response = await handler(request, **params)
        except Defer:
            raise
        except Exception as exc:
            on_error = self._handler_for(exc)
            if on_error is None:
                raise  # the outer error middleware answers it: the generic 500
            if inspect.iscoroutinefunction(on_error):
                response = await on_error(request, exc)
            else:
                response = await run_in_threadpool(on_error, request, exc)
            if response is None:
                return
        # Sending is outside the try: once the response has started, no handler may answer.
        await response(scope, receive, send)

    async def _answer_or_defer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: APIRoute,
        handler: FastHandler,
        params: dict[str, Any],
    ) -> None:
        received: list[Message] = []

        async def recording() -> Message:
            message = await receive()
            received.append(message)
            return message

        saved = {key: scope[key] for key in _ROUTING_KEYS if key in scope}
        try:
            await self._answer(scope, recording, send, route, handler, params)
            return
        except Defer:
            pass
        for key in _ROUTING_KEYS:
            scope.pop(key, None)
        scope.update(saved)
        replay = iter(received)

        async def replaying() -> Message:
            message = next(replay, None)
            return message if message is not None else await receive()

        await self.app(scope, replaying, send)

    def _handler_for(self, exc: Exception) -> _ExceptionHandler | None:
        if isinstance(exc, HTTPException):
            handler = self.status_handlers.get(exc.status_code)
            if handler is not None:
                return handler
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None


_ROUTING_KEYS = ("route", "endpoint", "path_params")


def _body_limit(app: FastAPI, route: APIRoute) -> bool:
    """Whether FastAPI limits the body of ``route`` (as declared or as the app includes it)."""
    if getattr(app, "max_body_size", None) is not None:
        return True
    return any(
        getattr(candidate, "max_body_size", None) is not None
        for candidate in (route, *app.routes)
        if candidate is route
        or (isinstance(candidate, APIRoute) and candidate.endpoint is route.endpoint)
    )


def install_fast_lane(app: FastAPI, routes: Sequence[FastRoute]) -> None:
    """Answer ``routes`` in the lane; call it before ``wiring.wire``."""
    if any(m.cls is RequestContextMiddleware for m in app.user_middleware):
        raise RuntimeError(
            "install the fast lane before wire(): it must sit inside the request-context middleware"
        )
    app.add_middleware(FastLaneMiddleware, owner=app, routes=list(routes))
