"""Which Redis a service's URL names: one server (``redis://``, ``rediss://``) or a Redis
Cluster (``redis+cluster://``, ``rediss+cluster://``: any node, the others are discovered).

One URL setting per service stays the whole configuration (``ENCODER_REDIS_URL``,
``GATEWAY_REDIS_URL``), so compose, the runner and the manifests keep the same variables.
"""

from __future__ import annotations

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_url(url: str) -> str:
    """The URL redis-py's ``RedisCluster.from_url`` takes for a ``redis+cluster://`` URL."""
    scheme, rest = url.split("://", 1)
    return f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}"
