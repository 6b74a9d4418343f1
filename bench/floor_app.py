"""The HTTP floors: uvicorn apps that answer every request with the same small JSON body.

``uvicorn --factory bench.floor_app:create_app`` with the flags the Vigil services use. Nothing
is parsed or computed, so its latency is the cost of the hop itself (client, loopback TCP,
uvicorn, HTTP parsing) that any service on this machine pays before doing any work. The request
body is read (a real service must read it) and thrown away.

The V2 scoring floor (``create_v2_scoring_app``) is the least a V2 server can do for a JSON
request: parse it, run XGBoost on the tensor, answer the scores; nothing checked or logged.

The three-hop floor is Vigil's request path with nothing computed: a front app
(``create_three_hops_app``, the gateway's place) sends the body to a hop that makes one Redis
round trip (``create_redis_read_app``, the encoder's place), then to the constant app (the
predictor's place), and answers the constant; the same client libraries as the services (the
gateway's HTTP transport to the hops, redis-py with hiredis to Redis). No decision store: its latency is what any
pipeline of these three hops pays on this machine before doing any work.
"""

import os
from collections.abc import Awaitable, Callable
from typing import Any

BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
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


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[bytes], Awaitable["bytes | None"]]


def _app_with(
    handle: Handler, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]]
) -> Callable[..., Awaitable[None]]:
    """A raw ASGI app that runs ``handle(body)`` and answers what it returns (JSON), or the
    constant when it returns None."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await startup()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        answer = await handle(b"".join(chunks))
        if answer is None:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            await send({"type": "http.response.body", "body": BODY})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(answer)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


def create_redis_read_app() -> Callable[..., Awaitable[None]]:
    """One Redis round trip (``GET`` of one key, at ``FLOOR_REDIS_URL``) per request, then the
    constant: the encoder's place in the three-hop floor."""
    import redis.asyncio as aioredis

    client: dict[str, Any] = {}

    async def startup() -> None:
        client["redis"] = aioredis.Redis.from_url(os.environ["FLOOR_REDIS_URL"], socket_timeout=5.0)
        await client["redis"].ping()

    async def shutdown() -> None:
        await client["redis"].aclose()

    async def handle(body: bytes) -> None:
        await client["redis"].get("vigil:bench:floor")

    return _app_with(handle, startup, shutdown)


def create_three_hops_app() -> Callable[..., Awaitable[None]]:
    """Sends each request's body to ``FLOOR_FIRST_URL`` (the Redis-read hop), then to
    ``FLOOR_SECOND_URL`` (the constant), one after the other as the gateway calls the encoder
    and the predictor, over the gateway's keep-alive transport; then answers the constant."""
    import httpx

    from vigil_gateway.http_transport import HttpTransport

    hops = [
        (HttpTransport(url, max_connections=32), httpx.URL(url).raw_path)
        for url in (os.environ["FLOOR_FIRST_URL"], os.environ["FLOOR_SECOND_URL"])
    ]
    headers = {"content-type": "application/json"}

    async def startup() -> None:
        pass

    async def shutdown() -> None:
        for transport, _ in hops:
            await transport.aclose()

    async def handle(body: bytes) -> None:
        for transport, target in hops:
            answer = await transport.fetch(
                "POST", target, headers, body, connect_timeout=5.0, read_timeout=5.0
            )
            if answer.status_code >= 400:
                raise RuntimeError(f"a floor hop answered {answer.status_code}")

    return _app_with(handle, startup, shutdown)


def create_v2_scoring_app() -> Callable[..., Awaitable[None]]:
    """The least a V2 server scoring one JSON request can do: parse the body, take the one
    input tensor as it is, run XGBoost on it (the booster at ``FLOOR_BOOSTER``, one thread, as
    the predictor runs it) and answer the scores in V2 JSON. Nothing is checked, logged or
    counted and no framework runs: a floor under any V2 server on this machine (the
    predictor's place, and MLServer's)."""
    import numpy as np
    import orjson
    import xgboost as xgb

    from vigil_predictor.scoring_call import predict_dense  # XGBoost's C call, least wrapped

    booster = xgb.Booster(model_file=os.environ["FLOOR_BOOSTER"])
    booster.set_param({"nthread": 1})

    async def nothing() -> None:
        return None

    async def handle(body: bytes) -> bytes | None:
        if not body:  # the readiness probe
            return None
        tensor = orjson.loads(body)["inputs"][0]
        features = np.array(
            [np.nan if v is None else v for v in tensor["data"]], dtype=np.float32
        ).reshape(tensor["shape"])
        scores = predict_dense(booster, features)
        return orjson.dumps(
            {
                "outputs": [
                    {
                        "name": "score",
                        "datatype": "FP32",
                        "shape": [len(scores)],
                        "data": scores.tolist(),
                    }
                ]
            }
        )

    return _app_with(handle, nothing, nothing)
