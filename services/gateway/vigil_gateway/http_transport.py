"""httpx's HTTP/1.1 transport to the gateway's dependencies, on plain asyncio sockets.

httpx (over httpcore) stays the client: its connection pool, HTTP/1.1 state machine (h11),
timeouts and exceptions are unchanged. Only httpcore's *network backend* (what reads and writes
bytes) is replaced, through httpcore's ``network_backend`` extension point: the default one goes
through anyio, which on every read and write enters a cancel scope, checks readiness with a
``poll`` call and makes one ``send`` per piece h11 hands it (headers, then body). Measured on the
single-transaction path, that was a tenth of the gateway's CPU per request.

:class:`AsyncioBackend` keeps an ``asyncio.Protocol`` per connection instead: received bytes wait
in a buffer (so "is the idle connection readable?" is a look at the buffer, no syscall), and
what httpcore writes is sent in one piece when it starts reading the answer, which it only does
once the whole request is written (HTTP/1.1 without ``Expect: 100-continue``, which the gateway
never sends). TLS is not implemented: :func:`transport` falls back to httpx's own backend for
``https`` URLs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpcore
import httpx

logger = logging.getLogger(__name__)

# Reading is paused above this many unread bytes (the gateway's answers are far smaller).
_READ_HIGH_WATER = 4 * 1024 * 1024


class _Connection(asyncio.Protocol):
    """The receiving side of one TCP connection: a buffer, end-of-stream and error state."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too: HTTP/1.1 has nothing more to say

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, connection: _Connection) -> None:
        self._transport = transport
        self._connection = connection
        self._unsent: list[bytes] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        connection = self._connection
        if self._unsent:
            self._send()
        if not connection.buffer and not connection.eof:
            connection.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await connection.waiter
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(f"no data within {timeout}s") from exc
            finally:
                connection.waiter = None
        buffer = connection.buffer
        if buffer:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
            if connection.reading_paused and len(buffer) <= _READ_HIGH_WATER // 2:
                connection.reading_paused = False
                self._transport.resume_reading()
            return data
        if connection.error is not None:
            raise httpcore.ReadError(str(connection.error) or type(connection.error).__name__)
        return b""  # the peer closed the connection; h11 decides what that means

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._unsent.append(buffer)

    def _send(self) -> None:
        data = b"".join(self._unsent)
        self._unsent.clear()
        if self._connection.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(data)

    async def aclose(self) -> None:
        self._unsent.clear()
        self._transport.close()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS is not implemented by this backend")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle connection with something to read has been closed (or broken) by the
            # peer: the pool must not reuse it.
            return bool(self._connection.buffer) or self._connection.eof
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                # asyncio sets TCP_NODELAY on TCP connections (no Nagle delay on small writes).
                transport, connection = await loop.create_connection(
                    _Connection, host, port,
                    local_addr=(local_address, 0) if local_address else None,
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"no connection within {timeout}s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return self._stream(transport, connection, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_unix_connection(_Connection, path)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"no connection within {timeout}s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return self._stream(transport, connection, socket_options)

    @staticmethod
    def _stream(transport: Any, connection: _Connection, socket_options: Any) -> AsyncioStream:
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, connection)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def transport(base_url: str, *, max_connections: int) -> httpx.AsyncHTTPTransport:
    """httpx's transport for ``base_url``: HTTP/1.1, no retries, a keep-alive pool of
    ``max_connections``, on :class:`AsyncioBackend` (httpx's own network backend for https)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    built = httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False, retries=0, trust_env=False)
    if httpx.URL(base_url).scheme != "http":
        return built
    # httpx offers no parameter for httpcore's network backend; its transport keeps the pool in
    # ``_pool`` (httpx 0.2x). Should that change, the transport keeps httpx's own backend.
    if not isinstance(getattr(built, "_pool", None), httpcore.AsyncConnectionPool):
        logger.warning("httpx transport layout not recognised; using httpx's own network backend")
        return built
    built._pool = httpcore.AsyncConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        retries=0,
        network_backend=AsyncioBackend(),
    )
    return built
