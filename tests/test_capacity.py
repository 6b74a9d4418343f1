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


def test_the_streamers_cost_per_event_for_batches_is_bounded_by_its_drain():
    """Batches reach the stream together and are applied in large batches: the batch shape's
    streamer cost is at most the wall time per event of its drain alone, not the single
    transactions' few-events-per-read cost."""
    streamer = {"cpu_ms_per_event": 0.467, "drain_rate_eps": {"e2e_100": 4606.0, "e2e_1": 9e9}}
    assert capacity.streamer_per_event(streamer, "e2e_1") == 0.467
    assert round(capacity.streamer_per_event(streamer, "e2e_100"), 3) == 0.217
    assert capacity.streamer_per_event({**streamer, "drain_rate_eps": {}}, "e2e_100") == 0.467
    slow = {**streamer, "drain_rate_eps": {"e2e_100": 1000.0}}  # never above the single cost
    assert capacity.streamer_per_event(slow, "e2e_100") == 0.467
