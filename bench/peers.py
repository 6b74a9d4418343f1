"""The peers and the floors, and the benchmark's own virtualenv for them.

- ``feast serve`` (the project's Feast 0.67, from the project's venv) over the same registry and
  Redis, with ``--max-requests 0`` so gunicorn does not restart its workers every 1000 requests,
  once per worker count measured (``-w 1`` and ``-w 2`` by default: the targets are judged
  against the better of them);
- MLServer + mlserver-xgboost serving the same ``model.ubj`` over V2 REST, installed in
  ``.bench/venv-peers`` so that their pins never touch the project's;
- the HTTP floors of ``bench.floor_app`` under the project's uvicorn.

The bench venv also holds matplotlib (the plot) and py-spy (profiles).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.procs import Managed
from vigil.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PY = Path(sys.executable)
XGBOOST_VERSION = "3.2.0"  # the project's xgboost-cpu: the same library scores in both servers
# scikit-learn: mlserver-xgboost loads boosters through XGBoost's sklearn API.
PEER_PACKAGES = [
    "mlserver==1.7.1",
    f"xgboost-cpu=={XGBOOST_VERSION}",
    "scikit-learn==1.9.1",
    "matplotlib==3.11.2",
    "py-spy==0.4.3",
]
# mlserver-xgboost asks for the `xgboost` wheel (with a 470 MB NCCL); the `xgboost-cpu` wheel
# above provides the same module, so the runtime is installed without its dependencies.
NO_DEPS_PACKAGES = ["mlserver-xgboost==1.7.1"]


def peer_venv(bench_dir: Path, log: Callable[[str], None]) -> Path:
    """``.bench/venv-peers`` with the peers installed (once; a stamp says what is in it)."""
    venv = bench_dir / "venv-peers"
    py = venv / "bin" / "python"
    stamp = venv / ".bench-installed"
    want = hashlib.sha256(json.dumps([PEER_PACKAGES, NO_DEPS_PACKAGES]).encode()).hexdigest()[:16]
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return venv
    log(f"installing the peers into {venv} (once; about a minute)")
    base = getattr(sys, "_base_executable", sys.executable)
    if not py.exists():
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    subprocess.run([*pip, "--no-deps", *NO_DEPS_PACKAGES], check=True)
    stamp.write_text(want)
    return venv


def feast_process_name(workers: int) -> str:
    """The name under which a ``feast serve -w N`` process tree is watched and reported."""
    return f"feast serve -w {workers}"


def feast_serve(repo: Path, config: Path, work: Path, workers: int = 1) -> Managed:
    """``feast serve`` with ``workers`` gunicorn workers (uvicorn workers forked at start-up;
    with ``--max-requests 0`` none is ever replaced, so a tree found once stays complete)."""
    port = free_port()
    feast = PROJECT_PY.with_name("feast")
    # gunicorn keeps a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl or $HOME/.gunicorn/: one
    # directory per instance, in the workspace, so that two instances never share a socket.
    home = work / f"home-feast-w{workers}"
    home.mkdir(parents=True, exist_ok=True)
    return Managed(
        name=feast_process_name(workers),
        cmd=[
            str(feast),
            "-c",
            str(repo),
            "-f",
            str(config),
            "serve",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--max-requests",
            "0",
            "--no-access-log",
            "-w",
            str(workers),
            # Registry refresh every hour instead of every minute: no refresh lands inside a
            # measurement (the first call after one is ~6 ms), which favours feast serve.
            "-r",
            "3600",
        ],
        ready_url=f"http://127.0.0.1:{port}/health",
        log_path=work / "logs" / f"feast-serve-w{workers}.log",
        env={"HOME": str(home), "XDG_RUNTIME_DIR": str(home)},
        cwd=repo,
    )


def mlserver(
    venv: Path, booster: Path, work: Path, parallel_workers: int, one_thread: bool = True
) -> Managed:
    """MLServer with one model, ``fraud_detector``, served by mlserver-xgboost from ``booster``.

    ``one_thread``: ``OMP_NUM_THREADS=1``, one XGBoost thread per prediction like the predictor
    (mlserver-xgboost builds ``XGBRegressor(n_jobs=None)``, an OpenMP team of every core, whose
    spinning threads make it fall seconds behind at 100 req/s on 2 cores).
    """
    root = work / "mlserver"
    model_dir = root / "fraud_detector"
    model_dir.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (root / "settings.json").write_text(
        json.dumps(
            {
                "debug": False,  # no access log, like the Vigil services' --no-access-log
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": parallel_workers,
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "fraud_detector",
                "implementation": "mlserver_xgboost.XGBoostModel",
                "parameters": {"uri": str(booster.resolve()), "version": "1"},
            }
        )
    )
    return Managed(
        name="mlserver",
        cmd=[str(venv / "bin" / "mlserver"), "start", str(root)],
        ready_url=f"http://127.0.0.1:{http_port}/v2/models/fraud_detector/ready",
        log_path=work / "logs" / "mlserver.log",
        env={"OMP_NUM_THREADS": "1"} if one_thread else {},
        cwd=root,
    )


def floor(work: Path, factory: str, name: str, env: dict[str, str] | None = None) -> Managed:
    port = free_port()
    return Managed(
        name=name,
        cmd=[
            str(PROJECT_PY),
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        ready_url=f"http://127.0.0.1:{port}/",
        log_path=work / "logs" / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}.log",
        env=env or {},
        cwd=ROOT,
    )
