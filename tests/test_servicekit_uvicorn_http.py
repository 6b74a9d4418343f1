"""``vigil_servicekit.uvicorn_http``: the same bytes as uvicorn's own httptools protocol, in one
write per response.

Two real uvicorn servers run the same ASGI app on real sockets, one with uvicorn's protocol and
one with ours; every case is sent to both as raw HTTP/1.1 and the raw answers (up to the ``date``
header) must be equal. A third server counts the writes our protocol makes on each connection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as UvicornProtocol

from vigil.redis_server import free_port
from vigil_servicekit import uvicorn_http
from vigil_servicekit.uvicorn_http import HttpToolsProtocol

_DATE = re.compile(rb"date: [^\r]*\r\n")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/error-before":
        raise RuntimeError("before the answer")
    json = [(b"content-type", b"application/json")]
    if path == "/stream":  # no length: chunked, three parts and an empty last one
        await send({"type": "http.response.start", "status": 200, "headers": json})
        for part in (b'{"a":', b"1", b"}"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/late-stream":  # streamed, its first part a second after the head
        await send({"type": "http.response.start", "status": 200, "headers": json})
        await asyncio.sleep(1.0)
        await send({"type": "http.response.body", "body": b"{}"})
        return
    if path == "/no-content":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b'{"echo":%d}' % len(body)
    headers = [*json, (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/error-after":
        raise RuntimeError("after the head")
    await send({"type": "http.response.body", "body": answer})


class _Counting(HttpToolsProtocol):
    writes: ClassVar[list[bytes]] = []

    def connection_made(self, transport: Any) -> None:
        writes = self.writes

        class Recorder:
            def write(self, data: bytes) -> None:
                writes.append(bytes(data))
                transport.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

        super().connection_made(Recorder())  # type: ignore[arg-type]


async def _serve(protocol: type) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol,
        lifespan="off",
        access_log=False,
        log_level="critical",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, port


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, int]]:
    started = {
        name: await _serve(protocol)
        for name, protocol in (
            ("uvicorn", UvicornProtocol),
            ("ours", HttpToolsProtocol),
            ("counted", _Counting),
        )
    }
    yield {name: port for name, (_, _, port) in started.items()}
    for server, task, _ in started.values():
        server.should_exit = True
        await task


async def _exchange(port: int, *requests: bytes) -> bytes:
    """Sends the requests one after the other on one connection, reads until it is closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            await asyncio.sleep(0.05)  # one request at a time, not pipelined
        return _DATE.sub(b"", await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()


def _request(
    method: str, path: str, body: bytes = b"", *, close: bool = True, extra: bytes = b""
) -> bytes:
    head = b"%s %s HTTP/1.1\r\nhost: test\r\n" % (method.encode(), path.encode())
    if body:
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    if close:
        head += b"connection: close\r\n"
    return head + extra + b"\r\n" + body


CASES = {
    "get": [_request("GET", "/")],
    "post": [_request("POST", "/", b'{"x":1}')],
    "head": [_request("HEAD", "/")],
    "stream": [_request("GET", "/stream")],
    "no-content": [_request("GET", "/no-content")],
    "error-before-answer": [_request("GET", "/error-before")],
    "error-after-head": [_request("GET", "/error-after")],
    "keep-alive": [
        _request("POST", "/", b"[]", close=False),
        _request("GET", "/stream", close=False),
        _request("HEAD", "/", close=False),
        _request("GET", "/"),
    ],
    "expect-100": [_request("POST", "/", b'{"y":2}', extra=b"expect: 100-continue\r\n")],
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_bytes_are_uvicorns(servers: dict[str, int], case: str) -> None:
    ours = await _exchange(servers["ours"], *CASES[case])
    assert ours == await _exchange(servers["uvicorn"], *CASES[case])
    assert ours.startswith(b"HTTP/1.1 ")


async def test_a_response_is_one_write(servers: dict[str, int]) -> None:
    _Counting.writes.clear()
    await _exchange(
        servers["counted"], _request("POST", "/", b'{"x":1}', close=False), _request("GET", "/")
    )
    assert len(_Counting.writes) == 2
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b"}") for w in _Counting.writes)
    _Counting.writes.clear()
    await _exchange(servers["counted"], _request("GET", "/stream"))
    # A streamed answer is written as uvicorn writes it: the head, then each part.
    assert _Counting.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert _Counting.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert _Counting.writes[1] == b'5\r\n{"a":\r\n'
    assert len(_Counting.writes) == 5


async def test_a_streamed_answer_shows_its_head_before_its_first_part(
    servers: dict[str, int],
) -> None:
    for name in ("ours", "uvicorn"):
        reader, writer = await asyncio.open_connection("127.0.0.1", servers[name])
        try:
            writer.write(_request("GET", "/late-stream"))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), name
            assert b"transfer-encoding: chunked" in head, name
            assert _DATE.sub(b"", head + await asyncio.wait_for(reader.read(), 5)) == (
                _DATE.sub(b"", head) + b"2\r\n{}\r\n0\r\n\r\n"
            ), name
        finally:
            writer.close()


async def test_an_early_answer_is_sent_and_a_failing_hook_leaves_the_request_to_the_app(
    servers: dict[str, int],
) -> None:
    def refuse(scope: dict[str, Any]) -> Any:
        if scope["path"] == "/refused":
            return 503, [(b"content-length", b"2"), (b"retry-after", b"1")], b"{}"
        raise RuntimeError("a broken hook")

    uvicorn_http.answer_early(refuse)
    try:
        refused = await _exchange(
            servers["ours"],
            _request("POST", "/refused", b'{"x":1}', close=False),
            _request("GET", "/"),
        )
        other = await _exchange(servers["ours"], *CASES["post"])
    finally:
        uvicorn_http.stop_answering_early(refuse)
    assert refused == (
        b"HTTP/1.1 503 Service Unavailable\r\nserver: uvicorn\r\ncontent-length: 2\r\n"
        b"retry-after: 1\r\n\r\n{}" + await _exchange(servers["uvicorn"], _request("GET", "/"))
    )
    assert other == await _exchange(servers["uvicorn"], *CASES["post"])
