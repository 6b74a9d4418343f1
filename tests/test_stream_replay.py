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


def test_faults_mid_replay_lose_nothing(feature_env, trained_model, tmp_path):
    """kill -9 of the streamer a third of the way in (then restarted), Redis hung for 5 s two
    thirds in: the final online rows still equal the batch pipeline's (every answered decision
    reached the stream and was counted once), and a malformed entry is dead-lettered. The
    streamer runs at a lower CPU priority than the request path."""
    import os
    import signal
    import threading
    import time

    import redis

    done: list[str] = []
    priorities: list[int] = []

    def fault(i, stack, server):
        if i == 60:
            priorities.append(
                os.getpriority(os.PRIO_PROCESS, stack.services["streamer"].process.pid)
            )
            os.kill(stack.services["streamer"].process.pid, signal.SIGKILL)
            stack.services["streamer"].process.wait()
            redis.Redis.from_url(server.url).xadd(
                "vigil:decisions", {"id": "x", "v": 1, "event": b"{"}
            )
            stack.restart_service("streamer")
            done.append("killed")
        elif i == 140:
            os.kill(server.process.pid, signal.SIGSTOP)
            timer = threading.Timer(5.0, os.kill, (server.process.pid, signal.SIGCONT))
            timer.start()
            time.sleep(0.5)  # answers keep coming while it hangs
            done.append("hung")

    report = replay(
        feature_env.repo,
        feature_env.raw_path,
        feature_env.models_dir,
        tmp_path,
        days=1.0,
        limit=220,
        fault=fault,
        progress=print,
    )
    print("\n".join(report.lines()))
    assert done == ["killed", "hung"]
    # The streamer lowered its own CPU priority (STREAMER_NICE, 10 by default).
    assert priorities == [min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)]
    assert report.feature_mismatches == []
    # The private Redis is gone with the replay; the streamer's log says what it dead-lettered.
    log = (tmp_path / "logs" / "streamer.log").read_text()
    assert "decision event dead-lettered" in log
