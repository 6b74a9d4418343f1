"""What one ``feast materialize`` run loaded, view by view, and the markers it leaves in Redis.

Feast does not say how many rows it wrote. Its materialization takes, for each entity, the latest
row of the view's offline table inside the window ``[start, end]`` (both ends inclusive, as its
DuckDB/ibis offline store filters), so the count is taken the same way from the same parquet
table: the number of distinct entities with a row in the window. The window of each view is the
one Feast prints for it (for an incremental run it comes from the registry's watermark).

After the run a marker per view (``vigil_contracts.online_markers``) is written into the online
Redis when the store now holds the view's whole freshness window: after a ``--full`` load, or
an incremental one into a store that already had a marker (or whose window reached back a TTL).
An incremental run into a store without markers loads only what is new since the registry's
watermark, so it leaves no marker and the report says to run ``vigil materialize --full``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vigil_contracts.online_markers import ViewMarker, marker_key
from vigil_contracts.serving_spec import ViewSpec

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WINDOW = re.compile(r"^(?P<view>\S+) from (?P<start>.+?) to (?P<end>.+?):\s*$")
# Feast's first incremental window is "now - ttl" taken a moment after our own "now".
_TTL_SLACK = timedelta(hours=1)


@dataclass(frozen=True)
class ViewLoad:
    """One feature view in one materialization run."""

    view: str
    start: datetime
    end: datetime
    rows: int
    """Entity rows written: the latest row of each entity with a row in ``[start, end]``."""
    marked: bool
    """Whether a marker for the view is in the online store after the run."""
    had_marker: bool
    """Whether the online store had a marker for the view before the run."""


def feast_windows(feast_stdout: str) -> dict[str, tuple[datetime, datetime]]:
    """``view -> (start, end)`` as ``feast materialize[-incremental]`` prints them."""
    windows = {}
    for line in _ANSI.sub("", feast_stdout).splitlines():
        match = _WINDOW.match(line.strip())
        if match:
            try:
                start = datetime.fromisoformat(match["start"])
                end = datetime.fromisoformat(match["end"])
            except ValueError:
                continue
            windows[match["view"]] = (_aware(start), _aware(end))
    return windows


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def count_rows(table: Path, view: ViewSpec, start: datetime, end: datetime) -> int:
    """Distinct entities of ``view`` with a row in ``[start, end]`` of its offline ``table``."""
    import pandas as pd

    frame = pd.read_parquet(table, columns=[*view.join_keys, "event_timestamp"])
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    inside = frame[(ts >= pd.Timestamp(start)) & (ts <= pd.Timestamp(end))]
    return len(inside[view.join_keys].drop_duplicates())


def redis_client(connection_string: str, redis_type: str = "redis") -> Any:
    """A redis-py client for a Feast connection string (``host:port[,db=N][,password=..][,ssl=..]``;
    with ``redis_type="redis_cluster"``, the nodes of a Redis Cluster)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    if redis_type == "redis_cluster":
        nodes = [
            part.strip()
            for part in connection_string.split(",")
            if part.strip() and "=" not in part
        ]
        options = dict(
            part.strip().split("=", 1) for part in connection_string.split(",") if "=" in part
        )
        return RedisCluster(
            startup_nodes=[
                ClusterNode(n.partition(":")[0], int(n.partition(":")[2] or 6379)) for n in nodes
            ],
            password=options.get("password"),
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
        )

    host, port, options = "localhost", 6379, {}
    for part in connection_string.split(","):
        part = part.strip()
        if "=" in part:
            key, value = part.split("=", 1)
            options[key.strip()] = value.strip()
        elif part:
            host, _, port_text = part.partition(":")
            port = int(port_text or 6379)
    return redis.Redis(
        host=host,
        port=port,
        db=int(options.get("db", 0)),
        password=options.get("password"),
        ssl=options.get("ssl", "false").lower() == "true",
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
    )


def read_markers(client: Any, project: str, views: list[str]) -> dict[str, ViewMarker | None]:
    pipe = client.pipeline(transaction=False)
    for view in views:
        pipe.hgetall(marker_key(project, view))
    markers: dict[str, ViewMarker | None] = {}
    for view, fields in zip(views, pipe.execute(), strict=True):
        try:
            markers[view] = ViewMarker.from_fields(fields) if fields else None
        except ValueError:
            markers[view] = None
    return markers


def write_marker(client: Any, project: str, view: str, marker: ViewMarker) -> None:
    client.hset(marker_key(project, view), mapping=marker.to_fields())


def covers_freshness(start: datetime, end: datetime, ttl_seconds: int | None) -> bool:
    """Whether a window reaches back over the view's whole freshness limit."""
    if not ttl_seconds:
        return False  # no limit: only an explicit full load is known to hold everything
    return start <= end - timedelta(seconds=ttl_seconds) + _TTL_SLACK


def record(
    client: Any | None,
    project: str,
    views: dict[str, ViewSpec],
    windows: dict[str, tuple[datetime, datetime]],
    offline_dir: Path,
    full: bool,
    written_at: datetime,
) -> list[ViewLoad]:
    """Count each view's rows and, with a Redis ``client``, leave the markers (see the module)."""
    before = read_markers(client, project, list(views)) if client is not None else {}
    loads = []
    for name, view in views.items():
        if name not in windows:
            continue  # Feast did not materialize it (e.g. a view with online=False)
        start, end = windows[name]
        rows = count_rows(offline_dir / f"{name}.parquet", view, start, end)
        had = before.get(name) is not None
        marked = False
        if client is not None and (full or had or covers_freshness(start, end, view.ttl_seconds)):
            write_marker(client, project, name, ViewMarker(rows, start, end, written_at))
            marked = True
        loads.append(ViewLoad(name, start, end, rows, marked, had))
    return loads
