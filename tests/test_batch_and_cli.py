"""Batch scoring through Feast's point-in-time features, and the CLI's clear failures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from vigil.cli import main
from vigil_contracts.thresholds import label_for_score


@pytest.fixture(scope="module")
def sample_path(feature_env, tmp_path_factory):
    raw = pd.read_parquet(feature_env.raw_path)
    sample = raw.tail(300)
    path = tmp_path_factory.mktemp("batch") / "sample.parquet"
    sample.to_parquet(path)
    return path


def _cli(feature_env, *args: str) -> int:
    return main(
        [
            "--quiet",
            "--repo",
            str(feature_env.repo),
            "--models-dir",
            str(feature_env.models_dir),
            *args,
        ]
    )


def test_batch_scores_equal_scoring_the_same_vectors_in_memory(
    feature_env, trained_model, sample_path, tmp_path
):
    out = tmp_path / "scored.parquet"
    assert (
        _cli(
            feature_env,
            "batch-score",
            "--input",
            str(sample_path),
            "--output",
            str(out),
            "--version",
            trained_model.name,
            "--with-features",
        )
        == 0
    )
    scored = pd.read_parquet(out)
    meta = pd.read_json(trained_model / "metadata.json", typ="series")
    names = list(meta["feature_names"])
    assert list(scored["transaction_id"]) == list(pd.read_parquet(sample_path)["transaction_id"])
    booster = xgb.Booster()
    booster.load_model(str(trained_model / "model.ubj"))
    vectors = scored[names].to_numpy(dtype=np.float32)
    expected = booster.predict(xgb.DMatrix(vectors, missing=np.nan, feature_names=names))
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, rtol=1e-6, atol=1e-7)
    # Each by its channel's pair where the model has one, else the global pair.
    segments = meta.get("segment_thresholds") or {}
    channels = pd.read_parquet(sample_path)["channel"].astype(str)
    assert list(scored["label"]) == [
        label_for_score(float(s), segments.get("channel", {}).get(channel, meta["thresholds"]))
        for s, channel in zip(expected, channels, strict=True)
    ]
    assert (scored["model_version"] == trained_model.name).all()


def test_cli_help_lists_every_step():
    proc = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    for step in ("generate", "features", "apply", "materialize", "train", "batch-score", "demo"):
        assert step in proc.stdout


def test_cli_fails_clearly_on_a_missing_repo(tmp_path, capsys):
    assert main(["--repo", str(tmp_path / "nope"), "apply"]) == 2
    assert "is not a Feast repo" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["keys", "list"], ["dead-letters", "list"]], ids=["keys", "dead-letters"]
)
def test_cli_fails_clearly_when_redis_does_not_answer(command, capsys):
    """A Redis that refuses the connection is one line naming it and exit code 2, not a
    traceback (and a Redis that never answers fails within the clients' timeouts)."""
    from vigil.redis_server import free_port

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    assert main([*command[:1], "--redis-url", url, *command[1:]]) == 2
    err = capsys.readouterr().err
    assert f"Redis at {url.replace('s3cret', '***')}: ConnectionError" in err
    assert "Traceback" not in err and "s3cret" not in err  # never the URL's password


def test_cli_fails_clearly_on_an_unknown_model_version(
    feature_env, trained_model, sample_path, tmp_path, capsys
):
    code = _cli(
        feature_env,
        "batch-score",
        "--input",
        str(sample_path),
        "--output",
        str(tmp_path / "o.parquet"),
        "--version",
        "999",
    )
    assert code == 2
    assert "has no version '999'" in capsys.readouterr().err


def test_cli_fails_clearly_on_malformed_parquet(feature_env, trained_model, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    assert (
        _cli(
            feature_env, "batch-score", "--input", str(bad), "--output", str(tmp_path / "o.parquet")
        )
        == 2
    )
    assert "not a readable parquet file" in capsys.readouterr().err
    wrong = tmp_path / "wrong.parquet"
    pd.DataFrame({"transaction_id": ["a"], "amount": [1.0]}).to_parquet(wrong)
    assert (
        _cli(
            feature_env,
            "batch-score",
            "--input",
            str(wrong),
            "--output",
            str(tmp_path / "o.parquet"),
        )
        == 2
    )
    assert "lack the columns" in capsys.readouterr().err


def test_cli_fails_clearly_without_raw_data(feature_env, tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "--repo", str(feature_env.repo), "train"]) == 2
    assert "run `vigil generate` first" in capsys.readouterr().err
