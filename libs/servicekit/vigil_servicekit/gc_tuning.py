"""Keep the garbage collector's full passes off the request path.

A service imports FastAPI, pydantic, numpy, xgboost...: 65,000 to 160,000 long-lived objects,
which every full (generation 2) collection walks again. Measured here, one full collection
takes 14 ms in the encoder, 18 ms in the gateway and 60 ms in the predictor: whichever request
is in flight when it runs waits that long, which is what a p99 at a light load is made of.

Once start-up is done (imports, models loaded, clients open), :func:`freeze_startup_heap`
collects once and moves every surviving object to the permanent generation (``gc.freeze``),
which later collections skip; objects made while serving are collected as before. The heap is
unfrozen at shutdown (an app's lifespan may end in a process that lives on: tests).

Started through ``python -m vigil_servicekit.serve``, a service runs its imports and start-up with
the collector paused (it has nothing to free yet and would walk the growing heap many times);
the freeze resumes it.

A batch's CPU-bound work (the encoder's decoding and assembly of 1,000 rows) makes some 100,000
objects that reference counting frees; the young collections it would trigger meanwhile walk
what the batch holds again and again (measured: about 15 % of the encoder's CPU per 1,000-row
batch). :func:`collector_paused` keeps the collector out of such a block.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect, then freeze what survived; returns how many objects were frozen. The collector
    runs from here on (``vigil_servicekit.serve`` pauses it for the start-up)."""
    gc.collect()
    gc.freeze()
    gc.enable()
    frozen = gc.get_freeze_count()
    logger.debug("start-up heap frozen", extra={"objects": frozen})
    return frozen


@contextmanager
def frozen_startup_heap() -> Iterator[None]:
    """:func:`freeze_startup_heap` for the life of the block (an app's lifespan)."""
    freeze_startup_heap()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the collector for a block that must not be interrupted by it (a batch's
    synchronous work: no ``await`` inside); resumed after, unless it was paused already."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
