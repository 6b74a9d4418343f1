"""An online store that was never loaded is not ready; a load leaves markers that make it ready and
give each view an age (a real redis-server, a real ``feast materialize`` through Vigil)."""

from __future__ import annotations

import re
import shutil

import httpx
import pytest

from vigil import feast_repo, materialization
from vigil.redis_server import RedisServer
from vigil_contracts.online_markers import marker_key
from vigil_encoder.app import create_app
from vigil_encoder.settings import EncoderSettings

AGE = re.compile(
    r'^vigil_encoder_feature_view_age_seconds\{feature_view="(\w+)"\} (\S+)$', re.MULTILINE
)


@pytest.fixture
def empty_redis():
    server = RedisServer().start()
    yield server
    server.stop()


async def test_never_loaded_store_is_not_ready_until_materialized(
    feature_env, empty_redis, tmp_path, monkeypatch
):
    spec = feast_repo.load_serving_spec(feature_env.repo)
    views = sorted({v for svc in spec.feature_services.values() for v in svc.views})
    settings = EncoderSettings(
        redis_url=empty_redis.url, spec_path=feast_repo.spec_path(feature_env.repo)
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://encoder"
        ) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"].startswith("application/problem+json")
            body = ready.json()
            assert body["type"].endswith("/encoder-not-ready")
            assert body["checks"]["redis"]["ready"] is True
            assert body["checks"]["features"]["ready"] is False
            assert (
                f"online store holds no features for {', '.join(views)}: "
                "run `vigil materialize --full`"
            ) in body["detail"]
            assert not AGE.findall((await client.get("/metrics")).text)

            # A real load into that Redis, from a copy of the session's repo (its registry's
            # watermark is its own): the path `vigil materialize --full` takes.
            repo = tmp_path / "feature_repo"
            shutil.copytree(feature_env.repo, repo)
            monkeypatch.setenv("VIGIL_REDIS_CONNECTION_STRING", empty_redis.connection_string)
            report = feast_repo.materialize(repo, full=True)
            assert {load.view for load in report.views} == set(views)
            assert all(load.marked and load.rows > 0 for load in report.views), report
            assert report.unloaded == []

            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            features = ready.json()["checks"]["features"]
            assert features["ready"] is True and set(features["age_seconds"]) == set(views)
            ages = dict(AGE.findall((await client.get("/metrics")).text))
            assert set(ages) == set(views)
            assert all(0 <= float(age) < 120 for age in ages.values()), ages

            # A marker that goes away (a flushed store) takes the view's readiness and age with it.
            redis = materialization.redis_client(empty_redis.connection_string)
            redis.delete(marker_key(spec.project, "device_stats"))
            redis.close()
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert (
                "no features for device_stats: run `vigil materialize --full`"
                in ready.json()["detail"]
            )
            assert "device_stats" not in dict(AGE.findall((await client.get("/metrics")).text))


def test_counted_rows_are_the_latest_row_of_each_entity_in_the_window(feature_env):
    """What the report says was written is what Feast wrote: one hash per entity and view."""
    spec = feast_repo.load_serving_spec(feature_env.repo)
    redis = materialization.redis_client(feature_env.redis.connection_string)
    try:
        markers = materialization.read_markers(redis, spec.project, ["merchant_stats"])
        marker = markers["merchant_stats"]
        assert marker is not None and marker.rows > 0
        stored = sum(
            1
            for key in redis.scan_iter(count=1000)
            if not key.startswith(b"vigil:") and redis.hexists(key, "_ts:merchant_stats")
        )
    finally:
        redis.close()
    assert marker.rows == stored
