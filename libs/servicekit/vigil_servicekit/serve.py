"""``python -m vigil_servicekit.serve <uvicorn's arguments>``: uvicorn's command line, with the
garbage collector paused while the service starts.

A service's imports and app factory allocate ~100,000 long-lived objects (FastAPI, pydantic,
aiohttp, redis, XGBoost...) and the collector walks them again and again while they are made:
measured here, importing the gateway took 0.60-0.72 s with the collector paused against
0.67-0.84 s without. Every Vigil service resumes the collector itself in its lifespan
(:func:`vigil_servicekit.gc_tuning.freeze_startup_heap`, once everything is built); whatever the
app does, the collector runs again as soon as uvicorn's start-up is over (the lifespan's start
finished or failed), so no app served this way runs without it. Everything else is uvicorn's own
CLI, unchanged.
"""

from __future__ import annotations

import gc
from typing import Any


def _resume_collector_after_startup() -> None:
    """Wrap uvicorn's ``Server.startup`` (the lifespan's start, then the listening sockets) so that
    the collector is enabled when it returns or raises."""
    from uvicorn.server import Server

    startup = Server.startup

    async def startup_then_collect(self: Server, *args: Any, **kwargs: Any) -> None:
        try:
            await startup(self, *args, **kwargs)
        finally:
            gc.enable()

    Server.startup = startup_then_collect  # type: ignore[method-assign]


def main() -> None:
    gc.disable()  # resumed by the app's freeze_startup_heap, at the latest when start-up ends
    _resume_collector_after_startup()
    from uvicorn.main import main as uvicorn_main

    uvicorn_main()


if __name__ == "__main__":
    main()
