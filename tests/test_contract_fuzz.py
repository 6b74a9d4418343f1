"""The gateway's OpenAPI document is exact: schemathesis (``--checks all``, a bounded number of
examples, with a valid key) against the live gateway of the running stack finds nothing but what
is listed below, each with its reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vigil.runner import LocalStack

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 12
# Findings that are not inexactness of the document, with why: (operation, check code, a text
# the finding must contain) -> reason.
ACCEPTED: dict[tuple[str, str, str], str] = {
    (
        "/v1/transactions/score",
        "ST101",
        "problems/overloaded",
    ): "the documented 503 `overloaded`: a caller whose own deadline (X-Request-Timeout-Ms, "
    "e.g. 1 ms) leaves less than GATEWAY_MIN_BUDGET_S is refused at once, not scored late",
}


@pytest.fixture(scope="module")
def stack(feature_env, trained_model, tmp_path_factory):
    running = LocalStack(
        feature_env.repo,
        feature_env.models_dir,
        tmp_path_factory.mktemp("logs"),
        redis_url=feature_env.redis.url,
        key_limits={
            "requests_per_s": 1e6,
            "request_burst": 1e6,
            "transactions_per_s": 1e8,
            "transaction_burst": 1e8,
        },
    )
    with running:
        yield running


def _findings(junit: Path) -> list[tuple[str, str, str]]:
    """(operation, check, message) of every failure in schemathesis's JUnit report."""
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for failure in [*case.iter("failure"), *case.iter("error")]:
            text = (failure.get("message") or "") + "\n" + (failure.text or "")
            title = next((line.strip() for line in text.splitlines() if line.strip()), "?")
            found.append((case.get("name", "?"), title, text[:1500]))
    return found


def test_schemathesis_finds_nothing_unlisted(stack, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is a dev dependency: bash scripts/setup.sh installs it"
    gateway = stack.services["gateway"].url
    junit = tmp_path / "junit.xml"
    run = subprocess.run(
        [
            exe,
            "run",
            f"{gateway}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "7",
            "--generation-deterministic",
            "-H",
            f"Authorization: Bearer {stack.api_key}",
            "--request-timeout",
            "5",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # its own files stay there
        check=False,
    )
    assert junit.exists(), run.stdout[-3000:] + run.stderr[-2000:]
    unlisted = [
        f
        for f in _findings(junit)
        if not any(op in f[0] and check in f[2] and text in f[2] for (op, check, text) in ACCEPTED)
    ]
    assert not unlisted, (
        "\n\n".join(f"{op}: {title}\n{text}" for op, title, text in unlisted)
        + "\n\n"
        + run.stdout[-4000:]
    )
