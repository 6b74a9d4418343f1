"""Sample business transactions built from the generated world, for the demo, the web page's sample
buttons (``samples.json``) and end-to-end tests.

Legitimate ones replay a regular card's habits (home country, usual device and merchant, usual
amount, daytime); fraudulent ones follow the world's mechanisms (an account takeover from a new
device abroad at night for many times the usual amount; a card-testing burst on a known card,
played probe after probe at the present); a brand-new card is one the world has never seen (no
history at all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from vigil.world import CURRENCY_BY_COUNTRY as CURRENCY
from vigil_contracts.local_time import local_time


@dataclass(frozen=True)
class Scenario:
    name: str
    expect_fraud: bool
    transaction: dict[str, Any]
    earlier: tuple[dict[str, Any], ...] = ()
    """Transactions played before ``transaction``, one after another, each once the online store
    holds the one before (a card-testing burst's earlier probes); only ``transaction`` is shown."""

    @property
    def title(self) -> str:
        """The name as the demo's table shows it: with how many transactions were played first."""
        return f"{self.name} ({len(self.earlier)} before)" if self.earlier else self.name


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _daytime_before(now: datetime, hour: int, country: str | None = None) -> datetime:
    """The latest ``hour``:12 local time (in ``country``, by the one local-time rule) before
    ``now``."""
    local_now = local_time(now, country)
    day = local_now.replace(hour=hour, minute=12, second=0, microsecond=0)
    return day if day < local_now else day - timedelta(days=1)


def build_scenarios(
    raw: pd.DataFrame,
    now: datetime | None = None,
    n_legit: int = 3,
    n_takeover: int = 2,
    prefix: str = "demo",
) -> list[Scenario]:
    now = now or datetime.now(UTC)
    end = raw["event_timestamp"].max()
    recent = raw[raw["event_timestamp"] > end - pd.Timedelta(days=7)]
    legit = recent[recent["is_fraud"] == 0]
    # Regular cards: many recent legit transactions, a device, mostly one country.
    per_card = (
        legit[legit["device_id"].notna()]
        .groupby("card_id")
        .agg(
            n=("transaction_id", "size"),
            amount=("amount", "median"),
            country=("country", lambda s: s.mode().iloc[0]),
            device=("device_id", lambda s: s.mode().iloc[0]),
            merchant=("merchant_id", lambda s: s.mode().iloc[0]),
            channel=("channel", lambda s: s.mode().iloc[0]),
        )
    )
    regular = per_card[per_card["channel"] != "pos"].sort_values(["n", "amount"], ascending=False)
    out: list[Scenario] = []
    for i, (card, row) in enumerate(regular.head(n_legit).iterrows()):
        day = _daytime_before(now, 14, row["country"])  # the card's own afternoon
        out.append(
            Scenario(
                "regular purchase",
                False,
                {
                    "transaction_id": f"{prefix}-legit-{i}",
                    "card_id": card,
                    "merchant_id": row["merchant"],
                    "amount": round(float(row["amount"]), 2),
                    "currency": CURRENCY.get(row["country"], "EUR"),
                    "timestamp": _iso(day + timedelta(minutes=i)),
                    "channel": row["channel"],
                    "device_id": row["device"],
                    "ip_address": f"10.1.{i}.7",
                    "country": row["country"],
                },
            )
        )
    foreign = {"FR": "US", "DE": "CA", "GB": "CH", "US": "IE"}
    for i, (card, row) in enumerate(regular.iloc[n_legit : n_legit + n_takeover].iterrows()):
        country = foreign.get(row["country"], "CA")
        night = _daytime_before(now, 3, country)  # the small hours where the fraudster pays
        out.append(
            Scenario(
                "account takeover",
                True,
                {
                    "transaction_id": f"{prefix}-ato-{i}",
                    "card_id": card,
                    "merchant_id": row["merchant"],
                    "amount": round(float(row["amount"]) * 18, 2),
                    "currency": CURRENCY.get(country, "USD"),
                    "timestamp": _iso(night + timedelta(minutes=i)),
                    "channel": "ecom",
                    "device_id": f"{prefix}-never-seen-device-{i}",
                    "ip_address": f"203.0.113.{10 + i}",
                    "country": country,
                },
            )
        )
    testers = regular.iloc[n_legit + n_takeover :]
    if len(testers):
        burst = _card_testing_burst(raw, str(testers.index[0]), now, prefix)
        if burst is not None:
            out.append(burst)
    return out


#: A bot fires a probe every few seconds; a purchase that follows the burst comes 5 minutes to 3
#: hours later (vigil.world's card-testing mechanism).
_PROBE_RUN_GAP = pd.Timedelta(minutes=5)


def _last_burst_probes(raw: pd.DataFrame) -> pd.DataFrame | None:
    """The probes of the world's last card-testing burst, in time order: the rows of its device
    (fresh for every burst) up to the larger purchase that may follow."""
    testing = raw[raw["fraud_mechanism"] == "card_testing"]
    if not len(testing):
        return None
    last = testing.loc[testing["event_timestamp"].idxmax()]
    same = (
        testing["device_id"] == last["device_id"]
        if pd.notna(last["device_id"])
        else testing["card_id"] == last["card_id"]
    )
    burst = testing[same].sort_values(["event_timestamp", "transaction_id"])
    # The run of probes is the rows before the first gap of minutes.
    return burst[(burst["event_timestamp"].diff() >= _PROBE_RUN_GAP).cumsum() == 0]


def _card_testing_burst(
    raw: pd.DataFrame, card: str, now: datetime, prefix: str
) -> Scenario | None:
    """A card-testing burst on ``card`` (one the online store holds), played at the present: the
    world's last burst (its probes' amounts, currency, merchants, channel, country, IP and
    spacing, as the world's mechanism made them) from a device never seen, its last probe at
    ``now`` (never before the world's end). The demo plays the earlier probes one after another,
    each once the streamer has added the one before to the card's history, and shows the last."""
    probes = _last_burst_probes(raw)
    if probes is None or not len(probes):
        return None
    stamps = probes["event_timestamp"]
    offsets = [(t - stamps.iloc[0]).to_pytimedelta() for t in stamps]
    world_end = raw["event_timestamp"].max().to_pydatetime()
    start = max(now - offsets[-1], world_end + timedelta(seconds=1))
    txns = [
        {
            "transaction_id": f"{prefix}-cardtest-{i}",
            "card_id": card,
            "merchant_id": p.merchant_id,
            "amount": float(p.amount),
            "currency": p.currency,
            "timestamp": _iso(start + offset),
            "channel": p.channel,
            "device_id": f"{prefix}-tester-device",
            "ip_address": p.ip_address,
            "country": p.country,
        }
        for i, (p, offset) in enumerate(zip(probes.itertuples(), offsets, strict=True))
    ]
    return Scenario("card testing probe", True, txns[-1], earlier=tuple(txns[:-1]))


#: The web page's sample buttons, in order: one of each kind.
SAMPLE_KINDS = ("regular purchase", "account takeover", "card testing probe", "brand-new card")


def build_samples(raw: pd.DataFrame, now: datetime | None = None) -> list[Scenario]:
    """One scenario of each of :data:`SAMPLE_KINDS` (fewer if the world has no such case)."""
    now = now or datetime.now(UTC)
    scenarios = build_scenarios(raw, now=now, n_legit=1, n_takeover=1, prefix="sample")
    by_kind = {s.name: s for s in scenarios}
    burst = by_kind.get("card testing probe")
    if burst is not None and burst.earlier:
        # A button sends one transaction, so it cannot play a burst: it sends the burst's first
        # probe, what a lone click is (a card's first probe from a never-seen device).
        by_kind[burst.name] = Scenario(burst.name, True, burst.earlier[0])
    regular = by_kind.get("regular purchase")
    if regular is not None:
        known = set(raw["card_id"].unique())
        card = next(f"new-card-{i:03d}" for i in range(1000) if f"new-card-{i:03d}" not in known)
        txn = regular.transaction
        by_kind["brand-new card"] = Scenario(
            "brand-new card",
            False,
            {
                **{k: txn[k] for k in ("merchant_id", "currency", "channel", "country")},
                "transaction_id": "sample-newcard-0",
                "card_id": card,
                "amount": txn["amount"],
                "timestamp": _iso(_daytime_before(now, 11)),
                "ip_address": "10.9.0.7",
            },
        )
    return [by_kind[kind] for kind in SAMPLE_KINDS if kind in by_kind]


def write_samples(raw: pd.DataFrame, path: Path, now: datetime | None = None) -> list[Scenario]:
    """``{"samples": [{"name", "expect_fraud", "transaction"}]}``, read by the gateway's
    ``GET /ui/samples`` (which moves each timestamp to the most recent same time of day)."""
    samples = build_samples(raw, now)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "samples": [
            {"name": s.name, "expect_fraud": s.expect_fraud, "transaction": s.transaction}
            for s in samples
        ]
    }
    path.write_text(json.dumps(document, indent=2, default=_plain) + "\n")
    return samples


def _plain(value: object) -> object:
    """numpy scalars (from the parquet) as plain JSON values."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
