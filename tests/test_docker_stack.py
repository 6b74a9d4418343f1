"""The compose stack for real: build the images, ``docker compose up``, score the gateway's own
samples through its published port, lose and regain the predictor, restart Redis, and always
``docker compose down -v``.

Marked ``docker``: the default run leaves it out; ``pytest -m docker`` runs it (``.ci/run`` does,
through ``scripts/docker-ci.sh``). Skipped, with the reason, when no engine or compose answers.
Its environment:

- ``PYTHON_IMAGE``, ``REDIS_IMAGE``: base images for compose's build arguments (the official
  images when unset; ``docker/local-base-images.sh`` makes both without a registry).
- ``VIGIL_COMPOSE``: the compose command, e.g. ``docker-compose``; otherwise ``docker compose``
  (v2) if it answers, else ``docker-compose`` (1.29).
- ``VIGIL_DOCKER_BUILD_NETWORK``: e.g. ``host``; builds then run on that network (an override file
  written here, since the compose file itself does not need it where a registry is at hand).
- ``VIGIL_DOCKER_TRANSACTIONS``: the size of the world the ``features`` service generates.

The stack is secured as compose requires: a fresh internal token and key secret, a self-signed
certificate in ``./certs`` (HTTPS, verified against it) and an API key made with ``vigil keys``
in the tools image.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from vigil.keys import dev_certificate
from vigil.redis_server import free_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
BUILT = ("redis", "features", "train", "encoder", "predictor", "streamer", "gateway")
FLAGGED = {"suspicious", "highly_suspicious"}
# Small enough to keep features + train near a minute on 2 cores; big enough that the model still
# tells the samples apart (measured: legit scores < 0.001, frauds > 0.8 at 50,000).
TRANSACTIONS = os.environ.get("VIGIL_DOCKER_TRANSACTIONS", "50000")


def _answers(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _compose_command() -> list[str] | None:
    if os.environ.get("VIGIL_COMPOSE"):
        return shlex.split(os.environ["VIGIL_COMPOSE"])
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and _answers([*cmd, "version"]):
            return cmd
    return None


@dataclass
class Stack:
    compose_cmd: list[str]
    project: str
    files: list[Path]
    env: dict[str, str]
    url: str
    timings: dict[str, float]
    cert: str = ""
    api_key: str = ""

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        cmd = [
            *self.compose_cmd,
            "-p",
            self.project,
            *(a for f in self.files for a in ("-f", str(f))),
            *args,
        ]
        done = subprocess.run(
            cmd,
            check=False,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{shlex.join(cmd)} exited with {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def container(self, service: str) -> dict[str, Any]:
        ids = self.compose("ps", "-q", service).split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        out = subprocess.run(
            ["docker", "inspect", ids[0]], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)[0]

    def wait_until(self, what: str, ok, timeout: float = 180) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = ok()
                if last:
                    return last
            except (httpx.HTTPError, AssertionError, subprocess.SubprocessError) as exc:
                last = exc
            time.sleep(1)
        raise AssertionError(f"{what} not within {timeout:.0f}s (last: {last!r})\n{self.logs()}")

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", timeout=60, check=False)[-8000:]

    def persistent_keys(self) -> int:
        """Redis keys without an expiry (the online features; a stored decision has one)."""
        info = self.compose("exec", "-T", "redis", "redis-cli", "info", "keyspace")
        db0 = dict(kv.split("=") for kv in info.split("db0:", 1)[1].split()[0].split(","))
        return int(db0["keys"]) - int(db0["expires"])

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=3, verify=self.cert).status_code == 200

    def make_key(self) -> str:
        """An API key, made as an operator would: ``vigil keys create`` in the tools image."""
        out = self.compose(
            "run",
            "--rm",
            "-T",
            "-e",
            f"GATEWAY_AUTH_SECRET={self.env['GATEWAY_AUTH_SECRET']}",
            "features",
            "vigil",
            "keys",
            "create",
            "--client",
            "docker-test",
            "--redis-url",
            "redis://redis:6379/0",
            timeout=300,
        )
        key = out.rsplit("key (shown once, store it now): ", 1)[1].split()[0]
        # A new key, like a revocation, holds on every gateway process within a second (each
        # re-reads the key table every GATEWAY_AUTH_REFRESH_S, 0.5 s): as documented, wait it.
        time.sleep(1.0)
        return key

    def score(
        self, transaction: dict[str, Any], transaction_id: str | None = None
    ) -> dict[str, Any]:
        body = dict(transaction, transaction_id=transaction_id or f"docker-{uuid.uuid4().hex[:12]}")
        resp = httpx.post(
            f"{self.url}/v1/transactions/score",
            json=body,
            timeout=10,
            verify=self.cert,
            headers={"authorization": f"Bearer {self.api_key}"},
        )
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    compose_cmd = _compose_command()
    if not shutil.which("docker") or not _answers(["docker", "info"]):
        pytest.skip(
            "no container engine answers `docker info` (scripts/docker-ci.sh starts one as root on Debian)"
        )
    if compose_cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` answers")
    files = [ROOT / "docker-compose.yml"]
    network = os.environ.get("VIGIL_DOCKER_BUILD_NETWORK")
    if network:
        override = tmp_path_factory.mktemp("compose") / "build-network.yml"
        override.write_text(
            json.dumps({"services": {s: {"build": {"network": network}} for s in BUILT}})
        )
        files.append(override)
    port = free_port()
    # The secrets compose requires, and the certificate it mounts from ./certs (readable by the
    # gateway's non-root user: a throwaway test key).
    cert, key = dev_certificate(ROOT / "certs")
    key.chmod(0o644)
    env = dict(
        os.environ,
        VIGIL_GATEWAY_PORT=str(port),
        VIGIL_TRANSACTIONS=TRANSACTIONS,
        VIGIL_INTERNAL_TOKEN=secrets.token_hex(16),
        GATEWAY_AUTH_SECRET=secrets.token_hex(32),
    )
    stack = Stack(
        compose_cmd,
        f"vigiltest{os.getpid()}",
        files,
        env,
        f"https://127.0.0.1:{port}",
        {},
        str(cert),
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    try:
        started = time.monotonic()
        stack.compose("build", timeout=1800)
        stack.timings["build"] = time.monotonic() - started
        started = time.monotonic()
        stack.compose("up", "-d", timeout=900)
        stack.wait_until("the gateway ready on its published port", stack.ready)
        stack.timings["up until ready"] = time.monotonic() - started
        stack.api_key = stack.make_key()
        yield stack
    finally:
        started = time.monotonic()
        stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        stack.timings["down -v"] = time.monotonic() - started
        if reporter and capture:
            with capture.global_and_fixture_disabled():
                reporter.write_line(
                    f"\ndocker stack ({shlex.join(compose_cmd)}): "
                    + ", ".join(f"{k} {v:.0f} s" for k, v in stack.timings.items())
                )


@pytest.fixture(scope="module")
def samples(stack: Stack) -> dict[str, dict[str, Any]]:
    """The gateway's own samples (``GET /ui/samples``, what ``vigil features`` wrote from this
    world), each kind's transaction by its name."""
    resp = httpx.get(f"{stack.url}/ui/samples", timeout=10, verify=stack.cert)
    assert resp.status_code == 200, resp.text
    found = {s["name"]: s for s in resp.json()["samples"]}
    assert (
        not found["regular purchase"]["expect_fraud"] and found["account takeover"]["expect_fraud"]
    )
    return {name: s["transaction"] for name, s in found.items()}


