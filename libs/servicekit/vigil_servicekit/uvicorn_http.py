"""uvicorn's httptools protocol, sending each response's status line and headers in the same
write as the first part of its body.

Saves: one socket write (a system call, a wake-up of the peer) per response; held equal:
uvicorn's own protocol with one method overridden, tested on the wire
(tests/test_servicekit_uvicorn_http.py); fallback: uvicorn's default protocol (no ``--http``).

uvicorn writes the head of a response when the app sends ``http.response.start`` and the body
when it sends ``http.response.body``: two writes, so two ``send`` system calls and, with
``TCP_NODELAY``, two TCP segments, each waking the reader. On this project's 2-core VM a
one-row prediction spent ~30 % of its CPU at light load in those two writes. This protocol holds
the head of a response of known length back until the first body message and writes the two
together; nothing else changes (the bytes on the wire are the same, in the same order). The head
goes out alone when no body write follows it (a HEAD answer, or a response cut short by an
error: it is written before the connection is closed), and at once for a streamed (chunked)
response, whose first part may come much later: its client sees the status as soon as uvicorn
would show it.

It also stamps each request's arrival (``time.monotonic()`` when its first bytes were parsed)
in the scope (``request_context.arrival_of``), so that a time budget can count the time the
request waited for the event loop.

Use it with ``uvicorn --http vigil_servicekit.uvicorn_http:HttpToolsProtocol``.
"""

from __future__ import annotations

import time
from typing import Any

from uvicorn.protocols.http import httptools_impl


class _OneWrite:
    """The connection's transport as a response cycle sees it: what is written while the
    response starts (its head) is held and sent with the next write, or alone when the cycle
    flushes it or closes the connection, so the bytes and their order are uvicorn's own."""

    __slots__ = ("head", "holding", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.holding = False
        self.head = b""

    def write(self, data: bytes) -> None:
        if self.holding:
            self.head += data
            return
        if self.head:
            data, self.head = self.head + data, b""
        self.transport.write(data)

    def flush(self) -> None:
        if self.head:
            head, self.head = self.head, b""
            if not self.transport.is_closing():
                self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Cycle(httptools_impl.RequestResponseCycle):
    transport: _OneWrite  # type: ignore[assignment]  # a Transport in all but name (__getattr__)

    async def send(self, message: Any) -> None:
        transport = self.transport
        if message["type"] == "http.response.start":
            transport.holding = True
            try:
                await super().send(message)
            finally:
                transport.holding = False
            if self.chunked_encoding:
                transport.flush()  # streamed: its parts may be far apart, the head goes now
            return
        try:
            await super().send(message)
        finally:
            transport.flush()  # a body message wrote nothing (a HEAD answer): the head alone


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """``uvicorn``'s ``httptools`` protocol with one write per response (see the module)."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"vigil.arrival": time.monotonic()}  # type: ignore[dict-item]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        if type(cycle) is httptools_impl.RequestResponseCycle:
            cycle.transport = _OneWrite(cycle.transport)  # type: ignore[assignment]
            cycle.__class__ = _Cycle
