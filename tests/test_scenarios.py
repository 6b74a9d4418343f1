"""The demo's and the web page's scenarios, built from the test world: the card-testing burst is
the world's last burst played at the present on a card the online store holds, probe after
probe; the page's button (one transaction) sends that burst's first probe."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise

import pandas as pd
import pytest
import redis

from vigil.scenarios import SAMPLE_KINDS, build_samples, build_scenarios
from vigil_streamer.feast_layout import redis_key


@pytest.fixture(scope="module")
def raw(feature_env) -> pd.DataFrame:
    return pd.read_parquet(feature_env.raw_path)


def _present(raw: pd.DataFrame) -> datetime:
    """A present half a day after the world's end (the demo's is the wall clock: a burst whose
    span would reach back before the world's end starts after it instead)."""
    return raw["event_timestamp"].max().to_pydatetime() + timedelta(hours=12)


def _burst(scenarios):
    (burst,) = [s for s in scenarios if s.name == "card testing probe"]
    return burst


def _at(txn) -> datetime:
    return datetime.fromisoformat(txn["timestamp"])


def test_the_burst_is_probes_of_one_card_ascending_after_the_worlds_end(raw, feature_env):
    now = _present(raw)
    scenarios = build_scenarios(raw, now=now)
    burst = _burst(scenarios)
    probes = [*burst.earlier, burst.transaction]
    assert len(probes) >= 5  # the world's bursts are 5-30 probes
    assert burst.title == f"card testing probe ({len(probes) - 1} before)"
    stamps = [_at(p) for p in probes]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0] > raw["event_timestamp"].max().to_pydatetime()
    assert stamps[-1] == now
    assert len({p["transaction_id"] for p in probes}) == len(probes)
    for key in ("card_id", "device_id", "channel", "currency", "country"):
        assert len({p[key] for p in probes}) == 1, key
    # A card the online store holds, none of the other scenarios' cards, from a device the
    # world never saw.
    card = probes[0]["card_id"]
    with redis.Redis.from_url(feature_env.redis.url) as store:
        assert store.exists(redis_key("card_id", card, "vigil"))
    assert card not in {s.transaction["card_id"] for s in scenarios if s is not burst}
    assert probes[0]["device_id"] not in set(raw["device_id"].dropna())


def test_the_burst_is_the_worlds_last_one_as_the_mechanism_made_it(raw):
    now = _present(raw)
    probes = [*(b := _burst(build_scenarios(raw, now=now))).earlier, b.transaction]
    testing = raw[raw["fraud_mechanism"] == "card_testing"].sort_values("event_timestamp")
    last_device = testing["device_id"].iloc[-1]
    world = testing[testing["device_id"] == last_device]
    # Every row of the burst's device, but a purchase that may follow minutes to hours later.
    if len(world) == len(probes) + 1:
        assert world["event_timestamp"].diff().iloc[-1] >= pd.Timedelta(minutes=5)
        world = world.iloc[:-1]
    assert [p["amount"] for p in probes] == world["amount"].tolist()
    assert [p["merchant_id"] for p in probes] == world["merchant_id"].tolist()
    assert [p["currency"] for p in probes] == world["currency"].tolist()
    assert all(p["amount"] < 10 for p in probes)
    gaps = [(_at(b) - _at(a)).total_seconds() for a, b in pairwise(probes)]
    want = world["event_timestamp"].diff().dt.total_seconds().iloc[1:].tolist()
    assert gaps == pytest.approx(want, abs=1e-5) and all(1.0 <= g < 300 for g in gaps)


def test_a_purchase_after_the_burst_is_no_probe(raw):
    """35 % of bursts end with a larger purchase minutes to hours later, from the same device:
    the burst's run of probes stops before it."""
    testing = raw[raw["fraud_mechanism"] == "card_testing"].sort_values("event_timestamp")
    last = testing.iloc[-1]
    probes = testing[testing["device_id"] == last["device_id"]]
    cash_out = last.copy()
    cash_out["transaction_id"] = "t9999999999"
    cash_out["event_timestamp"] = probes["event_timestamp"].max() + pd.Timedelta(minutes=40)
    cash_out["amount"] = 312.0
    cash_out["merchant_id"] = "m-ordinary-site"
    with_cash_out = pd.concat([raw, pd.DataFrame([cash_out.to_dict()])], ignore_index=True)
    now = _present(raw)
    before = _burst(build_scenarios(raw, now=now))
    after = _burst(build_scenarios(with_cash_out, now=now))
    assert after.transaction["amount"] == before.transaction["amount"]
    assert len(after.earlier) == len(before.earlier)


def test_the_scenarios_are_the_same_at_any_present_but_for_the_time(raw):
    now = _present(raw)
    one, again = build_scenarios(raw, now=now), build_scenarios(raw, now=now)
    assert one == again
    later = build_scenarios(raw, now=now + timedelta(hours=5))

    def untimed(scenarios):
        return [
            [{k: v for k, v in t.items() if k != "timestamp"} for t in (*s.earlier, s.transaction)]
            for s in scenarios
        ]

    assert untimed(later) == untimed(one)
    shift = [
        _at(t) - _at(u) for t, u in zip(_burst(later).earlier, _burst(one).earlier, strict=True)
    ]
    assert set(shift) == {timedelta(hours=5)}


def test_the_page_button_sends_one_probe_not_before_the_worlds_end(raw):
    samples = build_samples(raw)
    assert [s.name for s in samples] == list(SAMPLE_KINDS)
    probe = next(s for s in samples if s.name == "card testing probe")
    assert probe.earlier == ()
    first = _burst(build_scenarios(raw, n_legit=1, n_takeover=1, prefix="sample")).earlier[0]
    assert {k: v for k, v in probe.transaction.items() if k != "timestamp"} == {
        k: v for k, v in first.items() if k != "timestamp"
    }
    assert _at(probe.transaction) > raw["event_timestamp"].max().to_pydatetime()


def test_just_after_the_worlds_end_the_burst_starts_after_it(raw):
    """A present closer to the world's end than the burst's span: the burst is not moved before
    the stored features, it starts after the world's last transaction, its spacing kept."""
    end = raw["event_timestamp"].max().to_pydatetime()
    at_noon = _burst(build_scenarios(raw, now=_present(raw)))
    early = _burst(build_scenarios(raw, now=end + timedelta(seconds=2)))
    stamps = [_at(p) for p in (*early.earlier, early.transaction)]
    assert stamps[0] == end + timedelta(seconds=1)
    noon = [_at(p) for p in (*at_noon.earlier, at_noon.transaction)]
    assert [t - stamps[0] for t in stamps] == [t - noon[0] for t in noon]
