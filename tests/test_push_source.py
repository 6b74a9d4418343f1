"""The stream path declared the Feast way: card_stats, merchant_stats and device_stats read a
``PushSource`` backed by their offline table, and a row the streamer writes directly into
Feast's layout reads back exactly as the same row pushed through ``FeatureStore.push``."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd
import pytest
import redis
from feast import FileSource, PushSource
from feast.data_source import PushMode

from vigil import feast_repo
from vigil.pipeline import FEATURE_TABLES
from vigil_contracts.entity_history import HistoryRecord, written_key
from vigil_streamer import feast_layout
from vigil_streamer import rows as streamer_rows

STREAMED = {"card_id": "card_stats", "merchant_id": "merchant_stats", "device_id": "device_stats"}


@pytest.fixture(scope="module")
def store(feature_env):
    return feast_repo.open_store(feature_env.repo)


def test_feast_apply_declares_a_push_source_backed_by_the_offline_table(feature_env, store):
    for view in STREAMED.values():
        fv = store.get_feature_view(view)
        assert isinstance(fv.stream_source, PushSource)
        assert fv.stream_source.name == f"{view}_push"
        # Training and `feast materialize` read the batch source: the offline table.
        assert isinstance(fv.batch_source, FileSource)
        assert fv.batch_source.path.endswith(f"offline/{view}.parquet")
        assert store.get_data_source(f"{view}_push").batch_source == fv.batch_source
    assert isinstance(store.get_feature_view("fx_rates").batch_source, FileSource)
    assert store.get_feature_view("fx_rates").stream_source is None


def _rows(tag: str) -> dict[tuple[str, str], streamer_rows.Row]:
    """The streamer's own rows (``rows.newest_row`` of each entity's history members) of a
    card, a merchant and a device of a few made-up transactions, the newest a minute ago."""
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    records = [
        HistoryRecord(
            f"{tag}-t{k}",
            now - (60 + 3600 * k) * 1_000_000,
            f"{tag}-card",
            f"{tag}-merchant" if k % 2 else f"{tag}-merchant-b",
            f"{tag}-device" if k < 3 else None,
            ("FR", "DE", "FR", "ES")[k],
            [12.5, 80.0, 3.25, 410.0][k],
        )
        for k in range(4)
    ]
    targets = [
        ("card_id", f"{tag}-card"),
        ("merchant_id", f"{tag}-merchant"),
        ("device_id", f"{tag}-device"),
    ]
    out = {}
    for join_key, value in targets:
        history = sorted(
            (r for r in records if getattr(r, join_key) == value), key=lambda r: r.t_us
        )
        members = [r.encode().encode() for r in history]
        out[(join_key, value)] = streamer_rows.newest_row(join_key, members, members[0])
    return out


def _write_directly(client: redis.Redis, rows: dict[tuple[str, str], streamer_rows.Row]) -> None:
    write = client.register_script(feast_layout.WRITE_NEWER)
    for (join_key, value), (stamp, features) in rows.items():
        assert write(
            keys=[feast_layout.redis_key(join_key, value, "vigil"), written_key(join_key, value)],
            args=feast_layout.row_args(
                STREAMED[join_key], features, streamer_rows.DTYPES, stamp, 1, 60_000
            ),
        )


def _push(store, rows: dict[tuple[str, str], streamer_rows.Row], rename: str) -> None:
    for (join_key, value), (stamp, features) in rows.items():
        view = STREAMED[join_key]
        frame = pd.DataFrame(
            [
                {
                    join_key: value.replace("direct", rename),
                    "event_timestamp": pd.Timestamp(stamp, unit="us", tz="UTC"),
                    **features,
                }
            ]
        )
        store.push(f"{view}_push", frame, to=PushMode.ONLINE)


def _online(store, join_key: str, value: str) -> dict[str, object]:
    view = STREAMED[join_key]
    features = [f"{view}:{name}" for name in FEATURE_TABLES[view]]
    got = store.get_online_features(features=features, entity_rows=[{join_key: value}])
    return {k: v[0] for k, v in got.to_dict(include_event_timestamps=True).items() if k != join_key}


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_a_row_written_directly_reads_as_the_same_row_pushed_through_feast(feature_env, store):
    rows = _rows("direct")
    assert len(rows) == 3
    client = redis.Redis.from_url(feature_env.redis.url)
    try:
        _write_directly(client, rows)
        _push(store, rows, rename="pushed")
        for join_key, value in rows:
            direct = _online(store, join_key, value)
            pushed = _online(store, join_key, value.replace("direct", "pushed"))
            assert set(direct) == set(pushed)
            differ = {k: (direct[k], pushed[k]) for k in direct if not _same(direct[k], pushed[k])}
            assert not differ, (join_key, differ)
            stamp = rows[(join_key, value)][0]
            stamps = {v for k, v in direct.items() if k.endswith("__ts")}
            # Feast's response carries whole seconds, and 0 for a missing value's.
            assert stamps - {0} == {stamp // 1_000_000}
            # ... and not just equal after decoding: the stored fields are Feast's, byte for byte.
            stored = {
                name: client.hgetall(feast_layout.redis_key(join_key, v, "vigil"))
                for name, v in (("direct", value), ("pushed", value.replace("direct", "pushed")))
            }
            assert stored["direct"] == stored["pushed"], join_key
    finally:
        client.close()
