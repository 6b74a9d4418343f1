"""The metadata of the model the gateway scores with, kept fresh.

Read at start-up, re-read every ``metadata_refresh_s`` and whenever an inference answer names a
version the gateway has not seen (the predictor's default moved on). Each version's metadata is
kept, so a score is always labelled with the thresholds of the version that produced it (the
pair of the transaction's segment, or the global one), even while replicas of the predictor
disagree during a rollout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from functools import partial

from vigil_contracts.api import ModelRef
from vigil_gateway.errors import DownstreamError
from vigil_gateway.metrics import UNKNOWN_VERSION, GatewayMetrics
from vigil_gateway.model_metadata import ModelMetadata
from vigil_gateway.predictor_client import PredictorClient

logger = logging.getLogger(__name__)

# Versions remembered besides the current one (a rollout has two or three in flight).
_KEEP_VERSIONS = 8
# Retry interval while no metadata has ever been read: readiness waits on it.
_RETRY_UNLOADED_S = 1.0


class ModelCatalog:
    def __init__(
        self,
        predictor: PredictorClient,
        metrics: GatewayMetrics,
        *,
        name: str,
        pinned_version: str | None,
        refresh_s: float,
        fetch_timeout_s: float,
    ) -> None:
        self.predictor = predictor
        self.metrics = metrics
        self.name = name
        self.pinned_version = pinned_version
        self.refresh_s = refresh_s
        self.fetch_timeout_s = fetch_timeout_s
        self._current: ModelMetadata | None = None
        self._versions: OrderedDict[str, ModelMetadata] = OrderedDict()
        self._inflight: dict[str | None, asyncio.Task[ModelMetadata]] = {}
        self._background: set[asyncio.Task[object]] = set()
        self.last_error: str | None = None

    @property
    def current(self) -> ModelMetadata | None:
        return self._current

    def model_ref(self) -> ModelRef:
        """The model named in answers that no inference produced (degraded ones)."""
        return ModelRef(name=self.name, version=self._current.version if self._current else None)

    def version_label(self) -> str:
        return self._current.version if self._current else UNKNOWN_VERSION

    def known(self, version: str) -> ModelMetadata | None:
        if self._current is not None and self._current.version == version:
            return self._current
        return self._versions.get(version)

    async def refresh(
        self, timeout: float | None = None, request_id: str | None = None
    ) -> ModelMetadata:
        """Re-read the metadata of the version requests are sent to (pinned, or the default)."""
        meta = await self._fetch(self.pinned_version, timeout, request_id)
        self._set_current(meta)
        return meta

    async def ensure_current(
        self, timeout: float | None, request_id: str | None = None
    ) -> ModelMetadata:
        """The current metadata, read now if it never was; raises DownstreamError."""
        return self._current or await self.refresh(timeout, request_id)

    async def for_version(
        self, version: str, timeout: float | None, request_id: str | None = None
    ) -> ModelMetadata:
        """Metadata of a version an inference answer named; notices a moved default."""
        known = self.known(version)
        if known is not None:
            return known
        if self.pinned_version is None:
            self.refresh_soon()  # the default changed under us
        return await self._fetch(version, timeout, request_id)

    def refresh_soon(self) -> None:
        """Refresh in the background (a failure is logged; the periodic refresh retries)."""
        task = asyncio.create_task(self._refresh_logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self) -> None:
        """The refresher; runs for the life of the app (cancelled by the lifespan)."""
        while True:
            await self._refresh_logged()
            if self._current is None:
                await asyncio.sleep(
                    _RETRY_UNLOADED_S
                    if self.refresh_s <= 0
                    else min(self.refresh_s, _RETRY_UNLOADED_S)
                )
            elif self.refresh_s > 0:
                await asyncio.sleep(self.refresh_s)
            else:
                return

    async def close(self) -> None:
        for task in [*self._background, *self._inflight.values()]:
            task.cancel()
        await asyncio.gather(*self._background, *self._inflight.values(), return_exceptions=True)

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh(self.fetch_timeout_s)
        except DownstreamError as exc:
            self.last_error = exc.detail
            self.metrics.metadata_refresh_errors.inc()
            logger.warning(
                "model metadata refresh failed", extra={"model": self.name, "error": exc.detail}
            )
        except Exception as exc:  # a bug, not the predictor's answer: the refresh goes on
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.metrics.metadata_refresh_errors.inc()
            logger.exception("model metadata refresh failed", extra={"model": self.name})

    async def _fetch(
        self, version: str | None, timeout: float | None, request_id: str | None = None
    ) -> ModelMetadata:
        # One request in flight per version however many callers want it; a caller whose own
        # budget runs out stops waiting without cancelling it for the others.
        task = self._inflight.get(version)
        if task is None:
            task = asyncio.create_task(
                self.predictor.metadata(
                    self.name,
                    version,
                    timeout=timeout or self.fetch_timeout_s,
                    request_id=request_id,
                )
            )
            self._inflight[version] = task
            task.add_done_callback(partial(self._fetched, version))
        return await asyncio.shield(task)

    def _fetched(self, version: str | None, task: asyncio.Task[ModelMetadata]) -> None:
        if self._inflight.get(version) is task:
            del self._inflight[version]
        if task.cancelled():
            return
        if task.exception() is None:  # also marks a failure as retrieved
            meta = task.result()
            self._versions[meta.version] = meta
            self._versions.move_to_end(meta.version)
            while len(self._versions) > _KEEP_VERSIONS:
                self._versions.popitem(last=False)

    def _set_current(self, meta: ModelMetadata) -> None:
        previous = self._current
        self._current = meta
        self.last_error = None
        if previous is None or previous.version != meta.version or previous != meta:
            self.metrics.model_info.clear()
            self.metrics.model_info.labels(meta.name, meta.version).set(1)
            logger.info(
                "model metadata loaded",
                extra={
                    "model": meta.name,
                    "version": meta.version,
                    "previous_version": previous.version if previous else None,
                    "feature_service": meta.feature_service,
                    "feature_contract": meta.feature_contract,
                    "thresholds": meta.thresholds.as_mapping(),
                    "segment_thresholds": {
                        column: {value: pair.as_mapping() for value, pair in pairs.items()}
                        for column, pairs in meta.segment_thresholds.items()
                    },
                },
            )
