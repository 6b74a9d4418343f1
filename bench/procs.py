"""Processes the benchmark starts (peers, floors, extra service instances): started in their own
session, timed from spawn to ready, watched with psutil, and stopped by their own process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil


class NotReady(Exception):
    """A process exited or did not answer its ready URL in time (the log tail is the message)."""


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Managed:
    name: str
    cmd: list[str]
    ready_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    cold_start_s: float | None = None

    def start(self, timeout: float = 90.0, poll: float = 0.01) -> Managed:
        """Spawn and wait until ``ready_url`` answers 200; ``cold_start_s`` is spawn -> ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            started = time.perf_counter()
            self.process = subprocess.Popen(
                self.cmd,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise NotReady(
                        f"{self.name} exited with {self.process.returncode}:\n"
                        f"{log_tail(self.log_path)}"
                    )
                try:
                    if client.get(self.ready_url).status_code == 200:
                        self.cold_start_s = time.perf_counter() - started
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(poll)
        self.stop()
        raise NotReady(f"{self.name} not ready after {timeout:.0f}s:\n{log_tail(self.log_path)}")

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.ready_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (gunicorn and MLServer fork workers)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_bytes(pid: int) -> int:
    return rss_of(tree(pid))


def rss_of(processes: list[psutil.Process]) -> int:
    """The summed RSS of processes already found (one small ``/proc`` read each: finding a
    tree reads every process's ``stat`` on the machine, ~1 ms of CPU per tree)."""
    total = 0
    for proc in processes:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in tree(pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total
