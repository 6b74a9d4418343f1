"""The local runner: Redis and the services as plain processes, as docker compose runs them.

The stack gets a fresh token for the internal hops, the key secret ``vigil keys`` uses, and one API key
with the ``score`` scope, ``LocalStack.api_key``, which its clients send.

Each service is started with the same command and the same environment variables as in
``docker-compose.yml`` (a test compares the two); only hosts and ports differ, since here
everything listens on 127.0.0.1. ``vigil serve`` starts the stack, waits for every ``/readyz``,
prints where each service is and stops them all cleanly on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets as secrets_module
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from vigil.redis_server import RedisServer, free_port

#: uvicorn's httptools protocol with one write per response (``vigil_servicekit.uvicorn_http``).
HTTP_PROTOCOL = "vigil_servicekit.uvicorn_http:HttpToolsProtocol"

#: At a stop (SIGTERM), how long uvicorn waits for open connections and requests in flight before
#: it cancels them and runs the app's own shutdown (the gateway then sends its spooled decision
#: events, ``GATEWAY_EVENTS_DRAIN_TIMEOUT_S``). Unbounded, one client that never finishes its
#: request (or a browser's idle socket opened as the server closed) holds the stop until the
#: orchestrator kills the process, and the spool is lost.
GRACEFUL_STOP_S = 5


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    factory: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def command(self, host: str, port: int) -> list[str]:
        """The container command (compose uses it verbatim with host 0.0.0.0)."""
        return ["python", "-m", *self.module_args(host, port)]

    def module_args(self, host: str, port: int) -> list[str]:
        """What follows ``python -m``: uvicorn's CLI with the collector paused during start-up
        (``vigil_servicekit.serve``); the services log their own access lines; a stop waits
        at most ``GRACEFUL_STOP_S`` for the requests in flight; the protocol writes each
        response once."""
        return [
            "vigil_servicekit.serve",
            "--factory",
            self.factory,
            "--host",
            host,
            "--port",
            str(port),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            str(GRACEFUL_STOP_S),
            "--http",
            HTTP_PROTOCOL,
        ]


def service_specs(
    redis_url: str,
    urls: dict[str, str],
    models_dir: str,
    spec_path: str,
    samples_path: str | None = None,
    secrets: dict[str, str] | None = None,
    tls: tuple[str, str] | None = None,
) -> list[ServiceSpec]:
    """The stack, in start order. Compose's environment for each service must have these keys.

    ``samples_path`` (the web page's sample transactions) defaults to ``samples.json`` beside
    the serving spec, where ``vigil features`` writes it. ``secrets``: ``internal_token`` (the
    encoder and predictor require it, the gateway sends it) and ``auth_secret`` (the gateway's
    key hashes); fresh random ones when not given. ``tls``: the gateway's certificate and key
    (it then serves HTTPS)."""
    samples_path = samples_path or str(Path(spec_path).parent / "samples.json")
    secrets = {**new_secrets(), **(secrets or {})}
    gateway_tls = {"GATEWAY_TLS_CERTFILE": tls[0], "GATEWAY_TLS_KEYFILE": tls[1]} if tls else {}
    return [
        ServiceSpec(
            "encoder",
            "vigil_encoder.app:create_app",
            8001,
            {
                "ENCODER_REDIS_URL": redis_url,
                "ENCODER_SPEC_PATH": spec_path,
                "ENCODER_INTERNAL_TOKEN": secrets["internal_token"],
            },
        ),
        ServiceSpec(
            "predictor",
            "vigil_predictor.app:create_app",
            8002,
            {
                "PREDICTOR_MODELS_DIR": models_dir,
                "PREDICTOR_INTERNAL_TOKEN": secrets["internal_token"],
            },
        ),
        ServiceSpec(
            "streamer",
            "vigil_streamer.app:create_app",
            8003,
            {
                "STREAMER_REDIS_URL": redis_url,
                # Stable across restarts: what it read and had not acknowledged is read again.
                "STREAMER_CONSUMER": "streamer-1",
            },
        ),
        ServiceSpec(
            "gateway",
            "vigil_gateway.app:create_app",
            8000,
            {
                "GATEWAY_ENCODER_URL": urls["encoder"],
                "GATEWAY_PREDICTOR_URL": urls["predictor"],
                "GATEWAY_REDIS_URL": redis_url,
                "GATEWAY_MODEL_NAME": "fraud_detector",
                "GATEWAY_SAMPLES_PATH": samples_path,
                "GATEWAY_INTERNAL_TOKEN": secrets["internal_token"],
                "GATEWAY_AUTH_SECRET": secrets["auth_secret"],
                **gateway_tls,
            },
        ),
    ]


def new_secrets() -> dict[str, str]:
    """A fresh internal token; the key secret is ``GATEWAY_AUTH_SECRET`` (or the development
    one), which ``vigil keys`` uses too."""
    from vigil.keys import auth_secret

    return {"internal_token": secrets_module.token_urlsafe(24), "auth_secret": auth_secret()}


def create_api_key(
    redis_url: str,
    auth_secret: str,
    client: str,
    scopes: tuple[str, ...] = ("score",),
    limits: dict[str, float | None] | None = None,
) -> str:
    """A new API key in the stack's Redis (the gateway's ``KeyAdmin``); its token."""
    import asyncio

    from vigil.keys import key_store_client
    from vigil_gateway.api_keys import KeyAdmin

    async def create() -> str:
        redis_client = key_store_client(redis_url)
        try:
            token, _ = await KeyAdmin(redis_client, auth_secret).create(
                client, scopes, limits=limits
            )
        finally:
            await redis_client.aclose()
        return token

    return asyncio.run(create())


READY_PATH = {
    "encoder": "/readyz",
    "predictor": "/v2/health/ready",
    "gateway": "/readyz",
    "streamer": "/readyz",
}


class StackError(Exception):
    """A service did not become ready (its log tail is in the message)."""


@dataclass
class RunningService:
    spec: ServiceSpec
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(
        self,
        repo: Path,
        models_dir: Path,
        log_dir: Path,
        redis_url: str | None = None,
        ports: dict[str, int] | None = None,
        fixed_ports: bool = False,
        extra_env: dict[str, dict[str, str]] | None = None,
        key_limits: dict[str, float | None] | None = None,
        tls: tuple[str, str] | None = None,
        with_streamer: bool = False,
    ):
        self.repo, self.models_dir, self.log_dir = repo, models_dir.resolve(), log_dir
        self.redis_url = redis_url
        self.redis: RedisServer | None = None
        self.ports = ports or {}
        self.fixed_ports = fixed_ports
        self.extra_env = extra_env or {}
        self.services: dict[str, RunningService] = {}
        self.secrets = new_secrets()
        self.key_limits = key_limits
        self.tls = tls
        self.with_streamer = with_streamer
        """Start the streamer too (it needs the entity histories seeded: ``vigil stream-seed``)."""
        self.api_key: str | None = None
        """A key with the ``score`` scope made for this stack's clients (``start`` makes it)."""

    def start(self, timeout: float = 60.0) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None:
            self.redis = RedisServer(log_path=self.log_dir / "redis.log").start()
            self.redis_url = self.redis.url
        planned = {
            name: free_port() if not self.fixed_ports else default
            for name, default in (
                ("encoder", 8001),
                ("predictor", 8002),
                ("streamer", 8003),
                ("gateway", 8000),
            )
        }
        planned.update(self.ports)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in planned.items()}
        specs = service_specs(
            self.redis_url,
            urls,
            str(self.models_dir),
            str(self.repo / "data" / "serving_spec.json"),
            str(self.repo / "data" / "samples.json"),
            secrets=self.secrets,
            tls=self.tls,
        )
        self.api_key = create_api_key(
            self.redis_url, self.secrets["auth_secret"], "local-stack", limits=self.key_limits
        )
        if not self.with_streamer:
            specs = [spec for spec in specs if spec.name != "streamer"]
        try:
            for spec in specs:
                self._start_one(spec, planned[spec.name])
            for name in self.services:
                self.wait_ready(name, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, spec: ServiceSpec, port: int) -> None:
        env = dict(os.environ, **spec.env, **self.extra_env.get(spec.name, {}))
        # Importing feast (the CLI, the demo, the tests) sets PROMETHEUS_MULTIPROC_DIR in this
        # process; inherited, it would switch the services' metrics to multiprocess files.
        if "feast.metrics" in sys.modules:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log_path = self.log_dir / f"{spec.name}.log"
        cmd = [sys.executable, "-m", *spec.module_args("127.0.0.1", port)]
        with open(log_path, "ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        scheme = "https" if spec.name == "gateway" and self.tls else "http"
        self.services[spec.name] = RunningService(
            spec, f"{scheme}://127.0.0.1:{port}", process, log_path
        )

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        svc = self.services[name]
        deadline = time.monotonic() + timeout
        verify = self.tls[0] if self.tls and name == "gateway" else True
        with httpx.Client(timeout=1.0, verify=verify) as client:
            while time.monotonic() < deadline:
                if svc.process.poll() is not None:
                    raise StackError(
                        f"{name} exited with {svc.process.returncode}:\n{self.log_tail(name)}"
                    )
                try:
                    if client.get(svc.url + READY_PATH[name]).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise StackError(f"{name} was not ready after {timeout:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.services[name].log_path
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def stop_service(self, name: str) -> None:
        svc = self.services[name]
        if svc.process.poll() is None:
            os.killpg(svc.process.pid, signal.SIGTERM)
            try:
                svc.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(svc.process.pid, signal.SIGKILL)
                svc.process.wait()

    def restart_service(self, name: str, timeout: float = 60.0) -> None:
        svc = self.services[name]
        self.stop_service(name)
        port = int(svc.url.rsplit(":", 1)[1])
        self._start_one(svc.spec, port)
        self.wait_ready(name, timeout)

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            self.stop_service(name)
        if self.redis:
            self.redis.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        rows = [
            f"  {name:<10} {svc.url}  (pid {svc.process.pid}, log {svc.log_path})"
            for name, svc in self.services.items()
        ]
        return "\n".join([f"  {'redis':<10} {self.redis_url}", *rows])
