"""The HTTP floor: a uvicorn app that answers every request with the same small JSON body.

``uvicorn --factory bench.floor_app:create_app`` with the flags the Vigil services use. Nothing
is parsed or computed, so its latency is the cost of the hop itself (client, loopback TCP,
uvicorn, HTTP parsing) that any service on this machine pays before doing any work. The request
body is read (a real service must read it) and thrown away.
"""


from typing import Any, Awaitable, Callable

BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def create_app() -> Callable[..., Awaitable[None]]:
    return app


def create_fastapi_app() -> Any:
    """The same constant behind FastAPI (routing, request object, response class): the framework
    floor every Vigil service starts from."""
    from fastapi import FastAPI, Request, Response

    api = FastAPI()

    @api.api_route("/", methods=["GET", "POST"])
    async def constant(request: Request) -> Response:
        await request.body()
        return Response(BODY, media_type="application/json")

    return api
