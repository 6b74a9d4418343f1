"""The Feast repo on a real Redis: apply, materialize, online == latest offline, and on-demand
features that agree between historical (training) and online (serving) retrieval."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd
import pytest

from vigil import feast_repo
from vigil.dataset import entity_frame, historical_matrix
from vigil_contracts.request_features import NO_DEVICE_ID, OUTPUT_FEATURES


def _same(a, b) -> bool:
    if hasattr(b, "tolist"):  # an event list read back from parquet
        b = b.tolist()
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    a_missing = a is None or (isinstance(a, float) and math.isnan(a))
    b_missing = b is None or (isinstance(b, float) and math.isnan(b))
    if a_missing or b_missing:
        return a_missing and b_missing
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture(scope="module")
def store(feature_env):
    return feast_repo.open_store(feature_env.repo)


@pytest.fixture(scope="module")
def spec(feature_env):
    return feast_repo.load_serving_spec(feature_env.repo).feature_services["fraud_model_v1"]


def test_serving_spec_follows_the_feature_service(store, spec):
    service = store.get_feature_service("fraud_model_v1")
    declared = [
        f"{p.name_to_use()}__{f.name}" for p in service.feature_view_projections for f in p.features
    ]
    assert spec.feature_names == declared
    # Every entity feature is a window finished at request time from the stored events.
    assert [f for f in spec.features if f.kind == "stored"] == []
    assert {f.view for f in spec.features} == {
        "card_windows",
        "merchant_windows",
        "device_windows",
        "request_features",
    }
    # 19 before merchant_distinct_cards_24h was dropped (a distinct count does not tile).
    assert len([f for f in spec.features if f.view.endswith("_windows")]) == 18
    # The FX table is read by the on-demand view (the amount in EUR), served by no feature itself.
    assert set(spec.views) == {"card_stats", "merchant_stats", "device_stats", "fx_rates"}
    assert spec.views["fx_rates"].join_keys == ["currency"]
    assert spec.on_demand["request_features"].inputs["fx_rates"] == ["eur_per_unit"]
    assert spec.views["card_stats"].ttl_seconds == 30 * 86400
    assert list(spec.on_demand["request_features"].outputs) == list(OUTPUT_FEATURES)


@pytest.mark.parametrize(
    "table,key",
    [("card_stats", "card_id"), ("merchant_stats", "merchant_id"), ("device_stats", "device_id")],
)
def test_online_features_equal_latest_offline_rows(feature_env, store, table, key):
    offline = pd.read_parquet(feast_repo.offline_dir(feature_env.repo) / f"{table}.parquet")
    latest = offline.sort_values("event_timestamp").groupby(key).tail(1)
    # materialize-incremental's first run loads the TTL window before now
    cutoff = pd.Timestamp(datetime.now(UTC)) - pd.Timedelta(days=29)
    recent = latest[latest["event_timestamp"] > cutoff]
    # The test world has 40 merchants; on some days one of them has no row at all.
    assert len(recent) >= 30, (table, len(recent))
    sample = recent.sample(n=min(40, len(recent)), random_state=3)
    features = [c for c in offline.columns if c not in (key, "event_timestamp")]
    online = store.get_online_features(
        features=[f"{table}:{f}" for f in features],
        entity_rows=[{key: k} for k in sample[key]],
    ).to_dict()
    for i, (_, row) in enumerate(sample.iterrows()):
        for f in features:
            assert _same(online[f][i], row[f]), (table, row[key], f, online[f][i], row[f])


def test_unknown_entities_come_back_missing(store):
    online = store.get_online_features(
        features=["card_stats:card_event_us", "device_stats:device_event_us"],
        entity_rows=[{"card_id": "no-such-card", "device_id": NO_DEVICE_ID}],
    ).to_dict()
    assert online["card_event_us"] == [None]
    assert online["device_event_us"] == [None]


def test_on_demand_features_agree_between_historical_and_online(feature_env, store, spec):
    raw = pd.read_parquet(feature_env.raw_path)
    recent = raw[raw["event_timestamp"] > raw["event_timestamp"].max() - pd.Timedelta(days=3)]
    picks = recent.sample(n=60, random_state=5).copy()
    # score "now": the historical join then sees the same latest rows the online store holds
    now = pd.Timestamp(datetime.now(UTC))
    picks["event_timestamp"] = now
    picks["transaction_id"] = [f"probe-{i}" for i in range(len(picks))]
    picks.loc[picks.index[:5], "card_id"] = "card-never-seen"  # missing stored inputs
    entities = entity_frame(picks)
    service = store.get_feature_service(spec.name)
    hist = historical_matrix(store, spec, entities)  # what training sees
    assert list(hist.index) == list(entities["transaction_id"])
    rows = entities.drop(columns=["transaction_id", "event_timestamp"]).to_dict("records")
    online = store.get_online_features(features=service, entity_rows=rows).to_dict()
    compared = 0
    for ref in spec.features:
        for i in range(len(rows)):
            got, want = online[ref.feature][i], hist[ref.name].iloc[i]
            assert _same(got, want), (ref.name, rows[i], got, want)
            compared += 1
    assert compared == len(rows) * len(spec.features)
    assert all(online["amount_to_card_avg_30d"][i] is None for i in range(5))


def test_the_repo_also_runs_on_the_embedded_sqlite_online_store(feature_env, tmp_path, monkeypatch):
    """Where Redis cannot be had, the same repo materializes into Feast's SQLite store."""
    import shutil

    from conftest import copy_repo

    repo = copy_repo(tmp_path / "repo")
    shutil.copytree(feast_repo.offline_dir(feature_env.repo), feast_repo.offline_dir(repo))
    monkeypatch.setenv("VIGIL_ONLINE_STORE", "sqlite")
    feast_repo.apply(repo)
    feast_repo.materialize(repo)
    assert (repo / "data" / "online.db").is_file()
    offline = pd.read_parquet(feast_repo.offline_dir(repo) / "merchant_stats.parquet")
    latest = offline.sort_values("event_timestamp").groupby("merchant_id").tail(1).iloc[-1]
    online = (
        feast_repo.open_store(repo)
        .get_online_features(
            features=["merchant_stats:merchant_day_amount"],
            entity_rows=[{"merchant_id": latest["merchant_id"]}],
        )
        .to_dict()
    )
    assert online["merchant_day_amount"] == [latest["merchant_day_amount"].tolist()]
