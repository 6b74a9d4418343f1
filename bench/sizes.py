"""Image size estimates: what each service's Dockerfile installs, measured on disk.

Each service's dependencies (exactly the ``pip install`` of its Dockerfile, with the project's
constraints) are installed with ``pip install --target`` into ``.bench/sizes/<name>``, and the
folder is measured. The estimate adds the ``python:3.11-slim`` base, taken as 130 MB (an
assumption: no image registry is reachable here to pull it). The installs are kept and reused
while the project's requirements do not change.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE_MB = 130.0
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


_LOCAL = re.compile(r"(?:\.?/[\w.]+/)*?((?:libs|services)/[\w\-]+)")


def dockerfile_packages(service: str) -> list[str]:
    """The project folders a service's Dockerfile ``pip install``s (``libs/...``, ``services/...``),
    read from the Dockerfile itself so that the estimate follows it."""
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    text = text.replace("\\\n", " ")
    found: list[str] = []
    for line in text.splitlines():
        if "pip" in line and "install" in line:
            for match in _LOCAL.finditer(line):
                if match.group(1) not in found and (ROOT / match.group(1)).is_dir():
                    found.append(match.group(1))
    if f"services/{service}" not in found:
        raise RuntimeError(f"cannot read what services/{service}/Dockerfile installs")
    return [str(ROOT / path) for path in found]


def _targets() -> dict[str, tuple[list[str], bool]]:
    """name -> (pip arguments, whether the project's constraints apply)."""
    contracts = str(ROOT / "libs" / "contracts")
    return {
        **{svc: (dockerfile_packages(svc), True) for svc in ("gateway", "encoder", "predictor")},
        # A feature server image needs Feast with its Redis extra and the on-demand view's code.
        "feast serve": (["feast[redis]==0.67.0", contracts], True),
        # The peer as its users install it, with the CPU-only xgboost wheel (see bench.peers).
        "mlserver": (["mlserver==1.7.1", "xgboost-cpu==3.2.0", "scikit-learn==1.9.1"], False),
    }


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            fp = os.path.join(dirpath, name)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def measure(bench_dir: Path, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    root = bench_dir / "sizes"
    stamp_src = (
        b"".join(
            p.read_bytes()
            for p in [
                CONSTRAINTS,
                *sorted((ROOT / "services").glob("*/pyproject.toml")),
                *sorted((ROOT / "services").glob("*/Dockerfile")),
                *sorted((ROOT / "libs").glob("*/pyproject.toml")),
            ]
        )
        + repr(_targets()).encode()
    )
    want = hashlib.sha256(stamp_src).hexdigest()[:16]
    out: dict[str, dict[str, float]] = {}
    for name, (packages, constrained) in _targets().items():
        target = root / name.replace(" ", "-")
        stamp = target.with_suffix(".stamp")
        if not (stamp.exists() and stamp.read_text() == want and target.is_dir()):
            log(f"image size: installing {name}'s dependencies into {target} (cached afterwards)")
            shutil.rmtree(target, ignore_errors=True)
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                str(target),
                *packages,
            ]
            if constrained:
                cmd[5:5] = ["-c", str(CONSTRAINTS)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                log(f"image size of {name}: pip failed: {proc.stderr.strip()[-300:]}")
                continue
            if name == "mlserver":
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--no-deps",
                        "--disable-pip-version-check",
                        "--target",
                        str(target),
                        "mlserver-xgboost==1.7.1",
                    ],
                    check=True,
                    capture_output=True,
                )
            stamp.write_text(want)
        size = _du(target) / 1e6
        out[name] = {"site_packages_mb": size, "image_mb": size + BASE_IMAGE_MB}
    return out


def image_site_packages(bench_dir: Path, service: str) -> Path | None:
    """The folder holding what ``service``'s Dockerfile installs (after :func:`measure`), or None."""
    target = bench_dir / "sizes" / service
    return target if target.with_suffix(".stamp").exists() and target.is_dir() else None
