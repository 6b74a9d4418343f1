"""Driving the Feast repo: its config, ``feast apply``/``materialize`` and the serving spec export.

The repo's own ``feature_store.yaml`` targets ``localhost:6379`` so that a user can run the plain
``feast`` CLI from ``feature_repo/``. Vigil's commands honour two environment variables by deriving
a config next to the registry (with an absolute registry path, since Feast resolves a relative one
against the current directory):

- ``VIGIL_REDIS_CONNECTION_STRING``: e.g. ``localhost:6390`` or ``redis:6379``;
- ``VIGIL_REDIS_TYPE=redis_cluster``: that connection string names Redis Cluster nodes
  (``host:port,host:port``; Feast's ``redis_type``);
- ``VIGIL_ONLINE_STORE=sqlite``: Feast's embedded SQLite online store, for machines without Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from vigil import materialization
from vigil.materialization import ViewLoad
from vigil_contracts.serving_spec import (
    FeatureRef,
    FeatureServiceSpec,
    OnDemandSpec,
    ServingSpec,
    ViewSpec,
)

if TYPE_CHECKING:  # feast takes seconds to import; only the functions that need it pay
    from feast import FeatureStore

DEFAULT_REPO = Path(__file__).resolve().parent.parent / "feature_repo"
SPEC_FILE = "serving_spec.json"


class RepoError(Exception):
    """The Feast repo is missing, not applied, or a Feast command failed."""


def repo_dir(path: Path | str | None = None) -> Path:
    repo = Path(path or os.environ.get("VIGIL_FEATURE_REPO") or DEFAULT_REPO).resolve()
    if not (repo / "feature_store.yaml").is_file():
        raise RepoError(f"{repo} is not a Feast repo (no feature_store.yaml)")
    return repo


def data_dir(repo: Path) -> Path:
    return repo / "data"


def offline_dir(repo: Path) -> Path:
    return data_dir(repo) / "offline"


def spec_path(repo: Path) -> Path:
    return data_dir(repo) / SPEC_FILE


def samples_path(repo: Path) -> Path:
    """Sample transactions from the world the features came from (``vigil features`` writes
    them; the gateway's web page offers them)."""
    return data_dir(repo) / "samples.json"


def config_path(repo: Path) -> Path:
    """The feature_store.yaml to use: the repo's own, or one derived from the environment."""
    conn = os.environ.get("VIGIL_REDIS_CONNECTION_STRING")
    online = os.environ.get("VIGIL_ONLINE_STORE", "redis")
    if not conn and online == "redis":
        return repo / "feature_store.yaml"
    import yaml  # feast depends on PyYAML

    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["registry"] = str((repo / config["registry"]).resolve())
    if online == "sqlite":
        config["online_store"] = {"type": "sqlite", "path": str(data_dir(repo) / "online.db")}
    elif online == "redis":
        config["online_store"] = {"type": "redis", "connection_string": conn}
        redis_type = os.environ.get("VIGIL_REDIS_TYPE", "redis")
        if redis_type not in ("redis", "redis_cluster"):
            raise RepoError(
                f"VIGIL_REDIS_TYPE must be 'redis' or 'redis_cluster', not {redis_type!r}"
            )
        if redis_type == "redis_cluster":
            config["online_store"]["redis_type"] = redis_type
    else:
        raise RepoError(f"VIGIL_ONLINE_STORE must be 'redis' or 'sqlite', not {online!r}")
    data_dir(repo).mkdir(parents=True, exist_ok=True)
    derived = data_dir(repo) / "feature_store.generated.yaml"
    derived.write_text(yaml.safe_dump(config, sort_keys=False))
    return derived


def open_store(repo: Path) -> FeatureStore:
    from feast import FeatureStore

    from vigil.warning_filters import reassert

    reassert()  # importing feast put its own "once" filters in front of the CLI's
    return FeatureStore(repo_path=str(repo), fs_yaml_file=config_path(repo))


def feast_cli(repo: Path, *args: str) -> str:
    """Run the ``feast`` CLI from the repo folder (the way a user would); return its output."""
    feast_bin = Path(sys.executable).with_name("feast")
    cmd = [str(feast_bin) if feast_bin.exists() else "feast", "-c", str(repo)]
    cfg = config_path(repo)
    if cfg != repo / "feature_store.yaml":
        cmd += ["-f", str(cfg)]
    cmd += list(args)
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RepoError(f"`feast {' '.join(args)}` failed:\n" + "\n".join(tail))
    return proc.stdout


def apply(repo: Path) -> ServingSpec:
    """``feast apply``, then export the serving spec next to the registry."""
    if not offline_dir(repo).is_dir():
        raise RepoError(
            f"no offline feature tables in {offline_dir(repo)}: run `vigil features` first"
        )
    feast_cli(repo, "apply")
    spec = export_serving_spec(open_store(repo))
    spec_path(repo).write_text(spec.model_dump_json(indent=2) + "\n")
    return spec


@dataclass(frozen=True)
class MaterializeReport:
    """What one materialization loaded (see ``vigil.materialization``)."""

    end: datetime
    views: list[ViewLoad]
    online_store: str
    """Feast's online store type: ``redis`` (markers written) or ``sqlite``."""

    @property
    def unloaded(self) -> list[str]:
        """Views the online Redis holds no marker for after this run: never fully loaded."""
        return [v.view for v in self.views if not v.marked] if self.online_store == "redis" else []


def materialize(repo: Path, end: datetime | None = None, full: bool = False) -> MaterializeReport:
    """``feast materialize-incremental`` up to ``end`` (default: now, never in the future).

    ``full`` loads the whole freshness window (``feast materialize START END``) instead: what an
    empty online store needs, since the incremental watermark lives in the registry and would
    skip everything materialized before into another store.

    Every path that loads the online store goes through here, so that the rows are counted and
    the online store's markers written (``vigil.materialization``).
    """
    now = datetime.now(UTC)
    end = min(end or now, now)
    stamp = "%Y-%m-%dT%H:%M:%S"
    spec = load_serving_spec(repo)
    views = {
        name: view for svc in spec.feature_services.values() for name, view in svc.views.items()
    }
    if full:
        ttls = [v.ttl_seconds or 0 for v in views.values()]
        start = end - timedelta(seconds=max(ttls, default=0) or 365 * 86400)
        out = feast_cli(repo, "materialize", start.strftime(stamp), end.strftime(stamp))
    else:
        out = feast_cli(repo, "materialize-incremental", end.strftime(stamp))
    from redis.exceptions import RedisError  # feast[redis] depends on redis-py

    windows = materialization.feast_windows(out)
    if full:  # the range we asked for, should Feast's output ever stop naming it
        for name in views:
            windows.setdefault(name, (start, end))
    online = online_store_config(repo)
    client = (
        materialization.redis_client(
            online.get("connection_string", "localhost:6379"),
            str(online.get("redis_type", "redis")),
        )
        if online.get("type", "redis") == "redis"
        else None
    )
    try:
        loads = materialization.record(
            client,
            spec.project,
            views,
            windows,
            offline_dir(repo),
            full,
            written_at=datetime.now(UTC),
        )
    except (OSError, ValueError) as exc:
        raise RepoError(
            f"feast materialized, but its rows could not be counted or marked: {exc}"
        ) from exc
    except RedisError as exc:
        raise RepoError(
            f"feast materialized, but the online store's markers were not written: {exc}"
        ) from exc
    finally:
        if client is not None:
            client.close()
    return MaterializeReport(end=end, views=loads, online_store=str(online.get("type", "redis")))


def online_store_config(repo: Path) -> dict:
    """The ``online_store`` section of the config Vigil's commands use."""
    import yaml  # feast depends on PyYAML

    config = yaml.safe_load(config_path(repo).read_text()) or {}
    online = config.get("online_store") or {}
    return online if isinstance(online, dict) else {"type": str(online)}


def load_serving_spec(repo: Path) -> ServingSpec:
    path = spec_path(repo)
    if not path.is_file():
        raise RepoError(f"{path} is missing: run `vigil apply` first")
    return ServingSpec.model_validate_json(path.read_text())


def _add_view(store: FeatureStore, views: dict[str, ViewSpec], name: str) -> None:
    if name in views:
        return
    fv = store.get_feature_view(name)
    ttl = int(fv.ttl.total_seconds()) if fv.ttl else None
    views[name] = ViewSpec(
        name=name,
        join_keys=list(fv.join_keys),
        ttl_seconds=ttl,
        features={f.name: str(f.dtype) for f in fv.features},
    )


def export_serving_spec(store: FeatureStore) -> ServingSpec:
    """Describe every feature service as the encoder needs it, in Feast's feature order."""
    project = store.project
    services: dict[str, FeatureServiceSpec] = {}
    for service in store.list_feature_services():
        views: dict[str, ViewSpec] = {}
        on_demand: dict[str, OnDemandSpec] = {}
        features: list[FeatureRef] = []

        for projection in service.feature_view_projections:
            name = projection.name_to_use()
            try:
                odfv = store.get_on_demand_feature_view(projection.name)
            except Exception:  # noqa: BLE001 - feast raises its own not-found error type per object kind
                odfv = None
            if odfv is not None:
                inputs = {
                    p.name: [f.name for f in p.features]
                    for p in odfv.source_feature_view_projections.values()
                }
                for view_name in inputs:
                    _add_view(store, views, view_name)
                request_fields = {
                    f.name: str(f.dtype)
                    for rs in odfv.source_request_sources.values()
                    for f in rs.schema
                }
                on_demand[name] = OnDemandSpec(
                    name=name,
                    inputs=inputs,
                    request_fields=request_fields,
                    outputs=[f.name for f in projection.features],
                )
                kind = "on_demand"
            else:
                _add_view(store, views, projection.name)
                kind = "stored"
            for f in projection.features:
                features.append(
                    FeatureRef(
                        name=f"{name}__{f.name}",
                        view=name,
                        feature=f.name,
                        dtype=str(f.dtype),
                        kind=kind,
                    )
                )
        services[service.name] = FeatureServiceSpec(
            name=service.name,
            project=project,
            features=features,
            views=views,
            on_demand=on_demand,
        )
    return ServingSpec(project=project, feature_services=services)
