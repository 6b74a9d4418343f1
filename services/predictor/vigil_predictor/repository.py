"""The model repository: every version under ``models_dir``, loaded once, looked up by name.

A version that fails verification is kept as a refused runtime so that its routes can say
"not ready" (503) rather than "unknown" (404), while the other versions keep serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from vigil_contracts.artifact import list_versions
from vigil_predictor.errors import ModelNotFound, ModelNotReady
from vigil_predictor.runtime import XGBoostRuntime

logger = logging.getLogger(__name__)


class ModelRepository:
    def __init__(
        self,
        models_dir: Path,
        *,
        default_versions: Mapping[str, str] | None = None,
        nthread: int = 1,
    ) -> None:
        self.models_dir = models_dir
        self.pinned = dict(default_versions or {})
        self.nthread = nthread
        self.loaded = False
        self._models: dict[str, dict[str, XGBoostRuntime]] = {}
        self._defaults: dict[str, str | None] = {}

    def load_all(self) -> None:
        """Discover and load every version of every model (blocking: call it off the loop)."""
        models: dict[str, dict[str, XGBoostRuntime]] = {}
        if not self.models_dir.is_dir():
            logger.error("models_dir does not exist", extra={"models_dir": str(self.models_dir)})
        else:
            for model_root in sorted(p for p in self.models_dir.iterdir() if p.is_dir()):
                if model_root.name.startswith("."):
                    continue
                versions = {}
                for version in list_versions(self.models_dir, model_root.name):
                    runtime = XGBoostRuntime(
                        model_root / version,
                        name=model_root.name,
                        version=version,
                        nthread=self.nthread,
                    )
                    runtime.load()
                    versions[version] = runtime
                if versions:
                    models[model_root.name] = versions
        self._models = models
        self._defaults = {name: self._pick_default(name) for name in models}
        for name in self.pinned.keys() - models.keys():
            logger.error("pinned default names an unknown model", extra={"model": name})
        self.loaded = True
        logger.info(
            "model repository loaded",
            extra={
                "models_dir": str(self.models_dir),
                "defaults": self._defaults,
                "refused": {
                    name: [v for v, rt in versions.items() if not rt.ready]
                    for name, versions in models.items()
                },
            },
        )

    def _pick_default(self, name: str) -> str | None:
        versions = self._models[name]
        if name in self.pinned:
            pinned = self.pinned[name]
            if pinned not in versions or not versions[pinned].ready:
                logger.error(
                    "pinned default version cannot serve",
                    extra={"model": name, "version": pinned},
                )
            return pinned
        ready = [v for v, rt in versions.items() if rt.ready]  # oldest first
        numeric = [v for v in ready if v.isdigit()]
        if numeric:
            return numeric[-1]
        return ready[-1] if ready else None

    def unload_all(self) -> None:
        for versions in self._models.values():
            for runtime in versions.values():
                runtime.unload()
        self.loaded = False

    @property
    def ready(self) -> bool:
        """True once loaded and at least one model can answer requests naming no version."""
        return self.loaded and any(self._default_runtime_ready(name) for name in self._models)

    def _default_runtime_ready(self, name: str) -> bool:
        version = self._defaults.get(name)
        runtime = self._models[name].get(version) if version is not None else None
        return runtime is not None and runtime.ready

    def model_names(self) -> list[str]:
        return list(self._models)

    def default_version(self, name: str) -> str | None:
        return self._defaults.get(name)

    def ready_versions(self, name: str) -> list[str]:
        return [v for v, rt in self._models.get(name, {}).items() if rt.ready]

    def refused_versions(self, name: str) -> list[str]:
        return [v for v, rt in self._models.get(name, {}).items() if not rt.ready]

    def lookup(self, name: str, version: str | None = None) -> XGBoostRuntime:
        """The runtime of a version, whether or not it is ready; ModelNotFound if it is unknown."""
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named {name!r}")
        if version is None:
            default = self._defaults.get(name)
            if default is None or default not in versions:
                raise ModelNotReady(f"model {name!r} has no default version that can serve")
            return versions[default]
        runtime = versions.get(version)
        if runtime is None:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return runtime

    def get(self, name: str, version: str | None = None) -> XGBoostRuntime:
        """A runtime ready to predict; ModelNotFound or ModelNotReady otherwise."""
        runtime = self.lookup(name, version)
        if not runtime.ready:
            raise ModelNotReady(
                f"model {name!r} version {runtime.version!r} is not ready: it failed to load"
            )
        return runtime
