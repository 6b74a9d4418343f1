"""``python -m vigil_servicekit.serve``: uvicorn's command line with the garbage collector paused
while the service imports and starts, and running again once its lifespan froze the start-up
heap (or, for an app that freezes nothing, once uvicorn's start-up is over). A real uvicorn
process serves a small app that reports what it saw."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from vigil.redis_server import free_port
from vigil.runner import GRACEFUL_STOP_S, ServiceSpec

APP = textwrap.dedent("""
    import gc
    import os
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from vigil_servicekit.gc_tuning import frozen_startup_heap

    AT_IMPORT = gc.isenabled()


    def create_app():
        at_factory = gc.isenabled()

        @asynccontextmanager
        async def lifespan(app):
            app.state.in_lifespan = gc.isenabled()
            if os.environ.get("PROBE_FREEZE") == "0":
                yield  # an app that never freezes its start-up heap
                return
            with frozen_startup_heap():
                yield

        app = FastAPI(lifespan=lifespan)

        @app.get("/gc")
        async def report():
            return {"import": AT_IMPORT, "factory": at_factory,
                    "lifespan": app.state.in_lifespan, "serving": gc.isenabled()}

        return app
""")


def _report(tmp_path: Path, module: str, *, freeze: bool = True) -> dict[str, bool]:
    (tmp_path / "gc_probe_app.py").write_text(APP)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "--factory",
            "gc_probe_app:create_app",
            "--app-dir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PROBE_FREEZE": "1" if freeze else "0"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/gc", timeout=2).json()
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the probe app never answered"
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_collector_is_paused_for_the_start_up_and_runs_while_serving(tmp_path: Path) -> None:
    assert _report(tmp_path, "vigil_servicekit.serve") == {
        "import": False,
        "factory": False,
        "lifespan": False,
        "serving": True,
    }


def test_plain_uvicorn_keeps_the_collector_running(tmp_path: Path) -> None:
    assert _report(tmp_path, "uvicorn") == {
        "import": True,
        "factory": True,
        "lifespan": True,
        "serving": True,
    }


def test_an_app_that_freezes_nothing_is_served_with_the_collector_running(tmp_path: Path) -> None:
    assert _report(tmp_path, "vigil_servicekit.serve", freeze=False) == {
        "import": False,
        "factory": False,
        "lifespan": False,
        "serving": True,
    }


STOP_APP = textwrap.dedent("""
    import os
    from contextlib import asynccontextmanager
    from pathlib import Path

    from fastapi import FastAPI, Request


    def create_app():
        @asynccontextmanager
        async def lifespan(app):
            yield
            Path(os.environ["PROBE_STOPPED"]).write_text("shutdown ran")  # e.g. the event drain

        app = FastAPI(lifespan=lifespan)

        @app.post("/upload")
        async def upload(request: Request):
            return {"bytes": len(await request.body())}

        return app
""")


def test_a_stop_is_not_held_by_a_request_that_never_ends(tmp_path: Path) -> None:
    """The services' own command line (the runner's, compose's, the images'): a client that sent
    half a request body and stalls holds a SIGTERM for at most ``GRACEFUL_STOP_S``; then the app's
    own shutdown runs (the gateway sends its spooled decision events there) and the process
    exits, well before an orchestrator's SIGKILL."""
    (tmp_path / "stop_probe_app.py").write_text(STOP_APP)
    stopped = tmp_path / "stopped"
    port = free_port()
    spec = ServiceSpec("probe", "stop_probe_app:create_app", port)
    process = subprocess.Popen(
        [sys.executable, "-m", *spec.module_args("127.0.0.1", port), "--app-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PROBE_STOPPED": str(stopped)},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                assert httpx.post(f"http://127.0.0.1:{port}/upload", content=b"x").json() == {
                    "bytes": 1
                }
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the probe app never answered"
                time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as stalled:
            stalled.sendall(
                b"POST /upload HTTP/1.1\r\nHost: probe\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
            )
            time.sleep(0.3)  # the request is in the app, waiting for the rest of its body
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=GRACEFUL_STOP_S + 10)
            took = time.monotonic() - began
        assert stopped.read_text() == "shutdown ran"
        assert GRACEFUL_STOP_S - 1 < took < GRACEFUL_STOP_S + 5, took  # it did wait, boundedly
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
