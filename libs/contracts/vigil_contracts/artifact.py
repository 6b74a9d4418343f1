"""The model artifact layout: ``models/<name>/<version>/``, shared by training and the predictor.

A version holds the booster in XGBoost's own format (never pickle), ``metadata.json`` (feature
order and its contract hash, thresholds, metrics, the sha256 of every other file) and
``MODEL_CARD.md``. Reading and verifying live here so that the writer (training) and the reader
(the predictor) agree without importing each other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vigil_contracts.feature_contract import feature_contract_hash

BOOSTER_FILE = "model.ubj"
METADATA_FILE = "metadata.json"
MODEL_CARD_FILE = "MODEL_CARD.md"


class ArtifactError(Exception):
    """An artifact is missing, corrupt or inconsistent."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(model_dir: Path) -> dict[str, Any]:
    path = model_dir / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(f"{model_dir}: no {METADATA_FILE}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc


def verify_artifact(model_dir: Path) -> dict[str, Any]:
    """Check checksums and the contract hash; return the metadata or raise ArtifactError."""
    meta = read_metadata(model_dir)
    for name, expected in meta.get("files", {}).items():
        path = model_dir / name
        if not path.is_file():
            raise ArtifactError(f"{model_dir}: {name} is missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{model_dir}: checksum mismatch for {name}")
    if feature_contract_hash(meta["feature_names"]) != meta.get("feature_contract"):
        raise ArtifactError(f"{model_dir}: feature_contract does not match feature_names")
    return meta


def list_versions(models_dir: Path, name: str) -> list[str]:
    """Versions of a model, oldest first (numeric versions sort numerically)."""
    root = models_dir / name
    if not root.is_dir():
        return []
    versions = [p.name for p in root.iterdir() if (p / METADATA_FILE).is_file()]
    return sorted(versions, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))
