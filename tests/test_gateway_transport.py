"""The gateway's HTTP transport to its dependencies (``http_transport``) and the direct path of
``downstream.send``, against small real HTTP/1.1 servers on loopback sockets.

The servers are written here on ``asyncio.start_server`` so that each test controls exactly what
the peer does: keep a connection alive, close it after an answer, never answer, answer halfway,
answer with megabytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from vigil.redis_server import free_port
from vigil_gateway import downstream, http_transport
from vigil_gateway.errors import DownstreamError
from vigil_gateway.metrics import GatewayMetrics


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)


Behaviour = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]  # True: keep the connection


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Seen(method, path, headers, body)


def answer(body: bytes, status: int = 200, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    )
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def echo(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(b'{"length": %d, "path": "%s"}' % (len(seen.body), seen.path.encode())))
    await writer.drain()
    return True


@asynccontextmanager
async def http_server(behaviour: Behaviour = echo) -> AsyncIterator[Server]:
    server = Server(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while True:
                try:
                    seen = await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                server.requests.append(seen)
                if not await behaviour(seen, writer):
                    return
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    async with listener:
        yield server


@asynccontextmanager
async def client_for(url: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = http_transport.transport(url, max_connections=10)
    async with httpx.AsyncClient(base_url=url, transport=transport) as client:
        yield client


def test_every_dependency_url_gets_a_transport_to_its_origin() -> None:
    for url, port in (
        ("http://encoder:8001", 8001),
        ("https://encoder", 443),
        ("http://encoder/v", 80),
    ):
        built = http_transport.transport(url, max_connections=3)
        assert isinstance(built, http_transport.HttpTransport)
        assert (built.host, built.port, built.max_connections) == ("encoder", port, 3)
    with pytest.raises(ValueError):
        http_transport.transport("ftp://encoder:21", max_connections=1)


async def test_a_request_to_another_origin_is_refused() -> None:
    async with http_server() as server, client_for(server.url) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(f"http://127.0.0.1:{free_port()}/elsewhere")
        assert (await client.get("/here")).status_code == 200
    assert [seen.path for seen in server.requests] == ["/here"]


async def test_the_pool_never_opens_more_than_max_connections() -> None:
    async def slow_echo(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        return await echo(seen, writer)

    async with http_server(slow_echo) as server:
        transport = http_transport.transport(server.url, max_connections=2)
        async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
            await asyncio.gather(*(client.get(f"/{i}") for i in range(12)))
    assert server.connections == 2


async def test_requests_and_bodies_go_through_on_one_kept_alive_connection() -> None:
    async with http_server() as server, client_for(server.url) as client:
        big = b"x" * (3 * 1024 * 1024)
        first = await client.post("/a", content=big, headers={"content-type": "application/json"})
        second = await client.get("/b")
    assert first.json() == {"length": len(big), "path": "/a"}
    assert second.json() == {"length": 0, "path": "/b"}
    assert server.connections == 1
    assert server.requests[0].headers["content-length"] == str(len(big))
    assert server.requests[0].headers["host"] == server.url.removeprefix("http://")


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def close_after_answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"{}"))  # no "connection: close": the client believes it may reuse it
        await writer.drain()
        return False

    async with http_server(close_after_answer) as server, client_for(server.url) as client:
        for _ in range(3):
            assert (await client.get("/")).status_code == 200
            await asyncio.sleep(0.05)  # the close reaches the client before the next request
    assert server.connections == 3


async def test_an_answer_larger_than_the_read_buffer_arrives_whole() -> None:
    payload = bytes(range(256)) * (40 * 1024)  # 10 MiB: reading pauses and resumes

    async def big(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(payload))
        await writer.drain()
        return True

    async with http_server(big) as server, client_for(server.url) as client:
        response = await client.get("/")
    assert response.content == payload


async def test_concurrent_requests_share_the_pool() -> None:
    async def slow_echo(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        return await echo(seen, writer)

    async with http_server(slow_echo) as server, client_for(server.url) as client:
        answers = await asyncio.gather(
            *(client.post(f"/{i}", content=b"%d" % i) for i in range(30))
        )
    assert [a.json()["path"] for a in answers] == [f"/{i}" for i in range(30)]
    assert server.connections <= 10


async def test_no_answer_is_a_read_timeout() -> None:
    async def never(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(10)
        return False

    async with http_server(never) as server, client_for(server.url) as client:
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(0.2))
        assert time.perf_counter() - started < 1.0


async def test_nothing_listening_is_a_connect_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with client_for(url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


async def test_an_answer_cut_short_is_a_protocol_error() -> None:
    async def halfway(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b'{"long": "' + b"y" * 1000 + b'"}')[:120])
        await writer.drain()
        return False

    async with http_server(halfway) as server, client_for(server.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


# --- downstream.send on a DownstreamClient (the transport driven directly) ---------------------


async def test_send_drives_the_transport_like_the_client_would() -> None:
    metrics = GatewayMetrics()
    async with http_server() as server:
        client = downstream.build_http_client(
            server.url + "/prefix", connect_timeout_s=0.5, max_connections=4
        )
        async with client:
            response = await downstream.send(
                client,
                "encoder",
                "POST",
                "/v1/encode",
                metrics=metrics,
                timeout=1.0,
                connect_timeout_s=0.5,
                request_id="req-7",
                content=b'{"a": 1}',
                headers={"content-type": "application/json"},
            )
            # What the full client sends to the same server, for comparison.
            await client.post(
                "/v1/encode",
                content=b'{"a": 1}',
                headers={"content-type": "application/json", "x-request-id": "req-7"},
            )
    assert response.status_code == 200 and response.json()["path"] == "/prefix/v1/encode"
    # The light stand-in of an httpx.Response, read the same way by the clients.
    assert isinstance(response, http_transport.Reply)
    assert (
        response.headers.get("Content-Type")
        == response.headers.get("content-type")
        == "application/json"
    )
    assert '"/prefix/v1/encode"' in response.text
    direct, full = server.requests
    assert direct.path == full.path == "/prefix/v1/encode"
    assert direct.body == full.body
    for name in ("host", "content-length", "content-type", "x-request-id", "user-agent"):
        assert direct.headers[name] == full.headers[name], name


async def test_send_classifies_a_timeout_and_a_refused_connection() -> None:
    async def never(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(10)
        return False

    metrics = GatewayMetrics()
    async with http_server(never) as server:
        async with downstream.build_http_client(
            server.url, connect_timeout_s=0.5, max_connections=2
        ) as c:
            with pytest.raises(DownstreamError) as slow:
                await downstream.send(
                    c, "predictor", "GET", "/", metrics=metrics, timeout=0.2, connect_timeout_s=0.5
                )
    async with downstream.build_http_client(
        f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.5, max_connections=2
    ) as c:
        with pytest.raises(DownstreamError) as refused:
            await downstream.send(
                c, "encoder", "GET", "/", metrics=metrics, timeout=0.5, connect_timeout_s=0.5
            )
    assert slow.value.kind == "timeout"
    assert refused.value.kind == "unavailable"


def test_a_reply_reads_like_an_httpx_response() -> None:
    headers = http_transport.Headers({"content-type": "application/problem+json"})
    assert headers["Content-Type"] == headers.get("CONTENT-TYPE") == "application/problem+json"
    assert "Content-type" in headers and headers.get("x-missing") is None
    problem = http_transport.Reply(
        400,
        headers,
        b'{"type": "https://vigil.example/problems/feature-contract-mismatch", "detail": "wrong order"}',
    )
    twin = httpx.Response(400, headers=list(headers.items()), content=problem.content)
    assert problem.json() == twin.json()
    assert downstream.problem_detail(problem) == downstream.problem_detail(twin) == "wrong order"
    assert (
        downstream.problem_slug(problem)
        == downstream.problem_slug(twin)
        == "feature-contract-mismatch"
    )
    garbled = http_transport.Reply(
        502, headers, "<html>bad gateway \u00e9</html>".encode() + b"\xff"
    )
    twin = httpx.Response(502, headers=list(headers.items()), content=garbled.content)
    with pytest.raises(ValueError):
        garbled.json()
    assert downstream.problem_detail(garbled) == downstream.problem_detail(twin)
    assert downstream.problem_slug(garbled) is None


# --- what the transport's own HTTP/1.1 client must get right ------------------------------------


async def test_answers_framed_by_chunks_or_by_the_end_of_the_connection_arrive_whole() -> None:
    async def chunked(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        return True

    async def until_close(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
        await writer.drain()
        writer.write(b"no length, ")
        await asyncio.sleep(0.02)
        writer.write(b"ended by the close")
        await writer.drain()
        return False

    async with http_server(chunked) as server, client_for(server.url) as client:
        first, second = await client.get("/"), await client.get("/")
    assert first.content == second.content == b"hello world"
    assert server.connections == 1  # a chunked answer leaves the connection reusable
    async with http_server(until_close) as server, client_for(server.url) as client:
        answers = [await client.get("/") for _ in range(2)]
    assert [a.content for a in answers] == [b"no length, ended by the close"] * 2
    assert server.connections == 2


async def test_an_answer_without_body_leaves_the_connection_reusable() -> None:
    async def no_content(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        return True

    async with http_server(no_content) as server, client_for(server.url) as client:
        statuses = [(await client.delete("/")).status_code for _ in range(3)]
    assert statuses == [204] * 3 and server.connections == 1


async def test_a_late_answer_is_never_read_as_the_next_requests() -> None:
    async def slow_first(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.path == "/slow":
            await asyncio.sleep(0.3)
        return await echo(seen, writer)

    async with http_server(slow_first) as server, client_for(server.url) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow", timeout=httpx.Timeout(0.1))
        after = await client.get("/next")
        cancelled = asyncio.ensure_future(client.get("/slow"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        last = await client.get("/last")
    assert after.json()["path"] == "/next" and last.json()["path"] == "/last"
    assert server.connections == 3  # the timed-out and the cancelled exchanges' were closed


async def test_a_connection_idle_past_the_keepalive_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_transport, "KEEPALIVE_S", 0.05)
    async with http_server() as server, client_for(server.url) as client:
        await client.get("/")
        await client.get("/")
        await asyncio.sleep(0.1)
        await client.get("/")
    assert server.connections == 2


async def test_a_malformed_answer_is_a_protocol_error_and_its_connection_is_dropped() -> None:
    async def garbage(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.path == "/bad":
            writer.write(b"SMTP READY\r\n\r\n")
            await writer.drain()
            return True
        return await echo(seen, writer)

    async with http_server(garbage) as server, client_for(server.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/bad")
        assert (await client.get("/good")).json()["path"] == "/good"
    assert server.connections == 2


async def test_a_header_that_would_split_the_request_is_refused_before_anything_is_sent() -> None:
    async with http_server() as server, client_for(server.url) as client:
        for name, value in (
            ("x-request-id", "a\r\nx-injected: 1"),
            ("x-evil\r\nx-injected", "1"),
            ("x-ok", "line\nbreak"),
        ):
            with pytest.raises(httpx.LocalProtocolError):
                await client.get("/", headers={name: value})
        assert (await client.get("/", headers={"x-request-id": "fine"})).status_code == 200
    assert len(server.requests) == 1 and "x-injected" not in server.requests[0].headers