def test_the_published_gateway_scores_legit_and_fraudulent_samples(stack: Stack, samples):
    legit = stack.score(samples["regular purchase"])
    assert legit["label"] == "not_fraud" and legit["degraded"] is False, legit
    assert legit["model"]["name"] == "fraud_detector"
    fraud = stack.score(samples["account takeover"])
    assert fraud["label"] in FLAGGED and fraud["degraded"] is False, fraud
    # No history is no failure of Vigil's: uncertain, not degraded (as in tests/test_e2e.py).
    new = stack.score(samples["brand-new card"])
    assert new["label"] == "uncertain" and new["degraded"] is False, new
    assert [r["code"] for r in new["reasons"]] == ["FEATURES_MISSING"]


def test_only_the_gateway_is_published(stack: Stack):
    for service in ("redis", "encoder", "predictor"):
        info = stack.container(service)
        assert not info["HostConfig"]["PortBindings"], (
            f"{service} publishes {info['HostConfig']['PortBindings']}"
        )
        assert all(not bound for bound in (info["NetworkSettings"]["Ports"] or {}).values()), (
            service
        )
    published = stack.container("gateway")["NetworkSettings"]["Ports"]["8000/tcp"]
    assert stack.url.endswith(f":{published[0]['HostPort']}")


def test_a_stopped_predictor_gives_uncertain_then_recovers(stack: Stack, samples):
    legit = samples["regular purchase"]
    stack.compose("stop", "predictor")
    try:
        answer = stack.score(legit)
        assert answer["label"] == "uncertain" and answer["score"] is None, answer
        assert answer["degraded"] is True, answer
    finally:
        stack.compose("start", "predictor")
    recovered = stack.wait_until(
        "a scored (not degraded) answer after the predictor's start",
        lambda: (a := stack.score(legit))["degraded"] is False and a,
    )
    assert recovered["label"] == "not_fraud", recovered


