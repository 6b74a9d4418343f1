"""``python -m vigil_servicekit.serve <uvicorn's arguments>``: uvicorn's command line, with the
garbage collector paused while the service starts.

A service's imports and app factory allocate ~100,000 long-lived objects (FastAPI, pydantic,
aiohttp, redis, XGBoost...) and the collector walks them again and again while they are made:
measured here, importing the gateway took 0.60-0.72 s with the collector paused against
0.67-0.84 s without. The collector is resumed by :func:`vigil_servicekit.gc_tuning.freeze_startup_heap`
once the app's lifespan has built everything (every Vigil service freezes its start-up heap
there), so serving runs with it as always. Everything else is uvicorn's own CLI, unchanged.
"""

from __future__ import annotations

import gc


def main() -> None:
    gc.disable()  # resumed by freeze_startup_heap, in the app's lifespan
    from uvicorn.main import main as uvicorn_main

    uvicorn_main()


if __name__ == "__main__":
    main()
