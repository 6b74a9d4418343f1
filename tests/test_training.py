"""Training on real Feast point-in-time features: determinism, artifact integrity, quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TEST_SEED, TEST_TRAIN_KW
from vigil import feast_repo
from vigil.training import BusinessTargets, TrainConfig, choose_thresholds, train
from vigil_contracts.artifact import ArtifactError, sha256_file, verify_artifact
from vigil_contracts.feature_contract import feature_contract_hash


def test_same_seed_gives_the_same_model(feature_env, trained_model, tmp_path):
    again = train(feature_env.raw_path, feature_env.repo, tmp_path,
                  TrainConfig(seed=TEST_SEED, **TEST_TRAIN_KW))
    assert sha256_file(again / "model.ubj") == sha256_file(trained_model / "model.ubj")
    other = train(feature_env.raw_path, feature_env.repo, tmp_path,
                  TrainConfig(seed=TEST_SEED + 1, **TEST_TRAIN_KW))
    assert sha256_file(other / "model.ubj") != sha256_file(trained_model / "model.ubj")
    assert other.name == "2"  # versions count up and never overwrite


def test_artifact_verifies_and_records_the_feature_service(feature_env, trained_model):
    meta = verify_artifact(trained_model)
    spec = feast_repo.load_serving_spec(feature_env.repo).feature_services["fraud_model_v1"]
    assert meta["feature_service"] == "fraud_model_v1"
    assert meta["feature_names"] == spec.feature_names
    assert meta["feature_contract"] == spec.feature_contract == feature_contract_hash(spec.feature_names)
    assert set(meta["files"]) == {"model.ubj", "MODEL_CARD.md"}
    assert meta["training"]["seed"] == TEST_SEED
    assert set(meta["reference_stats"]) == set(spec.feature_names)
    card = (trained_model / "MODEL_CARD.md").read_text()
    for heading in ("Intended use", "Out of scope", "Data", "Metrics by slice", "Limitations"):
        assert f"## {heading}" in card
    assert "channel=ecom" in card and "amount=" in card


def test_a_tampered_artifact_is_refused(trained_model, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(trained_model, copy)
    with (copy / "model.ubj").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="checksum"):
        verify_artifact(copy)
    shutil.copy(trained_model / "model.ubj", copy / "model.ubj")
    meta = json.loads((copy / "metadata.json").read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="feature_contract"):
        verify_artifact(copy)


def test_model_ranks_fraud_above_the_rules_baseline_on_the_test_period(trained_model):
    """The test world's test period holds ~7 frauds in ~1,600 transactions: too few to compare
    two PR-AUCs (one fraud ranked below one legit at the top moves either by 0.1 or more). The
    world follows the calendar (it ends at today's midnight, its weekday pattern starts on the
    weekday it starts on): over the seven alignments the model's PR-AUC was 0.22-0.43 and the
    rules' 0.20-0.33, the model's lower on two of them. So the model is held to what this
    sample can show: it orders the fraud-legit pairs (~11,000) better than the rules (ROC-AUC
    0.976-0.988 against 0.710-0.712 over the seven), and its precision-recall curve stands far
    above chance (the prevalence)."""
    meta = json.loads((trained_model / "metadata.json").read_text())
    test, base = meta["metrics"]["test"], meta["metrics"]["baseline_rules_test"]
    assert test["fraud"] > 0
    assert test["roc_auc"] > base["roc_auc"] + 0.1
    assert test["pr_auc"] > 20 * test["fraud"] / test["n"]
    th = meta["thresholds"]
    assert 0 < th["suspicious"] <= th["highly_suspicious"] <= 1


def test_thresholds_meet_the_business_targets_on_validation():
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.02).astype(int)
    score = np.clip(rng.normal(0.2 + 0.6 * y, 0.15), 0, 1)
    targets = BusinessTargets(highly_suspicious_precision=0.9, suspicious_recall=0.8, max_review_rate=0.5)
    th = choose_thresholds(y, score, targets)
    high = score >= th["highly_suspicious"]
    assert y[high].mean() >= 0.9
    assert y[score >= th["suspicious"]].sum() / y.sum() >= 0.8
    assert th["suspicious"] <= th["highly_suspicious"]
