"""``python -m vigil_servicekit.serve <uvicorn's arguments>``: uvicorn's command line, with the
garbage collector paused while the service starts.

A service's imports and app factory allocate ~100,000 long-lived objects (FastAPI, pydantic,
aiohttp, redis, XGBoost...) and the collector walks them again and again while they are made:
measured here, importing the gateway took 0.60-0.72 s with the collector paused against
0.67-0.84 s without. Every Vigil service resumes the collector itself in its lifespan
(:func:`vigil_servicekit.gc_tuning.freeze_startup_heap`, once everything is built); whatever the
app does, the collector runs again as soon as uvicorn's start-up is over (the lifespan's start
finished or failed), so no app served this way runs without it. Everything else is uvicorn's own
CLI, unchanged, but for one setting: a service whose environment names a certificate
(``<PREFIX>_TLS_CERTFILE`` and ``<PREFIX>_TLS_KEYFILE``, the prefix being the factory's package
without ``vigil_``: ``GATEWAY_`` for ``vigil_gateway.app:create_app``) is served over HTTPS with
it, so that compose, the runner and a bare container start HTTPS from the same command.
"""

from __future__ import annotations

import gc
import os
import sys
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


def tls_arguments(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """uvicorn's ``--ssl-*`` arguments from the service's ``<PREFIX>_TLS_*`` settings."""
    if "--factory" not in argv or "--ssl-certfile" in argv:
        return []
    package = argv[argv.index("--factory") + 1].split(".", 1)[0]
    prefix = package.removeprefix("vigil_").upper() + "_"
    cert, key = environ.get(prefix + "TLS_CERTFILE"), environ.get(prefix + "TLS_KEYFILE")
    if not cert:
        return []
    return ["--ssl-certfile", cert, *(["--ssl-keyfile", key] if key else [])]


def main() -> None:
    sys.argv += tls_arguments(sys.argv, os.environ)
    gc.disable()  # resumed by the app's freeze_startup_heap, at the latest when start-up ends
    _resume_collector_after_startup()
    from uvicorn.main import main as uvicorn_main

    uvicorn_main()


if __name__ == "__main__":
    main()
