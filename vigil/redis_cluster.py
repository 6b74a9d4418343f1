"""A private Redis Cluster on loopback ports: three masters with a replica each, for tests and
for trying Vigil against a cluster locally (``redis-server --cluster-enabled yes`` per node,
``redis-cli --cluster create``). Persistence is off, as for :class:`vigil.redis_server.RedisServer`;
the cluster's node files live in a folder of the caller's.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from vigil.redis_server import RedisUnavailable, _ping, find_redis_server

BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free loopback port whose bus port (+10000) is free too (so below 55536)."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 65_535 - BUS_OFFSET)
        if not {port, port + BUS_OFFSET} & taken and _free(port) and _free(port + BUS_OFFSET):
            return port


class LocalRedisCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(
        self, folder: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000
    ):
        self.folder = folder
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        for _ in range(masters * (1 + replicas)):
            self.ports.append(
                free_cluster_port({q + d for q in self.ports for d in (0, BUS_OFFSET)})
            )
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.binary = find_redis_server()
        self.cli = shutil.which("redis-cli") or str(Path(self.binary).with_name("redis-cli"))

    @property
    def url(self) -> str:
        """The URL Vigil's services take (``ENCODER_REDIS_URL``, ``GATEWAY_REDIS_URL``)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    @property
    def connection_string(self) -> str:
        """Feast's form (``VIGIL_REDIS_CONNECTION_STRING`` with ``VIGIL_REDIS_TYPE=redis_cluster``)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports[: self.masters])

    def start_node(self, port: int, timeout: float = 10.0) -> None:
        node_dir = self.folder / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        with open(node_dir / "redis.log", "ab") as log:  # the child keeps its own descriptor
            self.processes[port] = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                    "--dir",
                    str(node_dir),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not _ping(port):
            if self.processes[port].poll() is not None or time.monotonic() > deadline:
                raise RedisUnavailable(
                    f"cluster node {port} did not start (log: {node_dir}/redis.log)"
                )
            time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> Self:
        try:
            for port in self.ports:
                self.start_node(port)
            proc = subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if proc.returncode != 0:
                raise RedisUnavailable(
                    f"redis-cli --cluster create failed:\n{proc.stdout}\n{proc.stderr}"
                )
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def command(self, port: int, *args: str) -> str:
        proc = subprocess.run(
            [self.cli, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return proc.stdout

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok, with ``masters`` masters serving."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [p for p, proc in self.processes.items() if proc.poll() is None]
            if (
                all("cluster_state:ok" in self.command(p, "cluster", "info") for p in live)
                and len(self.master_ports()) == self.masters
            ):
                return
            time.sleep(0.1)
        raise RedisUnavailable(f"the cluster was not healthy after {timeout}s")

    def master_ports(self) -> list[int]:
        """Ports of the live masters, as the first live node sees them."""
        live = [p for p, proc in self.processes.items() if proc.poll() is None]
        out = self.command(live[0], "cluster", "nodes")
        ports = []
        for line in out.splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and fields[7] == "connected":
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                if port in live:
                    ports.append(port)
        return sorted(ports)

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no goodbye to the others)."""
        proc = self.processes[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
