"""One timed call to a dependency, with its failure classified.

Both the httpx timeouts (per phase: connect, read, ...) and an overall ``asyncio.timeout`` bound a
call: a server that trickles bytes beats the former but not the latter. Every failure becomes a
:class:`DownstreamError` with a ``kind``, counted once here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from vigil_servicekit.request_context import REQUEST_ID_HEADER

from vigil_gateway.errors import DownstreamError
from vigil_gateway.metrics import GatewayMetrics


def build_http_client(
    base_url: str,
    *,
    connect_timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one shared client of a dependency; each call sets its own read/write budget."""
    return httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        timeout=httpx.Timeout(5.0, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"user-agent": "vigil-gateway"},
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
) -> httpx.Response:
    """Send a request; return the response unless it timed out, failed to connect or was a 5xx."""
    all_headers = dict(headers or {})
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            response = await client.request(
                method, url, content=content, headers=all_headers,
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
            metrics, downstream, "server_error",
            f"answered {response.status_code}: {problem_detail(response)}",
        )
    return response


def _failed(metrics: GatewayMetrics, downstream: str, kind: str, detail: str) -> DownstreamError:
    metrics.downstream_errors.labels(downstream, kind).inc()
    return DownstreamError(downstream, kind, detail)


def rejected(
    metrics: GatewayMetrics, downstream: str, response: httpx.Response,
    cls: type[DownstreamError] = DownstreamError,
) -> DownstreamError:
    """A 4xx from a dependency: our request did not fit its contract."""
    metrics.downstream_errors.labels(downstream, "rejected").inc()
    return cls(downstream, "rejected", f"answered {response.status_code}: {problem_detail(response)}")


def invalid_response(metrics: GatewayMetrics, downstream: str, detail: str) -> DownstreamError:
    metrics.downstream_errors.labels(downstream, "invalid_response").inc()
    return DownstreamError(downstream, "invalid_response", detail)


def problem_detail(response: httpx.Response) -> str:
    """The ``detail`` of a problem+json answer, or a short excerpt of whatever came back."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)[:500]
    return str(body)[:200]


def problem_slug(response: httpx.Response) -> str | None:
    """The last path segment of a problem's ``type``, e.g. ``feature-contract-mismatch``."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        return body["type"].rstrip("/").rsplit("/", 1)[-1]
    return None
