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

It also lets the app answer a request at the door (:func:`answer_early`): a hook called when a
request's head is parsed, before any task or ASGI call is made for it, may give the whole answer,
which is sent at once through the request's own uvicorn response cycle (so its bytes are those
uvicorn writes for the same ASGI messages). Saves: the wait for the event loop's current pass and
the request's task (measured: a gateway's overload 503s, p99 10 ms at the app, see
docs/benchmarks-analysis.md); held equal: the hook's answer is tested byte-equal to the app's
(tests/test_gateway_early_shed.py); fallback: where uvicorn's internals differ (no
``_start_asgi_task``), every request goes to the app, which gives the same answer later.

Use it with ``uvicorn --http vigil_servicekit.uvicorn_http:HttpToolsProtocol``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http import httptools_impl

logger = logging.getLogger(__name__)

#: An early answer: status, headers and body, as the app would send them.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
#: Called with a request's scope (its head parsed, its body maybe not yet read); returns the
#: answer to send now, or None to hand the request to the app as ever. It must not block.
EarlyAnswer = Callable[[dict[str, Any]], Answer | None]

_early: EarlyAnswer | None = None
#: uvicorn starts a request's ASGI task in one method we can intercept (0.54): else no hook.
EARLY_ANSWERS = callable(getattr(httptools_impl.HttpToolsProtocol, "_start_asgi_task", None))


def answer_early(hook: EarlyAnswer) -> None:
    """Install this process's early-answer hook (see the module)."""
    global _early
    if not EARLY_ANSWERS:
        logger.warning("this uvicorn has no hook for early answers: the app answers every request")
    _early = hook


def stop_answering_early(hook: EarlyAnswer) -> None:
    """Remove ``hook`` if it is still the one installed (an app's lifespan ends)."""
    global _early
    if _early is hook:
        _early = None


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
        _one_write(getattr(self, "cycle", None))

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        hook = _early
        if (
            hook is not None
            and app is self.app  # not uvicorn's own 503 (``limit_concurrency``)
            # the client waits for a 100 before it sends the body
            and not getattr(cycle, "waiting_for_100_continue", True)
            and not getattr(cycle.flow, "write_paused", True)  # the answer would wait
        ):
            try:
                answer = hook(cycle.scope)
            except Exception:  # never the request's fault: the app answers it
                logger.exception("the early-answer hook failed")
                answer = None
            if answer is not None:
                _one_write(cycle)
                _send_now(cycle, answer)
                return
        super()._start_asgi_task(cycle, app)


def _one_write(cycle: Any) -> None:
    if type(cycle) is httptools_impl.RequestResponseCycle:
        cycle.transport = _OneWrite(cycle.transport)  # type: ignore[assignment]
        cycle.__class__ = _Cycle


def _send_now(cycle: Any, answer: Answer) -> None:
    """Send ``answer`` through the cycle's own ``send``, now: it awaits nothing while the
    transport takes writes (checked by the caller), so each message runs to its end at once. The
    body not read yet is read and dropped by uvicorn, as for any app that answers first."""
    status, headers, body = answer
    for message in (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ):
        step = cycle.send(message)
        try:
            step.send(None)
        except StopIteration:
            continue
        step.close()  # it waited after all: the connection cannot be answered in order
        logger.warning("an early answer could not be written at once; connection closed")
        cycle.transport.close()
        return
