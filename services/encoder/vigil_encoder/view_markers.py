"""Whether the online store holds each feature view the encoder serves, and how old it is.

An empty Redis answers every read with "missing", which the encoder would serve as vectors of
missing features and the model would score: ready in name only. Every load of the online store
leaves a marker per view (``vigil_contracts.online_markers``); a view the serving spec needs
without one keeps the encoder not ready, and each marked view's age (now minus the marker's
``end``) is a gauge, refreshed when ``/readyz`` or ``/metrics`` is read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from vigil_contracts.online_markers import ViewMarker, marker_key
from vigil_encoder.errors import FeatureStoreUnavailable
from vigil_encoder.metrics import EncoderMetrics
from vigil_encoder.plan import ServicePlan
from vigil_encoder.store import OnlineStore

logger = logging.getLogger(__name__)


def served_views(plans: Iterable[ServicePlan]) -> list[tuple[str, str]]:
    """``(project, view)`` of every stored view the plans read, in a stable order."""
    return sorted({(plan.spec.project, view) for plan in plans for view in plan.spec.views})


class ViewMarkers:
    def __init__(self, store: OnlineStore, metrics: EncoderMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.ends: dict[str, float] = {}  # view -> its marker's end (epoch seconds)
        self._shown: set[str] = set()  # views the gauge has a series for

    async def check(self, plans: Iterable[ServicePlan]) -> dict[str, object]:
        """The readiness check: ready when every served view has a marker. Raises
        ``FeatureStoreUnavailable`` when Redis does not answer."""
        views = served_views(plans)
        replies = await self.store.hgetall_many([marker_key(p, v) for p, v in views])
        missing: list[str] = []
        ends: dict[str, float] = {}
        for (_, view), fields in zip(views, replies, strict=True):
            try:
                marker = ViewMarker.from_fields(fields) if fields else None
            except ValueError as exc:
                logger.warning(
                    "unreadable materialization marker", extra={"view": view, "reason": str(exc)}
                )
                marker = None
            if marker is None:
                missing.append(view)
            else:
                ends[view] = marker.end.timestamp()
        self.ends = ends
        self._set_gauges()
        if missing:
            return {
                "ready": False,
                "detail": f"online store holds no features for {', '.join(missing)}: "
                "run `vigil materialize --full`",
            }
        ages = {view: round(time.time() - end) for view, end in ends.items()}
        return {"ready": True, "detail": "loaded", "age_seconds": ages}

    async def refresh(self, plans: Iterable[ServicePlan]) -> None:
        """Re-read the markers for the gauge; if Redis does not answer, age the known ones."""
        try:
            await self.check(plans)
        except FeatureStoreUnavailable:
            self._set_gauges()

    def _set_gauges(self) -> None:
        now = time.time()
        gauge = self.metrics.view_age
        for view in self._shown - self.ends.keys():  # its marker went away: no age
            gauge.remove(view)
        for view, end in self.ends.items():
            gauge.labels(view).set(now - end)
        self._shown = set(self.ends)
