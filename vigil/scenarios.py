"""Sample business transactions built from the generated world, for the demo and end-to-end tests.

Legitimate ones replay a regular card's habits (home country, usual device and merchant, usual
amount, daytime); fraudulent ones follow the world's mechanisms (an account takeover from a new
device abroad at night for many times the usual amount; a card-testing burst's next probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from vigil.world import CURRENCY_BY_COUNTRY as CURRENCY
from vigil_contracts.local_time import local_time


@dataclass(frozen=True)
class Scenario:
    name: str
    expect_fraud: bool
    transaction: dict[str, Any]


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _daytime_before(now: datetime, hour: int, country: str | None = None) -> datetime:
    """The latest ``hour``:12 local time (in ``country``, by the one local-time rule) before
    ``now``."""
    local_now = local_time(now, country)
    day = local_now.replace(hour=hour, minute=12, second=0, microsecond=0)
    return day if day < local_now else day - timedelta(days=1)


def build_scenarios(raw: pd.DataFrame, now: datetime | None = None, n_legit: int = 3,
                    n_takeover: int = 2, prefix: str = "demo") -> list[Scenario]:
    now = now or datetime.now(UTC)
    end = raw["event_timestamp"].max()
    recent = raw[raw["event_timestamp"] > end - pd.Timedelta(days=7)]
    legit = recent[recent["is_fraud"] == 0]
    # Regular cards: many recent legit transactions, a device, mostly one country.
    per_card = legit[legit["device_id"].notna()].groupby("card_id").agg(
        n=("transaction_id", "size"), amount=("amount", "median"),
        country=("country", lambda s: s.mode().iloc[0]), device=("device_id", lambda s: s.mode().iloc[0]),
        merchant=("merchant_id", lambda s: s.mode().iloc[0]), channel=("channel", lambda s: s.mode().iloc[0]),
    )
    regular = per_card[per_card["channel"] != "pos"].sort_values(["n", "amount"], ascending=False)
    out: list[Scenario] = []
    for i, (card, row) in enumerate(regular.head(n_legit).iterrows()):
        day = _daytime_before(now, 14, row["country"])  # the card's own afternoon
        out.append(Scenario("regular purchase", False, {
            "transaction_id": f"{prefix}-legit-{i}", "card_id": card, "merchant_id": row["merchant"],
            "amount": round(float(row["amount"]), 2), "currency": CURRENCY.get(row["country"], "EUR"),
            "timestamp": _iso(day + timedelta(minutes=i)), "channel": row["channel"],
            "device_id": row["device"], "ip_address": f"10.1.{i}.7", "country": row["country"],
        }))
    foreign = {"FR": "US", "DE": "CA", "GB": "CH", "US": "IE"}
    for i, (card, row) in enumerate(regular.iloc[n_legit:n_legit + n_takeover].iterrows()):
        country = foreign.get(row["country"], "CA")
        night = _daytime_before(now, 3, country)  # the small hours where the fraudster pays
        out.append(Scenario("account takeover", True, {
            "transaction_id": f"{prefix}-ato-{i}", "card_id": card, "merchant_id": row["merchant"],
            "amount": round(float(row["amount"]) * 18, 2), "currency": CURRENCY.get(country, "USD"),
            "timestamp": _iso(night + timedelta(minutes=i)), "channel": "ecom",
            "device_id": f"{prefix}-never-seen-device-{i}", "ip_address": f"203.0.113.{10 + i}",
            "country": country,
        }))
    bursts = recent[recent["fraud_mechanism"] == "card_testing"]
    if len(bursts):
        last = bursts.sort_values("event_timestamp").iloc[-1]
        ts = last["event_timestamp"].to_pydatetime() + timedelta(seconds=40)
        out.append(Scenario("card testing probe", True, {
            "transaction_id": f"{prefix}-cardtest-0", "card_id": last["card_id"],
            "merchant_id": last["merchant_id"], "amount": 1.0,
            "currency": last["currency"], "timestamp": _iso(ts), "channel": last["channel"],
            "device_id": last["device_id"] if pd.notna(last["device_id"]) else None,
            "country": last["country"],
        }))
    return out
