"""Batch scoring: a parquet file of transactions -> scores and labels, through the same features.

The batch serving pattern: the chosen model version's feature service is read point-in-time with
Feast's ``get_historical_features`` (each transaction sees the features as of its own time), the
booster scores the vectors, and the model's thresholds label them (the pair of the transaction's
segment where the model has one, else the global pair: ``vigil_contracts.segments``, the rule
the gateway applies). It is also the reference the online path is checked against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb

from vigil import feast_repo
from vigil.dataset import DatasetError, entity_frame, historical_matrix, to_float32
from vigil_contracts.artifact import BOOSTER_FILE, ArtifactError, list_versions, verify_artifact
from vigil_contracts.segments import Labelling


class BatchError(Exception):
    """The input, the model version or the feature registry do not allow scoring."""


def resolve_version(models_dir: Path, name: str, version: str | None) -> Path:
    versions = list_versions(models_dir, name)
    if not versions:
        raise BatchError(f"no versions of model {name!r} under {models_dir}")
    chosen = version or versions[-1]
    if chosen not in versions:
        raise BatchError(f"model {name!r} has no version {chosen!r} (have: {', '.join(versions)})")
    return models_dir / name / chosen


def load_model(model_dir: Path) -> tuple[xgb.Booster, dict]:
    try:
        meta = verify_artifact(model_dir)
    except ArtifactError as exc:
        raise BatchError(str(exc)) from exc
    booster = xgb.Booster()
    booster.load_model(str(model_dir / meta.get("booster_file", BOOSTER_FILE)))
    return booster, meta


def read_transactions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise BatchError(f"{path}: no such file")
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BatchError(f"{path}: not a readable parquet file ({exc})") from exc


def score_frame(
    transactions: pd.DataFrame, repo: Path, model_dir: Path, with_features: bool = False
) -> pd.DataFrame:
    booster, meta = load_model(model_dir)
    spec = feast_repo.load_serving_spec(repo).feature_services.get(meta["feature_service"])
    if spec is None:
        raise BatchError(f"feature service {meta['feature_service']!r} is not in the registry")
    if spec.feature_contract != meta["feature_contract"]:
        raise BatchError(
            f"feature service {spec.name!r} changed since model {meta['name']} v{meta['version']} "
            "was trained (feature contract differs): retrain or re-apply the old definitions"
        )
    try:
        entities = entity_frame(transactions)
    except DatasetError as exc:
        raise BatchError(str(exc)) from exc
    matrix = historical_matrix(feast_repo.open_store(repo), spec, entities)
    scores = booster.inplace_predict(to_float32(matrix), missing=np.nan)
    # A model from before segment thresholds has none: its global pair labels everything.
    try:
        labelling = Labelling(meta["thresholds"], meta.get("segment_thresholds") or {})
    except ValueError as exc:
        raise BatchError(f"model {meta['name']} v{meta['version']}: {exc}") from exc
    segments = list(labelling.segment_thresholds)
    fields = (
        transactions.reset_index(drop=True)[segments].to_dict("records")
        if segments
        else [{}] * len(scores)
    )
    out = pd.DataFrame(
        {
            "transaction_id": entities["transaction_id"].to_numpy(),
            "score": scores.astype("float32"),
            "label": [labelling.label(float(s), f) for s, f in zip(scores, fields, strict=True)],
            "model_name": meta["name"],
            "model_version": meta["version"],
            "feature_contract": meta["feature_contract"],
        }
    )
    if with_features:
        out = pd.concat([out, matrix.reset_index(drop=True)], axis=1)
    return out


def score_file(
    input_path: Path,
    output_path: Path,
    repo: Path,
    models_dir: Path,
    model_name: str,
    version: str | None = None,
    with_features: bool = False,
) -> pd.DataFrame:
    model_dir = resolve_version(models_dir, model_name, version)
    scored = score_frame(read_transactions(input_path), repo, model_dir, with_features)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    scored.to_parquet(output_path, index=False)
    return scored
