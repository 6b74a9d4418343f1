"""Request metrics in a Prometheus registry owned by one app, so that apps (and tests) never
collide. A service subclasses :class:`ServiceMetrics` and registers its own metrics in
``self.registry``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# The labels a request metric may carry, and how its help text names them.
REQUEST_LABELS = {
    "route": "route template",
    "method": "method",
    "status": "status code",
    "outcome": "outcome",
}


#: Label combinations whose metric children a :class:`ServiceMetrics` keeps at hand.
_CHILDREN_KEPT = 1024


def outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


def _phrase(labels: Sequence[str]) -> str:
    words = [REQUEST_LABELS[label] for label in labels]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


class ServiceMetrics:
    """``<namespace>_ready`` (gauge: what ``/readyz`` says, refreshed at every scrape of
    ``/metrics``, so an alert sees a service that lost a dependency even with no traffic),
    ``<namespace>_requests`` (counter) and ``<namespace>_request_duration_seconds``
    (histogram), labelled by a choice of ``route`` (the template, never the raw path, so labels
    stay bounded), ``method``, ``status`` and ``outcome``.

    The label sets are parameters because they are what dashboards already query.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        namespace: str,
        *,
        buckets: Sequence[float],
        request_labels: Sequence[str] = ("route", "method", "status", "outcome"),
        latency_labels: Sequence[str] = ("route", "method", "outcome"),
    ) -> None:
        unknown = set(request_labels) | set(latency_labels)
        unknown -= set(REQUEST_LABELS)
        if unknown:
            raise ValueError(f"unknown request metric labels: {sorted(unknown)}")
        self._request_labels = tuple(request_labels)
        self._latency_labels = tuple(latency_labels)
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            f"{namespace}_requests",
            f"HTTP requests by {_phrase(request_labels)}.",
            self._request_labels,
            registry=self.registry,
        )
        self.ready = Gauge(
            f"{namespace}_ready",
            "1 when the service is ready (its /readyz answers 200), 0 when not; checked at "
            "every scrape of /metrics and every /readyz.",
            registry=self.registry,
        )
        self.request_latency = Histogram(
            f"{namespace}_request_duration_seconds",
            f"HTTP request latency by {_phrase(latency_labels)}.",
            self._latency_labels,
            buckets=buckets,
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:
            values = {
                "route": route,
                "method": method,
                "status": str(status),
                "outcome": outcome(status),
            }
            children = (
                self.requests.labels(*[values[name] for name in self._request_labels]),
                self.request_latency.labels(*[values[name] for name in self._latency_labels]),
            )
            # Bounded as the label values are (route templates, methods, statuses); kept so
            # that a request does not pay two ``labels()`` lookups (a lock and a tuple each).
            if len(self._children) < _CHILDREN_KEPT:
                self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
