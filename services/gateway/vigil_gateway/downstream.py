"""One timed call to a dependency, with its failure classified.

Both the httpx timeouts (per phase: connect, read, ...) and an overall ``asyncio.timeout`` bound a
call: a server that trickles bytes beats the former but not the latter. Every failure becomes a
:class:`DownstreamError` with a ``kind``, counted once here.

Each dependency has one shared :class:`DownstreamClient` (an ``httpx.AsyncClient``). A call is
sent straight to its transport (httpx's connection pool): what the client adds on top (cookie
jar, redirects, auth, event hooks, merging URLs and headers) is of no use between services and
cost about a tenth of the gateway's CPU per transaction.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeAlias

import httpx

from vigil_gateway import http_transport
from vigil_gateway.errors import DownstreamError
from vigil_gateway.metrics import GatewayMetrics
from vigil_servicekit.internal_token import INTERNAL_TOKEN_HEADER
from vigil_servicekit.request_context import REQUEST_ID_HEADER

USER_AGENT = "vigil-gateway"

# What a call answers: httpx's response, or over the gateway's own transport its lighter stand-in.
Response: TypeAlias = httpx.Response | http_transport.Reply


class DownstreamClient(httpx.AsyncClient):
    """The shared client of one dependency, keeping its transport at hand for :func:`send`."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport,
        connect_timeout_s: float,
        internal_token: str | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(5.0, connect=connect_timeout_s),
            headers={"user-agent": USER_AGENT},
            trust_env=False,  # calls bypass the client's proxy mounts: do not read any
        )
        self.transport = transport
        self.internal_token = internal_token
        """Sent as ``x-vigil-internal-token`` on every call (the internal hops' shared token)."""
        self._urls: dict[str, httpx.URL] = {}
        self._targets: dict[str, bytes] = {}

    def target_for(self, path: str) -> bytes:
        """The request target (path and query) :meth:`url_for` gives, as the transport sends it."""
        target = self._targets.get(path)
        if target is None:
            target = self.url_for(path).raw_path
            if len(self._targets) < 1024:
                self._targets[path] = target
        return target

    def url_for(self, path: str) -> httpx.URL:
        """``path`` under the base URL, as the client would merge it (the base keeps its own
        path); parsed once, the paths being a handful of routes."""
        url = self._urls.get(path)
        if url is None:
            url = self.base_url.copy_with(
                raw_path=self.base_url.raw_path + httpx.URL(path).raw_path.lstrip(b"/")
            )
            if len(self._urls) < 1024:
                self._urls[path] = url
        return url


def build_http_client(
    base_url: str,
    *,
    connect_timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
    internal_token: str | None = None,
) -> DownstreamClient:
    """The one shared client of a dependency (keep-alive pool of ``max_connections``, HTTP/1.1,
    no retries); each call sets its own read/write budget. ``transport`` replaces the network
    (tests pass ``httpx.ASGITransport``)."""
    if transport is None:
        transport = http_transport.transport(base_url, max_connections=max_connections)
    return DownstreamClient(
        base_url,
        transport=transport,
        connect_timeout_s=connect_timeout_s,
        internal_token=internal_token,
    )


def call_timeout(seconds: float | None, connect_timeout_s: float) -> httpx.Timeout:
    if seconds is None:
        return httpx.Timeout(None, connect=connect_timeout_s)
    return httpx.Timeout(seconds, connect=min(connect_timeout_s, seconds))


