"""The benchmark's memory watcher: it must see a worker's peak without disturbing the run.

It samples while the load generator measures latency, so a sample must stay cheap: the process
trees are found once, before the run, never while it goes on (finding one reads every process on
the machine).
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from bench import procs
from bench.run import Watcher

#: A parent that starts a worker, as gunicorn and MLServer do; the worker takes 64 MB after a
#: moment, holds it, then exits.
PARENT = (
    "import subprocess, sys\n"
    "subprocess.run([sys.executable, '-c', "
    "'import time; time.sleep(0.6); b = bytes(64 << 20) + bytes(1); time.sleep(0.8)'])\n"
)


def _wait_for_child(parent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if psutil.Process(parent.pid).children():
            return
        time.sleep(0.02)
    pytest.fail("the parent never started its worker")


def test_watcher_records_a_worker_s_peak_without_looking_for_processes_while_sampling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        _wait_for_child(parent)
        idle = procs.rss_bytes(parent.pid)
        with Watcher({"parent": parent.pid}) as watcher:
            searches = []
            monkeypatch.setattr(procs, "tree", lambda pid: searches.append(pid) or [])
            time.sleep(1.2)
        assert searches == []
        assert watcher.peak["parent"] - idle >= 60 << 20
    finally:
        parent.kill()
        parent.wait()
