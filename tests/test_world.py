"""Tests of the synthetic payments world (vigil.world) on small worlds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vigil.local_hours import local_hours
from vigil.world import (
    CURRENCY_BY_COUNTRY,
    MECHANISMS,
    WorldConfig,
    WorldSummary,
    generate_world,
    load_transactions,
)

END = datetime(2026, 11, 1, tzinfo=UTC)
N_DAYS = 14
TS = pa.timestamp("us", tz="UTC")
EXPECTED_SCHEMA = [
    ("transaction_id", pa.string()),
    ("event_timestamp", TS),
    ("card_id", pa.string()),
    ("merchant_id", pa.string()),
    ("device_id", pa.string()),
    ("ip_address", pa.string()),
    ("country", pa.string()),
    ("currency", pa.string()),
    ("channel", pa.string()),
    ("amount", pa.float64()),
    ("is_fraud", pa.int8()),
    ("fraud_mechanism", pa.string()),
    ("chargeback_timestamp", TS),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorldSummary, pd.DataFrame]:
    path = tmp_path_factory.mktemp("world") / "nested" / "transactions.parquet"
    summary = generate_world(
        WorldConfig(seed=11, n_transactions=12_000, n_days=N_DAYS, end=END), path
    )
    return summary, load_transactions(path)


def _small(tmp_path: Path, name: str, **kwargs: object) -> pd.DataFrame:
    config = WorldConfig(**{"n_transactions": 5_000, "n_days": 7, "end": END, **kwargs})
    path = tmp_path / name
    generate_world(config, path)
    return load_transactions(path)


def test_schema_and_dtypes_are_exact(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    summary, df = world
    schema = pq.read_schema(summary.path)
    assert [(f.name, f.type) for f in schema] == EXPECTED_SCHEMA
    assert list(df.columns) == [name for name, _ in EXPECTED_SCHEMA]
    assert str(df["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert str(df["chargeback_timestamp"].dtype) == "datetime64[us, UTC]"
    assert df["amount"].dtype == np.float64
    assert df["is_fraud"].dtype == np.int8


def test_rows_sorted_with_unique_ids(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    _, df = world
    assert df["transaction_id"].is_unique
    assert df["transaction_id"].str.fullmatch(r"t\d+").all()
    assert df["card_id"].str.fullmatch(r"c\d+").all()
    assert df["merchant_id"].str.fullmatch(r"m\d+").all()
    keys = list(zip(df["event_timestamp"], df["transaction_id"], strict=True))
    assert keys == sorted(keys)


def test_timestamps_inside_window(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    summary, df = world
    start = END - timedelta(days=N_DAYS)
    assert summary.start == start and summary.end == END
    assert df["event_timestamp"].min() >= pd.Timestamp(start)
    assert df["event_timestamp"].max() < pd.Timestamp(END)
    # Every day of the window has traffic.
    assert df["event_timestamp"].dt.floor("D").nunique() == N_DAYS


def test_fraud_rate_and_every_mechanism(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    summary, df = world
    rate = df["is_fraud"].mean()
    assert 0.005 <= rate <= 0.02
    assert set(df["fraud_mechanism"].unique()) == {""} | set(MECHANISMS)
    assert ((df["fraud_mechanism"] != "") == (df["is_fraud"] == 1)).all()
    assert set(df["is_fraud"].unique()) == {0, 1}
    assert summary.n_transactions == len(df)
    assert summary.n_fraud == int(df["is_fraud"].sum())
    assert summary.fraud_rate == pytest.approx(rate)
    counts = df.loc[df["is_fraud"] == 1, "fraud_mechanism"].value_counts().to_dict()
    assert summary.by_mechanism == counts


def test_chargebacks_after_event_for_fraud_only(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    _, df = world
    fraud = df[df["is_fraud"] == 1]
    legit = df[df["is_fraud"] == 0]
    assert legit["chargeback_timestamp"].isna().all()
    assert fraud["chargeback_timestamp"].notna().all()
    delay = fraud["chargeback_timestamp"] - fraud["event_timestamp"]
    assert (delay > pd.Timedelta(0)).all()
    assert (delay >= pd.Timedelta(days=2)).all() and (delay <= pd.Timedelta(days=60)).all()


def test_device_and_ip_null_iff_pos(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    _, df = world
    pos = df["channel"] == "pos"
    assert set(df["channel"].unique()) == {"pos", "ecom", "mobile"}
    assert (df["device_id"].isna() == pos).all()
    assert (df["ip_address"].isna() == pos).all()
    octets = df.loc[~pos, "ip_address"].str.split(".", expand=True).astype(int)
    assert octets.shape[1] == 4 and octets.min().min() >= 0 and octets.max().max() <= 255


def test_values_are_consistent(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    _, df = world
    assert (df["amount"] > 0).all()
    assert np.allclose(df["amount"], df["amount"].round(2))
    assert (df["currency"] == df["country"].map(CURRENCY_BY_COUNTRY)).all()
    assert df["country"].nunique() == len(CURRENCY_BY_COUNTRY)


def test_mechanisms_leave_their_signatures(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    _, df = world
    first_seen = df.dropna(subset=["device_id"]).groupby("device_id")["event_timestamp"].min()

    testing = df[df["fraud_mechanism"] == "card_testing"]
    probes = testing[testing["amount"] <= 5.0]
    bursts = probes.groupby(["card_id", "device_id"])
    assert bursts.size().between(5, 30).all()
    assert (bursts["merchant_id"].nunique() <= 3).all()
    assert (
        (bursts["event_timestamp"].max() - bursts["event_timestamp"].min()) < pd.Timedelta(hours=1)
    ).all()
    assert (testing["channel"] != "pos").all()

    ato = df[df["fraud_mechanism"] == "account_takeover"]
    first_rows = ato.groupby("device_id")["event_timestamp"].min()
    assert (first_rows == first_seen[first_rows.index]).all()

    odd = df[df["fraud_mechanism"] == "odd_hours"]
    # The small hours where the transaction happened (its country's local time).
    assert (local_hours(odd["event_timestamp"], odd["country"]) < 6).all()
    assert (odd["device_id"].notna()).all()

    compromised = df[df["fraud_mechanism"] == "compromised_merchant"]
    per_merchant = compromised.groupby("merchant_id")["card_id"].nunique()
    assert (per_merchant >= 10).all()
    legit_mean = df[df["is_fraud"] == 0].groupby("merchant_id")["amount"].mean()
    fraud_mean = compromised.groupby("merchant_id")["amount"].mean()
    assert (fraud_mean > legit_mean[fraud_mean.index]).all()


def test_legit_overlaps_fraud_signals(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    _, df = world
    legit = df[df["is_fraud"] == 0]
    assert 0.01 < (local_hours(legit["event_timestamp"], legit["country"]) < 6).mean() < 0.15
    assert 0.01 < (legit["amount"] <= 5.0).mean() < 0.15
    home = legit.groupby("card_id")["country"].agg(lambda s: s.mode().iloc[0])
    abroad = (legit["country"] != legit["card_id"].map(home)).mean()
    assert 0.005 < abroad < 0.15


def test_same_seed_same_world_other_seed_other_world(tmp_path: Path) -> None:
    a = _small(tmp_path, "a.parquet", seed=3)
    b = _small(tmp_path, "b.parquet", seed=3)
    c = _small(tmp_path, "c.parquet", seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert (
        pq.read_schema(tmp_path / "a.parquet").metadata
        == pq.read_schema(tmp_path / "b.parquet").metadata
    )
    assert len(a) != len(c) or not a.equals(c)
    assert not a["amount"].head(100).equals(c["amount"].head(100))


def test_writes_one_row_group_per_chunk(
    world: tuple[WorldSummary, pd.DataFrame], tmp_path: Path
) -> None:
    summary, _ = world
    meta = pq.ParquetFile(summary.path).metadata
    # A row group per chunk, and one for the rows of the last local evening still to be written.
    assert (
        meta.num_row_groups == summary.n_row_groups and N_DAYS <= meta.num_row_groups <= N_DAYS + 1
    )

    # Large days are sliced into several chunks without changing what the world contains.
    config = WorldConfig(n_transactions=5_000, n_days=7, end=END, max_chunk_rows=300)
    sliced = generate_world(config, tmp_path / "sliced.parquet")
    assert pq.ParquetFile(sliced.path).metadata.num_row_groups > 7
    df = load_transactions(sliced.path)
    assert df["event_timestamp"].is_monotonic_increasing
    assert df["transaction_id"].is_monotonic_increasing
    assert (
        sliced.by_mechanism
        == generate_world(
            WorldConfig(n_transactions=5_000, n_days=7, end=END), tmp_path / "whole.parquet"
        ).by_mechanism
    )


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_world(
        WorldConfig(n_transactions=2_000, n_days=3, end=END), tmp_path / "p.parquet", progress=True
    )
    assert "3/3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraud_rate": 0.001},
        {"fraud_rate": 0.05},
        {"end": datetime(2026, 11, 1)},
        {"end": datetime(2026, 11, 1, 12, tzinfo=UTC)},
        {"n_days": 0},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


def test_local_hours_follow_the_contracts_rule(world: tuple[WorldSummary, pd.DataFrame]) -> None:
    from vigil_contracts.local_time import local_hour

    _, df = world
    sample = df.sample(2_000, random_state=1)
    countries = sample["country"].where(np.arange(len(sample)) % 7 != 0, "XK")  # no zone: UTC
    expected = [
        local_hour(ts.to_pydatetime(), c)
        for ts, c in zip(sample["event_timestamp"], countries, strict=True)
    ]
    assert list(local_hours(sample["event_timestamp"], countries)) == expected


def test_behaviour_follows_local_time_and_instants_are_utc(
    world: tuple[WorldSummary, pd.DataFrame],
) -> None:
    _, df = world
    legit = df[df["is_fraud"] == 0]
    # People sleep at night where they are: in the US as in Europe, the local small hours are
    # quiet, though they are the UTC afternoon or morning in one or the other.
    for countries in (["US", "CA"], ["FR", "DE", "ES", "IT", "NL", "CH"]):
        rows = legit[legit["country"].isin(countries)]
        local = local_hours(rows["event_timestamp"], rows["country"])
        assert (local < 6).mean() < 0.15, countries
    us = legit[legit["country"] == "US"]
    assert (us["event_timestamp"].dt.hour.between(5, 10)).mean() < 0.15  # 00:00-05:59 in New York
