"""The decision stream end to end: a period of the test world replayed through the business API
on the real stack with the streamer (processes, a private redis-server), against the batch side:
every touched entity's online row equals the batch pipeline's, and the live labels agree with
the offline point-in-time batch scoring."""

from __future__ import annotations

import pytest

from vigil.replay import replay

pytestmark = pytest.mark.e2e


def test_a_replayed_day_leaves_the_batch_pipelines_features_and_labels(
    feature_env, trained_model, tmp_path
):
    report = replay(
        feature_env.repo,
        feature_env.raw_path,
        feature_env.models_dir,
        tmp_path,
        days=1.0,
        progress=print,
    )
    print("\n".join(report.lines()))
    assert report.transactions > 100
    assert report.entities_checked > 100
    assert report.feature_mismatches == []
    assert report.labels_agree >= 0.999, report.label_disagreements