async def send(
    client: httpx.AsyncClient,
    downstream: str,
    method: str,
    url: str,
    *,
    metrics: GatewayMetrics,
    timeout: float | None,
    connect_timeout_s: float,
    request_id: str | None = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Send a request; return the response unless it timed out, failed to connect or was a 5xx."""
    all_headers = dict(headers or {})
    token = getattr(client, "internal_token", None)
    if token:
        all_headers[INTERNAL_TOKEN_HEADER] = token
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            if isinstance(client, DownstreamClient):
                response = await _send_direct(
                    client, method, url, content, all_headers, timeout, connect_timeout_s
                )
            else:
                response = await client.request(
                    method,
                    url,
                    content=content,
                    headers=all_headers,
                    timeout=call_timeout(timeout, connect_timeout_s),
                )
    except (TimeoutError, httpx.TimeoutException) as exc:
        # Only this call's own timeout lands here: an outer budget expiring arrives as
        # cancellation and passes through untouched.
        raise _failed(metrics, downstream, "timeout", f"no answer within {timeout}s") from exc
    except httpx.HTTPError as exc:
        raise _failed(metrics, downstream, "unavailable", f"{type(exc).__name__}: {exc}") from exc
    finally:
        metrics.downstream_latency.labels(downstream).observe(time.perf_counter() - started)
    if response.status_code >= 500:
        raise _failed(
            metrics,
            downstream,
            "server_error",
            f"answered {response.status_code}: {problem_detail(response)}",
        )
    return response


async def _send_direct(
    client: DownstreamClient,
    method: str,
    path: str,
    content: bytes | None,
    headers: dict[str, str],
    seconds: float | None,
    connect_timeout_s: float,
) -> Response:
    """``client.request(...)`` as the transport sees it: the same request (the transport adds
    Host and Content-Length), the timeouts of :func:`call_timeout`, the body read whole. Over
    the gateway's own transport the answer is a :class:`~vigil_gateway.http_transport.Reply`,
    and no httpx request, response or timeout object is made."""
    headers.setdefault("user-agent", USER_AGENT)
    transport = client.transport
    if isinstance(transport, http_transport.HttpTransport):
        return await transport.fetch(
            method,
            client.target_for(path),
            headers,
            content,
            connect_timeout=connect_timeout_s
            if seconds is None
            else min(connect_timeout_s, seconds),
            read_timeout=seconds,
        )
    timeout = call_timeout(seconds, connect_timeout_s)
    request = httpx.Request(
        method,
        client.url_for(path),
        headers=headers,
        content=content,
        extensions={"timeout": timeout.as_dict()},
    )
    response = await transport.handle_async_request(request)
    response.request = request
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


def _failed(metrics: GatewayMetrics, downstream: str, kind: str, detail: str) -> DownstreamError:
    metrics.downstream_errors.labels(downstream, kind).inc()
    return DownstreamError(downstream, kind, detail)


def rejected(
    metrics: GatewayMetrics,
    downstream: str,
    response: Response,
    cls: type[DownstreamError] = DownstreamError,
) -> DownstreamError:
    """A 4xx from a dependency: our request did not fit its contract."""
    metrics.downstream_errors.labels(downstream, "rejected").inc()
    return cls(
        downstream, "rejected", f"answered {response.status_code}: {problem_detail(response)}"
    )


def invalid_response(metrics: GatewayMetrics, downstream: str, detail: str) -> DownstreamError:
    metrics.downstream_errors.labels(downstream, "invalid_response").inc()
    return DownstreamError(downstream, "invalid_response", detail)


def problem_detail(response: Response) -> str:
    """The ``detail`` of a problem+json answer, or a short excerpt of whatever came back."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)[:500]
    return str(body)[:200]


def problem_slug(response: Response) -> str | None:
    """The last path segment of a problem's ``type``, e.g. ``feature-contract-mismatch``."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        return body["type"].rstrip("/").rsplit("/", 1)[-1]
    return None


async def probe(
    http: httpx.AsyncClient,
    downstream: str,
    path: str,
    *,
    metrics: GatewayMetrics,
    timeout: float,
    connect_timeout_s: float,
) -> tuple[bool, str]:
    """A dependency's readiness, for ``/readyz``: (ready, why not)."""
    try:
        response = await send(
            http,
            downstream,
            "GET",
            path,
            metrics=metrics,
            timeout=timeout,
            connect_timeout_s=connect_timeout_s,
        )
    except DownstreamError as exc:
        return False, exc.detail
    if response.status_code != 200:
        return False, f"answered {response.status_code}: {problem_detail(response)}"
    return True, "ready"
