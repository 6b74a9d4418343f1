"""Tests of the offline feature pipeline (vigil.pipeline) on small hand-built raw frames.

The central property is leak-freedom: a transaction at time t, joined point-in-time ("latest
row with stamp <= t", as Feast does) to the tables, must only see transactions strictly before t.
Every feature is also checked against a slow, obviously-correct reference implementation.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vigil import fx, pipeline
from vigil.fx import FX_FILE, fx_table, write_fx_table
from vigil.pipeline import FEATURE_TABLES, compute_feature_tables, write_feature_tables
from vigil_contracts import request_features, windows
from vigil_contracts.local_time import local_hour

REPO = Path(__file__).resolve().parents[1]
T0 = pd.Timestamp("2024-03-01 06:00:00", tz="UTC")
US = pd.Timedelta(microseconds=1)
HOUR = pd.Timedelta(hours=1)
WINDOWS = {"1h": HOUR, "24h": 24 * HOUR, "7d": pd.Timedelta(days=7), "30d": pd.Timedelta(days=30)}
KEYS = {"card_stats": "card_id", "merchant_stats": "merchant_id", "device_stats": "device_id"}


def txn(
    ts: pd.Timestamp,
    card: str,
    merchant: str = "m1",
    device: str | None = None,
    country: str = "DE",
    amount: float = 10.0,
) -> dict:
    return {
        "event_timestamp": ts,
        "card_id": card,
        "merchant_id": merchant,
        "device_id": device,
        "country": country,
        "amount": amount,
    }


def raw_frame(rows: list[dict]) -> pd.DataFrame:
    """A raw-transactions frame in the generator's format (labels included), sorted by time."""
    df = pd.DataFrame(rows)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    df = df.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    df.insert(0, "transaction_id", [f"tx{i:05d}" for i in range(len(df))])
    df["ip_address"] = None
    df["currency"] = "EUR"
    df["channel"] = np.where(df["device_id"].isna(), "pos", "ecom")
    df["amount"] = df["amount"].astype("float64")
    df["is_fraud"] = np.zeros(len(df), dtype="int8")
    df["fraud_mechanism"] = "none"
    df["chargeback_timestamp"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[us, UTC]")
    return df


VIEWS = {key: view for view, key in KEYS.items()}


def at_instants(table: pd.DataFrame, view: str, t_us: np.ndarray) -> pd.DataFrame:
    """Every windowed feature of ``view`` finished at ``t_us`` (one instant per row of
    ``table``) from the row's stored events, as the on-demand views compute them."""
    columns = {name: table[name].tolist() for name in windows.stored_lists(view)}
    columns[windows.REQUEST_FIELD] = list(np.asarray(t_us, dtype=np.int64) / 1e6)
    names = [f.name for f in windows.view_features(view)]
    out = windows.transform_columns(view, columns, names)
    return pd.DataFrame(
        {
            n: pd.Series(
                out[n], index=table.index, dtype=object if n.endswith("country") else float
            )
            for n in names
        }
    )


def seen_by(raw: pd.DataFrame, table: pd.DataFrame, key: str) -> pd.DataFrame:
    """What each transaction sees: the latest row with stamp <= its time (Feast's PIT join),
    and the windows finished at its own time from that row's events."""
    left = raw[["transaction_id", key, "event_timestamp"]].dropna(subset=[key])
    joined = pd.merge_asof(
        left.sort_values("event_timestamp"),
        table.sort_values("event_timestamp"),
        on="event_timestamp",
        by=key,
        allow_exact_matches=True,
        direction="backward",
    )
    t_us = joined["event_timestamp"].astype("int64").to_numpy()
    if str(joined["event_timestamp"].dtype).startswith("datetime64[ns"):
        t_us = t_us // 1000
    joined = pd.concat([joined, at_instants(joined, VIEWS[key], t_us)], axis=1)
    return joined.set_index("transaction_id")


def latest_windows(tables: dict[str, pd.DataFrame], name: str, after_us: int = 1) -> pd.DataFrame:
    """Each entity's latest row with its windows finished ``after_us`` after its stamp's
    transaction (the stamp is that transaction + 1 µs)."""
    latest = tables[name].sort_values("event_timestamp").groupby(KEYS[name]).tail(1)
    t_us = latest["event_timestamp"].astype("int64").to_numpy() - 1 + after_us
    if str(latest["event_timestamp"].dtype).startswith("datetime64[ns"):
        t_us = (latest["event_timestamp"].astype("int64").to_numpy() // 1000) - 1 + after_us
    out = pd.concat([latest, at_instants(latest, name, t_us)], axis=1)
    return out.set_index(KEYS[name])


def epoch(ts: pd.Timestamp) -> float:
    return ((ts - pd.Timestamp(0, tz="UTC")) // US) / 1e6  # integer µs, then seconds


# --- no leakage ---------------------------------------------------------------------------


def test_point_in_time_lookup_sees_only_strictly_earlier_transactions() -> None:
    raw = raw_frame(
        [
            txn(T0, "c1", "m1", "d1", "DE", 10.0),
            txn(T0 + 10 * pd.Timedelta(minutes=1), "c1", "m2", "d2", "FR", 20.0),
            txn(T0 + 10 * pd.Timedelta(minutes=1), "c1", "m1", None, "DE", 30.0),  # same instant
            txn(T0 + 2 * HOUR, "c1", "m3", "d1", "DE", 40.0),
            txn(T0 + 10 * pd.Timedelta(minutes=1), "c2", "m1", "d9", "US", 999.0),  # another card
            txn(T0, "c3", "m9", None, "DE", 1.0),
            txn(T0 + US, "c3", "m9", None, "DE", 2.0),  # exactly one microsecond later
        ]
    )
    card = compute_feature_tables(raw)["card_stats"]
    seen = seen_by(raw, card, "card_id")
    tx = dict(
        zip(zip(raw["card_id"], raw["amount"], strict=True), raw["transaction_id"], strict=True)
    )

    # The first transaction of a card sees no row at all (its own row is stamped after it).
    assert seen.loc[tx["c1", 10.0], list(FEATURE_TABLES["card_stats"])].isna().all()
    assert np.isnan(seen.loc[tx["c2", 999.0], "card_txn_count_24h"])
    # Both transactions at T0+10min see only the one at T0, not each other.
    for amount in (20.0, 30.0):
        row = seen.loc[tx["c1", amount]]
        assert row["card_txn_count_1h"] == 1
        assert row["card_txn_count_24h"] == 1
        assert row["card_amount_sum_24h"] == 10.0
        assert row["card_amount_max_30d"] == 10.0
        assert row["card_last_txn_epoch"] == epoch(T0)
        assert row["card_distinct_merchants_24h"] == 1
        assert row["card_distinct_devices_30d"] == 1
        assert row["card_distinct_countries_30d"] == 1
        assert row["card_home_country"] == "DE"
    # At T0+2h the card sees the state after the tied pair (all three earlier, none of itself).
    row = seen.loc[tx["c1", 40.0]]
    assert row["card_txn_count_1h"] == 0  # windows end at this transaction: all over an hour old
    assert row["card_txn_count_24h"] == 3
    assert row["card_amount_sum_24h"] == 60.0
    assert row["card_amount_max_30d"] == 30.0
    assert row["card_last_txn_epoch"] == epoch(T0 + 10 * pd.Timedelta(minutes=1))
    assert row["card_distinct_merchants_24h"] == 2  # m3 (its own) not counted
    assert row["card_distinct_devices_30d"] == 2  # the null device is not a device
    assert row["card_distinct_countries_30d"] == 2
    assert row["card_home_country"] == "DE"
    # One microsecond later is already "strictly after": the row stamped t + 1 µs is visible.
    row = seen.loc[tx["c3", 2.0]]
    assert row["card_txn_count_1h"] == 1 and row["card_amount_sum_24h"] == 1.0

    # Other tables obey the same rule.
    merchant = seen_by(raw, compute_feature_tables(raw)["merchant_stats"], "merchant_id")
    # m1 at T0+10min: two transactions at that instant (c1's and c2's); both see only T0's.
    assert merchant.loc[tx["c1", 30.0], "merchant_txn_count_24h"] == 1
    assert merchant.loc[tx["c2", 999.0], "merchant_txn_count_24h"] == 1
    assert merchant.loc[tx["c2", 999.0], "merchant_amount_avg_7d"] == 10.0
    device = seen_by(raw, compute_feature_tables(raw)["device_stats"], "device_id")
    assert device.loc[tx["c1", 40.0], "device_txn_count_24h"] == 1
    assert device.loc[tx["c1", 40.0], "device_first_seen_epoch"] == epoch(T0)


def test_one_row_per_entity_and_timestamp_stamped_one_microsecond_after() -> None:
    raw = random_world(seed=3)
    tables = compute_feature_tables(raw)
    assert raw.duplicated(["card_id", "event_timestamp"]).any()  # the world has ties
    for name, key in KEYS.items():
        table = tables[name]
        assert not table.duplicated([key, "event_timestamp"]).any()
        with_key = raw.dropna(subset=[key])
        expected = set(zip(with_key[key], with_key["event_timestamp"] + US, strict=True))
        assert set(zip(table[key], table["event_timestamp"], strict=True)) == expected


def test_random_world_pit_join_sees_exactly_the_latest_strictly_earlier_transaction() -> None:
    raw = random_world(seed=11)
    card = compute_feature_tables(raw)["card_stats"]
    seen = seen_by(raw, card, "card_id")
    us = raw["event_timestamp"].astype("int64")
    for i, tx in raw.iterrows():
        same = raw["card_id"] == tx["card_id"]
        earlier = us[same & (us < us[i])]
        got = seen.loc[tx["transaction_id"], "card_last_txn_epoch"]
        if earlier.empty:
            assert np.isnan(got)
        else:
            assert got == earlier.max() / 1e6
            lo = us[i] - 24 * 3_600_000_000  # the window ends at this transaction
            assert seen.loc[tx["transaction_id"], "card_txn_count_24h"] == (earlier > lo).sum()


# --- window boundaries -----------------------------------------------------------------------


def boundary_world(offset: pd.Timedelta) -> pd.DataFrame:
    """Pairs of transactions ``offset`` apart, arranged so every windowed feature can tell
    whether the first transaction is still inside the second one's window.

    A: one card/merchant/device, the country and amount change (counts, sums, averages, shares).
    B: one card, merchant and device change (card's distinct merchants / devices).
    C: one merchant and device, the card changes (device's distinct cards).
    """
    return raw_frame(
        [
            txn(T0, "cA", "mA", "dA", "GB", 100.0),
            txn(T0 + offset, "cA", "mA", "dA", "IE", 2.0),
            txn(T0, "cB", "mB1", "dB1", "FR", 7.0),
            txn(T0 + offset, "cB", "mB2", "dB2", "FR", 7.0),
            txn(T0, "cC1", "mC", "dC", "FR", 7.0),
            txn(T0 + offset, "cC2", "mC", "dC", "FR", 7.0),
        ]
    )


# feature -> (entity, value if the first transaction fell out, value if it is still in)
BOUNDARY_EXPECTATIONS: dict[str, tuple[str, object, object]] = {
    "card_txn_count_1h": ("cA", 1, 2),
    "card_txn_count_24h": ("cA", 1, 2),
    "card_txn_count_7d": ("cA", 1, 2),
    "card_amount_sum_24h": ("cA", 2.0, 102.0),
    "card_amount_avg_30d": ("cA", 2.0, 51.0),
    "card_amount_std_30d": ("cA", 0.0, 49.0),
    "card_amount_max_30d": ("cA", 2.0, 100.0),
    "card_distinct_merchants_24h": ("cB", 1, 2),
    "card_distinct_devices_30d": ("cB", 1, 2),
    "card_distinct_countries_30d": ("cA", 1, 2),
    "card_home_country": ("cA", "IE", "GB"),  # GB/IE tie -> lexicographically smallest
    # Tiled (whole UTC hours and days): T0 (06:00:00) is in the tile 24 hours (7 days) before
    # the second transaction's either way; test_tiled_window_boundaries moves the edge.
    "merchant_txn_count_24h": ("mA", 2, 2),
    "merchant_txn_count_7d": ("mA", 2, 2),
    "merchant_amount_avg_7d": ("mA", 51.0, 51.0),
    # Local time in GB and IE (UTC+0 in March): T0 is 06:00 (day); T0 + 7d - 1 or 2 µs is
    # 05:59:59.99999x (night).
    "merchant_night_share_7d": ("mA", 0.5, 0.5),
    "merchant_small_amount_share_24h": ("mA", 0.5, 0.5),
    "device_txn_count_24h": ("dA", 1, 2),
    "device_distinct_cards_7d": ("dC", 1, 2),
    "device_distinct_countries_7d": ("dA", 1, 2),
}


@pytest.mark.parametrize("unit", ["h", "D"])
@pytest.mark.parametrize("before", [False, True], ids=["at_tile_start", "one_us_before"])
def test_tiled_window_boundaries(unit: str, before: bool) -> None:
    # A merchant's 24h (7d) window at t holds the tiles from the start of the UTC hour (day) 24
    # hours (7 days) before t's: an event at that start is in, one a microsecond before is out.
    span, suffix = (24, "24h") if unit == "h" else (7, "7d")
    edge = T0.floor(unit) - pd.Timedelta(microseconds=1 if before else 0)
    t = T0.floor(unit) + span * pd.Timedelta(1, unit) + pd.Timedelta(minutes=59)
    rows = [txn(edge, "c1", "mT", amount=2.0), txn(t - pd.Timedelta(minutes=1), "c2", "mT")]
    merchant = compute_feature_tables(raw_frame(rows))["merchant_stats"]
    t_us = np.full(len(merchant), int(t.value // 1000))
    got = at_instants(merchant, "merchant_stats", t_us).iloc[-1]
    assert got[f"merchant_txn_count_{suffix}"] == (1 if before else 2)


def window_of(feature: str) -> str:
    return feature.rsplit("_", 1)[1]


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize(
    "inside", [False, True], ids=["exactly_w_ago_excluded", "just_inside_included"]
)
def test_window_boundaries(window: str, inside: bool) -> None:
    # The windows are finished at the instant just after the second transaction (t2 + 1 µs): the
    # first one is then exactly w before it, or 1 µs less.
    offset = WINDOWS[window] - 2 * US if inside else WINDOWS[window] - US
    tables = compute_feature_tables(boundary_world(offset))
    checked = 0
    for name in FEATURE_TABLES:
        latest = latest_windows(tables, name)
        for feature in (f.name for f in windows.view_features(name)):
            if feature not in BOUNDARY_EXPECTATIONS:
                continue
            entity, out_value, in_value = BOUNDARY_EXPECTATIONS[feature]
            if feature == "card_home_country":
                feature_window = "30d"
            else:
                feature_window = window_of(feature)
            if feature_window != window:
                continue
            expected = in_value if inside else out_value
            got = latest.loc[entity, feature]
            if isinstance(expected, float):
                assert got == pytest.approx(expected, abs=1e-12), (feature, offset)
            else:
                assert got == expected, (feature, offset)
            checked += 1
    assert checked > 0


# --- brute force ------------------------------------------------------------------------------


def random_world(seed: int, n_bursts: int = 45) -> pd.DataFrame:
    """A few hundred transactions, bursty in time, with ties and exact-window gaps."""
    rng = np.random.default_rng(seed)
    cards = [f"c{i}" for i in range(6)]
    merchants = [f"m{i}" for i in range(4)]
    devices = [f"d{i}" for i in range(5)]
    countries = ["AT", "DE", "FR", "US"]
    amounts = [1.0, 2.5, 4.99, 5.0, 10.0, 10.0, 10.0, 49.99, 120.0, 1234.56]
    rows: list[dict] = []
    for _ in range(n_bursts):
        start = T0 + pd.Timedelta(seconds=int(rng.integers(0, 45 * 86400)))
        for _ in range(int(rng.integers(1, 10))):
            ts = start + pd.Timedelta(seconds=int(rng.integers(0, 5400)))
            if rows and rng.random() < 0.1:
                ts = rows[int(rng.integers(len(rows)))]["event_timestamp"]  # a tie
            rows.append(
                txn(
                    ts,
                    cards[int(rng.integers(len(cards)))],
                    merchants[int(rng.integers(len(merchants)))],
                    None if rng.random() < 0.25 else devices[int(rng.integers(len(devices)))],
                    countries[int(rng.choice(len(countries), p=[0.1, 0.6, 0.2, 0.1]))],
                    amounts[int(rng.integers(len(amounts)))]
                    if rng.random() < 0.7
                    else float(np.round(rng.uniform(0.5, 300.0), 2)),
                )
            )
    # Copies of earlier transactions exactly one window (or one window +- 1 µs) later, so the
    # reference comparison exercises every boundary, not only the dedicated test.
    for _ in range(40):
        src = dict(rows[int(rng.integers(len(rows)))])
        w = list(WINDOWS.values())[int(rng.integers(len(WINDOWS)))]
        src["event_timestamp"] = src["event_timestamp"] + w + US * int(rng.integers(-1, 2))
        if rng.random() < 0.5:
            src["merchant_id"] = merchants[int(rng.integers(len(merchants)))]
        rows.append(src)
    return raw_frame(rows)


def reference_tables(raw: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The features computed the slow, obvious way: every window filtered from scratch."""
    us = raw["event_timestamp"].astype("int64").to_numpy()
    w = {k: int(v / US) for k, v in WINDOWS.items()}
    out: dict[str, list[dict]] = {name: [] for name in FEATURE_TABLES}
    for name, key in KEYS.items():
        for entity in raw[key].dropna().unique():
            mask = (raw[key] == entity).to_numpy()
            ent = raw[mask].assign(us=us[mask])
            for now in sorted(set(ent["us"])):
                # Finished just after the transaction at ``now``: (now + 1 µs - w, now + 1 µs).
                def win(size: str, ent: pd.DataFrame = ent, now: int = now) -> pd.DataFrame:
                    return ent[(ent["us"] > now + 1 - w[size]) & (ent["us"] <= now)]

                row: dict = {
                    key: entity,
                    "event_timestamp": pd.Timestamp(now + 1, unit="us", tz="UTC"),
                }
                if name == "card_stats":
                    w30 = win("30d")
                    counts = Counter(w30["country"])
                    top = max(counts.values())
                    row |= {
                        "card_txn_count_1h": len(win("1h")),
                        "card_txn_count_24h": len(win("24h")),
                        "card_txn_count_7d": len(win("7d")),
                        "card_amount_sum_24h": sum(win("24h")["amount"]),
                        "card_amount_avg_30d": float(np.mean(w30["amount"])),
                        "card_amount_std_30d": float(np.std(w30["amount"])),
                        "card_amount_max_30d": max(w30["amount"]),
                        "card_distinct_merchants_24h": len(set(win("24h")["merchant_id"])),
                        "card_distinct_devices_30d": len(set(w30["device_id"].dropna())),
                        "card_distinct_countries_30d": len(set(w30["country"])),
                        "card_last_txn_epoch": now / 1e6,
                        "card_first_seen_epoch": ent["us"].min() / 1e6,
                        "card_home_country": min(c for c, k in counts.items() if k == top),
                        # The newest before now + 1 µs within 30 days: now's itself.
                        "card_prev_txn_epoch": w30["us"].max() / 1e6,
                    }
                elif name == "merchant_stats":
                    # Tiled: from the start of the UTC hour 24 h (day 7 d) before now + 1 µs.
                    hour, day = 3_600_000_000, 86_400_000_000
                    w7 = ent[(ent["us"] // day >= (now + 1) // day - 7) & (ent["us"] <= now)]
                    w24 = ent[(ent["us"] // hour >= (now + 1) // hour - 24) & (ent["us"] <= now)]
                    row |= {
                        "merchant_txn_count_24h": len(w24),
                        "merchant_txn_count_7d": len(w7),
                        "merchant_amount_avg_7d": float(np.mean(w7["amount"])),
                        # Night where each transaction happened (its country's local time).
                        "merchant_night_share_7d": float(
                            np.mean(
                                [
                                    local_hour(ts.to_pydatetime(), c) < 6
                                    for ts, c in zip(
                                        w7["event_timestamp"], w7["country"], strict=True
                                    )
                                ]
                            )
                        ),
                        "merchant_small_amount_share_24h": float(np.mean(w24["amount"] < 5.0)),
                    }
                else:
                    w7 = win("7d")
                    row |= {
                        "device_txn_count_24h": len(win("24h")),
                        "device_distinct_cards_7d": len(set(w7["card_id"])),
                        "device_distinct_countries_7d": len(set(w7["country"])),
                        "device_first_seen_epoch": ent["us"].min() / 1e6,
                    }
                out[name].append(row)
    return {name: pd.DataFrame(rows) for name, rows in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_feature_matches_brute_force_reference(seed: int) -> None:
    raw = random_world(seed)
    assert 250 <= len(raw) <= 600
    got = compute_feature_tables(raw)
    want = reference_tables(raw)
    for name, key in KEYS.items():
        g = got[name].sort_values([key, "event_timestamp"], ignore_index=True)
        g = pd.concat([g, at_instants(g, name, g["event_timestamp"].astype("int64"))], axis=1)
        r = want[name].sort_values([key, "event_timestamp"], ignore_index=True)
        assert len(g) == len(r), name
        assert (g[key] == r[key]).all()
        assert (g["event_timestamp"] == r["event_timestamp"]).all()
        features = [*windows.STORED_SCALARS[name], *(f.name for f in windows.view_features(name))]
        for feature in features:
            kind = pipeline.FEATURE_TYPES.get(feature) or windows._BY_NAME[feature].dtype
            if kind == "Float64":
                np.testing.assert_allclose(
                    g[feature], r[feature].astype(float), rtol=1e-9, atol=1e-9, err_msg=feature
                )
            else:
                mismatch = g[feature].to_numpy() != r[feature].to_numpy()
                assert not mismatch.any(), (feature, g[mismatch], r[mismatch])


def test_identical_amounts_have_exactly_zero_std() -> None:
    # The request feature divides by the std when it is > 0: float residue must not leak in.
    rows = [txn(T0 + i * HOUR, "c1", amount=a) for i, a in enumerate([1e6, 3.3, 3.3, 3.3])]
    rows += [txn(T0 + 31 * pd.Timedelta(days=1) + i * HOUR, "c1", amount=19.99) for i in range(5)]
    card = compute_feature_tables(raw_frame(rows))["card_stats"]
    std = at_instants(card, "card_stats", card["event_timestamp"].astype("int64"))
    assert std["card_amount_std_30d"].iloc[0] == 0.0
    assert (std["card_amount_std_30d"].iloc[-5:] == 0.0).all()


# --- schema -----------------------------------------------------------------------------------


def load_feature_views() -> dict:
    spec = importlib.util.spec_from_file_location(
        "vigil_test_features", REPO / "feature_repo" / "features.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: getattr(module, name) for name in (*FEATURE_TABLES, "fx_rates")}


def test_feature_tables_match_feature_views() -> None:
    from feast.types import Array, Float64, Int64, String

    type_name = {Int64: "Int64", Float64: "Float64", String: "String"}
    type_name |= {Array(t): f"Array({n})" for t, n in list(type_name.items())}
    views = load_feature_views()
    # The FX table: Feast's schema is generated from its declaration, the file's checked here.
    declared = request_features.FX_RATES["fx_rates"]
    fx_view = views.pop("fx_rates")
    assert {f.name: type_name[f.dtype] for f in fx_view.features} == declared
    arrow_name = {pa.float64(): "Float64", pa.int64(): "Int64", pa.string(): "String"}
    stored = {f.name: f.type for f in fx.SCHEMA if f.name not in ("currency", "event_timestamp")}
    assert {n: arrow_name[t] for n, t in stored.items()} == declared
    for name, view in views.items():
        assert tuple(f.name for f in view.features) == FEATURE_TABLES[name]
        assert view.entities == [KEYS[name].removesuffix("_id")]
        for field in view.features:
            assert type_name[field.dtype] == pipeline.FEATURE_TYPES[field.name], field.name
    assert set(pipeline.FEATURE_TYPES) == {f for fs in FEATURE_TABLES.values() for f in fs}


def test_written_parquet_schema_matches_feature_views(tmp_path: Path) -> None:
    from feast.types import Array, Float64, Int64, String

    arrow_of = {Int64: pa.int64(), Float64: pa.float64(), String: pa.string()}
    arrow_of |= {Array(t): pa.list_(a) for t, a in list(arrow_of.items())}
    raw_path = tmp_path / "raw.parquet"
    world = random_world(seed=5)
    world.to_parquet(raw_path)
    write_fx_table(
        fx_table(5, world["event_timestamp"].min(), world["event_timestamp"].max()),
        tmp_path / FX_FILE,
    )
    paths = write_feature_tables(raw_path, tmp_path / "offline")
    views = load_feature_views()
    assert set(paths) == set(views)
    for name, view in views.items():
        assert paths[name] == tmp_path / "offline" / f"{name}.parquet"
        schema = pq.read_schema(paths[name])
        key = {**KEYS, "fx_rates": "currency"}[name]  # the FX table is written as it is
        assert view.entities == [key.removesuffix("_id")]
        expected = pa.schema(
            [
                pa.field(key, pa.string()),
                pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
                *(pa.field(f.name, arrow_of[f.dtype]) for f in view.features),
            ]
        )
        assert schema.remove_metadata().equals(expected), (name, schema)
        table = pq.read_table(paths[name])
        assert table.num_rows > 0
        assert table.column(key).null_count == 0
    assert not list((tmp_path / "offline").glob(".*"))  # no temporary files left behind


def test_in_memory_dtypes_and_empty_input() -> None:
    empty = raw_frame([txn(T0, "c1")]).iloc[0:0]
    for frame in (compute_feature_tables(empty), compute_feature_tables(random_world(seed=4))):
        for name, table in frame.items():
            assert list(table.columns) == [KEYS[name], "event_timestamp", *FEATURE_TABLES[name]]
            assert str(table["event_timestamp"].dtype) == "datetime64[us, UTC]"
            for feature in FEATURE_TABLES[name]:
                want = {
                    "Float64": "float64",
                    "Array(Float64)": "list<item: double>[pyarrow]",
                    "Array(Int64)": "list<item: int64>[pyarrow]",
                    "Array(String)": "list<item: string>[pyarrow]",
                }[pipeline.FEATURE_TYPES[feature]]
                assert str(table[feature].dtype) == want, feature


# --- labels -----------------------------------------------------------------------------------


def test_labels_do_not_influence_features() -> None:
    raw = random_world(seed=7)
    flipped = raw.copy()
    flipped["is_fraud"] = (1 - flipped["is_fraud"]).astype("int8")
    flipped["fraud_mechanism"] = "card_testing"
    flipped["chargeback_timestamp"] = flipped["event_timestamp"] + pd.Timedelta(days=3)
    a, b = compute_feature_tables(raw), compute_feature_tables(flipped)
    for name in FEATURE_TABLES:
        pd.testing.assert_frame_equal(a[name], b[name])
    # And without the label columns at all, nothing changes either.
    unlabeled = raw.drop(columns=["is_fraud", "fraud_mechanism", "chargeback_timestamp"])
    c = compute_feature_tables(unlabeled)
    for name in FEATURE_TABLES:
        pd.testing.assert_frame_equal(a[name], c[name])


# --- money ------------------------------------------------------------------------------------


def test_amounts_are_compared_in_eur_at_the_rate_of_their_day() -> None:
    """A card paying 100 EUR and then 100 USD (0.90 EUR per USD that day, 0.95 the next) has a
    30-day average of 95 EUR, not 100; a currency without a rate is refused, not guessed."""
    rows = [
        txn(T0, "c1", amount=100.0),
        txn(T0 + HOUR, "c1", amount=100.0),
        txn(T0 + 25 * HOUR, "c1", amount=100.0),
    ]
    raw = raw_frame(rows)
    raw.loc[1:, "currency"] = "USD"
    day = pd.Timestamp(T0).floor("D")
    fx = pd.DataFrame(
        {
            "currency": ["EUR", "USD", "EUR", "USD"],
            "event_timestamp": [day, day, day + pd.Timedelta(days=1), day + pd.Timedelta(days=1)],
            "eur_per_unit": [1.0, 0.90, 1.0, 0.95],
        }
    )
    card = compute_feature_tables(raw, fx_rates=fx)["card_stats"]
    card = pd.concat(
        [card, at_instants(card, "card_stats", card["event_timestamp"].astype("int64"))], axis=1
    )
    last = card.iloc[-1]
    assert last["card_amount_avg_30d"] == pytest.approx((100.0 + 90.0 + 95.0) / 3)
    assert last["card_amount_max_30d"] == pytest.approx(100.0)
    assert card.iloc[1]["card_amount_sum_24h"] == pytest.approx(190.0)
    with pytest.raises(ValueError, match="need an FX table"):
        compute_feature_tables(raw)
    raw.loc[2, "currency"] = "JPY"
    with pytest.raises(ValueError, match="no rate for \\['JPY'\\]"):
        compute_feature_tables(raw, fx_rates=fx)
