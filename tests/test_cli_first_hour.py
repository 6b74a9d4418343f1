"""A new user's first hour, through the ``vigil`` command itself (each step a subprocess, as typed):
generate a small world, features (and the web page's samples), apply, materialize into a real
redis-server, train, batch-score. The output says what happened, without third-party warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import copy_repo
from vigil import materialization
from vigil.scenarios import SAMPLE_KINDS
from vigil_contracts.api import Transaction

WARNINGS = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning", "UserWarning")
VIGIL = Path(sys.executable).with_name("vigil")


@pytest.fixture(scope="module")
def first_hour(redis_server, tmp_path_factory):
    """Runs the steps once; every test below reads what they printed and wrote."""
    base = tmp_path_factory.mktemp("first-hour")
    repo = copy_repo(base / "feature_repo")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROMETHEUS_MULTIPROC_DIR", "PYTHONWARNINGS", "VIGIL_ONLINE_STORE")
    }
    # A db of its own in the session's redis-server: db 0 is the session's online store.
    env["VIGIL_REDIS_CONNECTION_STRING"] = f"{redis_server.connection_string},db=3"
    cmd = [
        str(VIGIL) if VIGIL.exists() else "vigil",
        "--quiet",
        "--repo",
        str(repo),
        "--data-dir",
        str(base / "data"),
        "--models-dir",
        str(base / "models"),
    ]

    def run(*args: str, db: int = 3) -> subprocess.CompletedProcess[str]:
        run_env = dict(
            env, VIGIL_REDIS_CONNECTION_STRING=f"{redis_server.connection_string},db={db}"
        )
        proc = subprocess.run(
            [*cmd, *args], env=run_env, capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, f"vigil {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
        return proc

    steps = {
        # A fixed end: the default (today 00:00 UTC) makes another world every day, and this
        # small one's validation period held a single class on 2026-12-07's.
        "generate": run(
            "generate",
            "--seed",
            "7",
            "--transactions",
            "8000",
            "--days",
            "30",
            "--end",
            "2026-12-06T00:00:00Z",
        ),
        "features": run("features"),
        "apply": run("apply"),
        "materialize": run("materialize", "--full"),
        # A 30-day world cannot wait out a chargeback window: the wait is given, as the card says.
        "train": run("train", "--seed", "7", "--label-wait-days", "7"),
    }
    raw = pd.read_parquet(base / "data" / "raw" / "transactions.parquet")
    sample = base / "last.parquet"
    raw.tail(200).to_parquet(sample)
    steps["batch-score"] = run(
        "batch-score", "--input", str(sample), "--output", str(base / "scored.parquet")
    )
    # The registry's watermark is now; an incremental run into a store never loaded loads nothing.
    steps["materialize-empty"] = run("materialize", db=4)
    yield {"steps": steps, "repo": repo, "raw": raw, "redis": redis_server}
    for db in (3, 4):
        client = materialization.redis_client(f"{redis_server.connection_string},db={db}")
        client.flushdb()
        client.close()


def test_no_third_party_warning_in_any_step(first_hour):
    for name, proc in first_hour["steps"].items():
        for warning in WARNINGS:
            assert warning not in proc.stderr, f"`vigil {name}` printed a {warning}:\n{proc.stderr}"
            assert warning not in proc.stdout, f"`vigil {name}` printed a {warning}:\n{proc.stdout}"


def test_our_own_warnings_stay_visible():
    code = (
        "import warnings; from vigil.warning_filters import quiet_third_party; "
        "quiet_third_party(); import vigil.scenarios as m; "
        "warnings.warn_explicit('ours', UserWarning, 'x.py', 1, module='vigil.scenarios'); "
        "warnings.warn_explicit('theirs', DeprecationWarning, 'y.py', 1, module='ibis.backends')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "UserWarning: ours" in proc.stderr
    assert "theirs" not in proc.stderr


def test_materialize_reports_rows_per_view(first_hour):
    out = first_hour["steps"]["materialize"].stderr
    for view in ("card_stats", "merchant_stats", "device_stats"):
        line = next(text for text in out.splitlines() if f"  {view}: " in text)
        assert int(line.split(": ")[1].split(" rows written")[0].replace(",", "")) > 0, line
    assert "--full" not in out  # nothing to advise: the store is loaded


def test_materialize_into_a_store_never_loaded_says_how_to_load_it(first_hour):
    out = first_hour["steps"]["materialize-empty"].stderr
    assert "card_stats: 0 rows written" in out
    assert "Load it with `vigil materialize --full`" in out


def test_features_writes_samples_from_the_world(first_hour):
    document = json.loads((first_hour["repo"] / "data" / "samples.json").read_text())
    samples = document["samples"]
    assert [s["name"] for s in samples] == list(SAMPLE_KINDS)
    raw = first_hour["raw"]
    cards, merchants = set(raw["card_id"]), set(raw["merchant_id"])
    for sample in samples:
        Transaction.model_validate(sample["transaction"])  # a valid score request body
        assert isinstance(sample["expect_fraud"], bool)
        assert sample["transaction"]["merchant_id"] in merchants
        new = sample["name"] == "brand-new card"
        assert (sample["transaction"]["card_id"] in cards) is not new, sample
    assert "4 sample transactions" in first_hour["steps"]["features"].stderr