def test_a_redis_restart_keeps_features_and_decisions(stack: Stack, samples):
    legit, fraud = samples["regular purchase"], samples["account takeover"]
    kept_id = f"docker-kept-{uuid.uuid4().hex[:8]}"
    # The streamer stays stopped here: each decision below would otherwise move the card's and
    # the merchant's online rows (the sample's instant is the same every time), and the check
    # that the same transaction scored afresh after the restart sees the same features would
    # race it. Started again at the end.
    stack.compose("stop", "streamer")
    try:
        _restart_keeps_features_and_decisions(stack, legit, fraud, kept_id)
    finally:
        stack.compose("start", "streamer")


def _restart_keeps_features_and_decisions(stack: Stack, legit, fraud, kept_id: str) -> None:
    first = stack.score(legit, kept_id)
    assert first["cached"] is False and first["degraded"] is False, first
    # The decision is stored after the answer: wait until the re-send finds it.
    stack.wait_until("the decision stored", lambda: stack.score(legit, kept_id)["cached"])
    features = stack.persistent_keys()
    assert features > 0

    stack.compose("restart", "redis")
    stack.wait_until(
        "Redis answering after its restart",
        lambda: stack.compose("exec", "-T", "redis", "redis-cli", "ping").strip() == "PONG",
    )
    # Volatile keys (a reservation's, say) may expire meanwhile; none without an expiry is lost.
    assert stack.persistent_keys() == features
    # The gateway's and the encoder's connections to the old process are gone: the first tries
    # after the restart may be degraded; the stack recovers on its own.
    stack.wait_until("the gateway ready after the Redis restart", stack.ready, timeout=60)
    stack.wait_until(
        "a scored answer after the Redis restart",
        lambda: stack.score(legit)["degraded"] is False,
        timeout=60,
    )

    again = stack.score(legit, kept_id)
    assert again["cached"] is True, again
    assert (again["label"], again["score"]) == (first["label"], first["score"])
    # The same transaction scored afresh: the same features, so the same score.
    rescored = stack.score(legit)
    assert rescored["cached"] is False and rescored["score"] == pytest.approx(
        first["score"], abs=1e-6
    )
    flagged = stack.score(fraud)
    assert flagged["label"] in FLAGGED and flagged["degraded"] is False, flagged
