"""httpx's transport interface to the gateway's dependencies, carried by aiohttp.

httpx stays the gateway's client API (requests, responses, timeouts, exceptions; tests wire
in-process apps with ``httpx.ASGITransport``), but the bytes go through an ``aiohttp``
connection pool: its HTTP/1.1 client parses answers in C and keeps no per-request anyio cancel
scopes or pool bookkeeping. Measured on this machine against a constant endpoint, one call cost
0.53 ms of CPU through httpx's own transport (httpcore + h11, on an asyncio network backend) and
0.26 ms through aiohttp; under concurrency httpcore's pool scans every connection per request,
and the two hops of each transaction were over half of the gateway's CPU.

aiohttp's failures are mapped to the httpx exceptions that httpx's own transport raises for the
same event, so callers classify them unchanged (a refused connection is a ``ConnectError``, no
answer in time a ``ReadTimeout``, an answer cut short a ``RemoteProtocolError``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import orjson

# A connection idle longer than this is closed (the servers' own keep-alive is 5 s in uvicorn).
KEEPALIVE_S = 4.0


@contextmanager
def _as_httpx_errors(method: str, url: str, request: httpx.Request | None = None) -> Iterator[None]:
    """aiohttp's failures as httpx's; the ``httpx.Request`` they carry is made only then."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "no connection in time",
                                   request=request or httpx.Request(method, url)) from exc
    except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "no answer in time",
                                request=request or httpx.Request(method, url)) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request or httpx.Request(method, url)) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__,
                                        request=request or httpx.Request(method, url)) from exc
    except aiohttp.ClientOSError as exc:
        raise httpx.ReadError(str(exc), request=request or httpx.Request(method, url)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(f"{type(exc).__name__}: {exc}",
                                   request=request or httpx.Request(method, url)) from exc


class Reply:
    """A dependency's whole answer, with the parts of an ``httpx.Response`` the gateway's
    clients read (``status_code``, case-insensitive ``headers``, ``content``, ``json()``,
    ``text``). Building an ``httpx.Request`` and ``httpx.Response`` around each aiohttp
    exchange cost ~30 us of the gateway's CPU per hop; this is a tuple's worth."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON (as ``httpx.Response.json``)."""
        return orjson.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class AiohttpTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with a keep-alive pool of ``max_connections``, no retries, no redirects, no
    cookies, no decompression: a hop between services, not a browser."""

    def __init__(self, *, max_connections: int) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _pool(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.max_connections,
                keepalive_timeout=KEEPALIVE_S,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
                # Only what the caller sets (httpx adds nothing either, past Host and length).
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._session

    def _timeout(self, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
            if len(self._timeouts) < 256:
                self._timeouts[(connect, read)] = timeout
        return timeout

    async def fetch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        request: httpx.Request | None = None,
    ) -> Reply:
        """One exchange, the answer read whole."""
        with _as_httpx_errors(method, url, request):
            async with self._pool().request(
                method, url, headers=headers, data=content, allow_redirects=False,
                timeout=self._timeout(connect_timeout, read_timeout),
            ) as response:
                body = await response.read()
                return Reply(response.status, response.headers, body)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        reply = await self.fetch(
            request.method, str(request.url), headers, await request.aread() or None,
            connect_timeout=timeout.get("connect"), read_timeout=timeout.get("read"),
            request=request,
        )
        return httpx.Response(reply.status_code, headers=list(reply.headers.items()),
                              content=reply.content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def transport(base_url: str, *, max_connections: int) -> AiohttpTransport:
    """The transport to the dependency at ``base_url`` (HTTP/1.1, no retries, a keep-alive pool
    of ``max_connections``)."""
    return AiohttpTransport(max_connections=max_connections)
