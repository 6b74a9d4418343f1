"""One model version: its verified artifact and the XGBoost booster that scores with it.

``load()`` says whether the version may serve; ``predict()`` takes an already-decoded FP32
matrix and returns named output arrays. Protocol concerns (tensor names, JSON, binary) live in
``protocol.py`` and ``dataplane.py``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import xgboost as xgb

from vigil_contracts.artifact import ArtifactError, verify_artifact
from vigil_contracts.segments import unservable
from vigil_predictor.scoring_call import predict_dense

logger = logging.getLogger(__name__)

SCORE = "score"
CONTRIBUTIONS = "contributions"
# Objectives whose prediction is a probability of the positive class, one per row.
PROBABILITY_OBJECTIVES = frozenset({"binary:logistic", "reg:logistic"})


@dataclass(frozen=True)
class ModelInfo:
    """What the artifact's metadata says about a version, checked at load time."""

    name: str
    version: str
    feature_service: str
    feature_names: list[str]
    feature_contract: str
    thresholds: dict[str, float]
    segment_thresholds: dict[str, dict[str, dict[str, float]]]
    """Per segment column (the channel), the pairs training chose for the segments whose
    validation evidence supported their own; the others are labelled by ``thresholds``. Empty
    for an artifact from before them."""
    serving_policy: dict[str, Any]
    metrics: dict[str, Any]
    booster_file: str
    training_range: dict[str, list[float]]
    """Per feature, ``[min, max]`` of its values in the training set (from ``reference_stats``):
    the gateway's safeguards flag values the model never saw."""

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], *, name: str, version: str) -> ModelInfo:
        """Validate the fields serving depends on; raise ArtifactError naming the first bad one."""
        if meta.get("name") != name:
            raise ArtifactError(
                f"metadata name {meta.get('name')!r} is not the directory's {name!r}"
            )
        if str(meta.get("version")) != version:
            raise ArtifactError(
                f"metadata version {meta.get('version')!r} is not the directory's {version!r}"
            )
        names = meta.get("feature_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ArtifactError("feature_names must be a non-empty list of strings")
        if len(set(names)) != len(names):
            raise ArtifactError("feature_names has duplicates")
        feature_service = meta.get("feature_service")
        if not isinstance(feature_service, str) or not feature_service:
            raise ArtifactError("feature_service must be a non-empty string")
        thresholds = _thresholds(meta.get("thresholds"))
        segment_thresholds = _segment_thresholds(meta.get("segment_thresholds"))
        booster_file = meta.get("booster_file")
        if not isinstance(booster_file, str) or Path(booster_file).name != booster_file:
            raise ArtifactError(f"booster_file {booster_file!r} is not a plain file name")
        # verify_artifact only checks the files listed; a booster outside the list is unverified.
        if booster_file not in meta.get("files", {}):
            raise ArtifactError(f"booster_file {booster_file!r} has no checksum in 'files'")
        serving_policy = meta.get("serving_policy") or {}
        metrics = meta.get("metrics") or {}
        if not isinstance(serving_policy, dict) or not isinstance(metrics, dict):
            raise ArtifactError("serving_policy and metrics must be objects")
        return cls(
            name=name,
            version=version,
            feature_service=feature_service,
            feature_names=list(names),
            feature_contract=meta["feature_contract"],
            thresholds=thresholds,
            segment_thresholds=segment_thresholds,
            serving_policy=serving_policy,
            metrics=metrics,
            booster_file=booster_file,
            training_range=_training_range(meta.get("reference_stats"), names),
        )


def _training_range(raw: Any, names: list[str]) -> dict[str, list[float]]:
    """``[min, max]`` per feature that has both as finite numbers; an older artifact without
    reference statistics has none (its safeguards then check no range)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ArtifactError("reference_stats must be an object")
    out: dict[str, list[float]] = {}
    for name in names:
        entry = raw.get(name)
        if not isinstance(entry, dict):
            continue
        low, high = entry.get("min"), entry.get("max")
        if _finite(low) and _finite(high):
            out[name] = [float(low), float(high)]
    return out


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _thresholds(raw: Any, where: str = "thresholds") -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where} must be an object")
    out: dict[str, float] = {}
    for key in ("suspicious", "highly_suspicious"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ArtifactError(f"{where}.{key} must be a number in [0, 1]")
        out[key] = float(value)
    if out["suspicious"] > out["highly_suspicious"]:
        raise ArtifactError(f"{where}.suspicious is above {where}.highly_suspicious")
    return out


def _segment_thresholds(raw: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Each segment's pair checked as ``thresholds`` is, and the segments servable (see
    ``vigil_contracts.segments``); an artifact from before them has none."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ArtifactError("segment_thresholds must map a column to an object of pairs")
    out = {
        str(column): {
            str(value): _thresholds(pair, f"segment_thresholds.{column}.{value}")
            for value, pair in pairs.items()
        }
        for column, pairs in raw.items()
    }
    problem = unservable(out)
    if problem is not None:
        raise ArtifactError(problem)
    return out


class XGBoostRuntime:
    """A model version that is either ready to predict or remembers why it is not."""

    def __init__(self, model_dir: Path, *, name: str, version: str, nthread: int = 1) -> None:
        self.model_dir = model_dir
        self.name = name
        self.version = version
        self.nthread = nthread
        self.info: ModelInfo | None = None
        self.error: str | None = None
        self._booster: xgb.Booster | None = None

    @property
    def ready(self) -> bool:
        return self._booster is not None

    def load(self) -> bool:
        """Verify the artifact and load the booster; on any failure keep the reason and say no."""
        try:
            meta = verify_artifact(self.model_dir)
            info = ModelInfo.from_metadata(meta, name=self.name, version=self.version)
            booster = xgb.Booster()
            booster.load_model(str(self.model_dir / info.booster_file))
            booster.set_param({"nthread": self.nthread})
            if booster.num_features() != info.num_features:
                raise ArtifactError(
                    f"booster has {booster.num_features()} features, "
                    f"metadata names {info.num_features}"
                )
            if (
                booster.feature_names is not None
                and list(booster.feature_names) != info.feature_names
            ):
                raise ArtifactError(
                    "the booster's feature names differ from metadata feature_names"
                )
            objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
            if objective not in PROBABILITY_OBJECTIVES:
                raise ArtifactError(f"objective {objective!r} does not predict a probability")
            # One all-missing row warms the booster up and proves one score per row comes out.
            probe = predict_dense(booster, np.full((1, info.num_features), np.nan, np.float32))
            if probe.shape != (1,):
                raise ArtifactError(f"booster scores a row with shape {probe.shape}, not (1,)")
        except Exception as exc:  # noqa: BLE001 - a bad version is refused, never fatal to the rest
            self.error = f"{type(exc).__name__}: {exc}"
            self._booster = None
            logger.error(
                "model version refused",
                extra={"model": self.name, "version": self.version, "reason": self.error},
            )
            return False
        self.info, self._booster, self.error = info, booster, None
        logger.info(
            "model version loaded",
            extra={
                "model": self.name,
                "version": self.version,
                "features": info.num_features,
                "feature_contract": info.feature_contract,
            },
        )
        return True

    def unload(self) -> None:
        self._booster = None

    def predict(
        self,
        features: np.ndarray,
        *,
        contributions: bool = False,
        contributions_min_score: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Score an ``[N, F]`` float32 matrix (NaN = missing); optionally explain it.

        Scores are XGBoost's own probabilities for exactly this matrix; contributions are its
        SHAP values, ``[N, F + 1]`` with the bias last, summing to the margin. With
        ``contributions_min_score`` only rows scoring at or above it are explained (SHAP is most
        of the cost of a request); the other rows' contributions are NaN.
        """
        booster = self._booster
        if booster is None:
            raise RuntimeError(f"{self.name}/{self.version} is not loaded")
        score = predict_dense(booster, features)
        out = {SCORE: score}
        if contributions:
            explained = None
            if contributions_min_score is not None:
                # Compared in float64, as a client compares the float32 score it receives.
                explained = np.flatnonzero(score.astype(np.float64) >= contributions_min_score)
            if explained is None or explained.size == score.size:
                out[CONTRIBUTIONS] = self._contributions(booster, features)
            else:
                values = np.full((score.size, features.shape[1] + 1), np.nan, np.float32)
                if explained.size:
                    values[explained] = self._contributions(booster, features[explained])
                out[CONTRIBUTIONS] = values
        return out

    def _contributions(self, booster: xgb.Booster, features: np.ndarray) -> np.ndarray:
        # Unnamed, with feature validation off: naming a DMatrix costs more than scoring a row,
        # and it would check nothing the score's inplace_predict of the same array does not rely
        # on already (the width, and the order the request's feature_contract vouches for).
        # SHAP values are per row, so a sub-matrix explains its rows exactly as the whole would.
        matrix = xgb.DMatrix(features, missing=np.nan, nthread=self.nthread)
        return np.asarray(
            booster.predict(matrix, pred_contribs=True, validate_features=False), dtype=np.float32
        )
