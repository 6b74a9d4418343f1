"""docs/capacity.md is what bench.capacity renders from its committed inputs (docs/capacity.json),
and the services' resources in deploy/k8s are the model's: neither is edited by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench import capacity

ROOT = Path(__file__).resolve().parent.parent
MODEL = json.loads((ROOT / "docs" / "capacity.json").read_text())


def test_the_capacity_doc_is_rendered_from_its_inputs():
    assert (ROOT / "docs" / "capacity.md").read_text() == capacity.render(MODEL)


def test_the_manifests_carry_the_models_resources(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", copy)
    assert capacity.write_resources(copy, MODEL["resources"]) == [], (
        "regenerate: python -m bench.capacity"
    )
    changed = dict(
        MODEL["resources"],
        gateway={
            "requests": {"cpu": "2", "memory": "1Mi"},
            "limits": {"cpu": "2", "memory": "2Mi"},
        },
    )
    assert capacity.write_resources(copy, changed) == [copy / "gateway.yaml"]
    assert 'requests: {cpu: "2", memory: 1Mi}' in (copy / "gateway.yaml").read_text()


def test_replicas_leave_headroom_and_never_fall_below_two():
    cores, n = capacity.replicas(cpu_ms=1.0, rate=10_000)  # 10 cores busy
    assert cores == 10 and n == 17  # at 60 % of a core each
    assert capacity.replicas(cpu_ms=0.001, rate=1)[1] == 2
