"""``GET /ui/samples``: the samples ``vigil features`` writes, moved to the latest same time of day,
with fresh ids; a missing or broken file is an empty list and a log line, never a 500."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from vigil_contracts.api import Transaction
from vigil_gateway.app import create_app
from vigil_gateway.samples import latest_same_time
from vigil_gateway.settings import GatewaySettings

SAMPLES = {
    "samples": [
        {
            "name": "regular purchase",
            "expect_fraud": False,
            "transaction": {
                "transaction_id": "sample-legit-0",
                "card_id": "c001",
                "merchant_id": "m01",
                "amount": 42.5,
                "currency": "EUR",
                "timestamp": "2026-01-10T14:12:00Z",
                "channel": "ecom",
                "device_id": "d001",
                "ip_address": "10.1.0.7",
                "country": "FR",
            },
        },
        {
            "name": "account takeover",
            "expect_fraud": True,
            "transaction": {
                "transaction_id": "sample-ato-0",
                "card_id": "c002",
                "merchant_id": "m01",
                "amount": 900.0,
                "currency": "USD",
                "timestamp": "2026-01-10T03:12:00+00:00",
                "channel": "ecom",
                "device_id": "sample-never-seen-device-0",
                "ip_address": "203.0.113.10",
                "country": "US",
            },
        },
    ]
}


async def get_samples(path: Path | None) -> httpx.Response:
    app = create_app(GatewaySettings(environment="test", samples_path=path, log_level="INFO"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gw"
    ) as client:
        return await client.get("/ui/samples")


async def test_samples_are_moved_to_the_latest_same_time_of_day(tmp_path):
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(SAMPLES))
    before = datetime.now(UTC)
    first, second = (await get_samples(path)).json(), (await get_samples(path)).json()
    after = datetime.now(UTC)

    assert [s["name"] for s in first["samples"]] == ["regular purchase", "account takeover"]
    assert [s["expect_fraud"] for s in first["samples"]] == [False, True]
    for sample, original in zip(first["samples"], SAMPLES["samples"], strict=True):
        txn, orig = sample["transaction"], original["transaction"]
        Transaction.model_validate(txn)  # a valid score request body
        ts = datetime.fromisoformat(txn["timestamp"])
        assert before - timedelta(days=1) < ts <= after
        then = datetime.fromisoformat(orig["timestamp"])
        assert (ts - then) % timedelta(days=1) == timedelta(
            0
        )  # whole days: the takeover stays at night
        assert txn["transaction_id"].startswith(orig["transaction_id"] + "-")
        assert {k: v for k, v in txn.items() if k not in ("timestamp", "transaction_id")} == {
            k: v for k, v in orig.items() if k not in ("timestamp", "transaction_id")
        }
    ids = {s["transaction"]["transaction_id"] for doc in (first, second) for s in doc["samples"]}
    assert len(ids) == 4  # fresh on every read: a click is scored, not replayed


def test_latest_same_time_is_never_in_the_future():
    now = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    assert latest_same_time(datetime(2026, 11, 1, 3, 12, tzinfo=UTC), now) == datetime(
        2026, 12, 6, 3, 12, tzinfo=UTC
    )
    assert latest_same_time(datetime(2026, 11, 1, 14, 12, tzinfo=UTC), now) == datetime(
        2026, 12, 5, 14, 12, tzinfo=UTC
    )
    assert latest_same_time(datetime(2027, 1, 1, 9, 0, tzinfo=UTC), now) == datetime(
        2026, 12, 6, 9, 0, tzinfo=UTC
    )  # a future one is moved back
    assert latest_same_time(now, now) == now


@pytest.mark.parametrize("content", [None, "not json", '{"samples": 3}', '{"other": []}'])
async def test_missing_or_unreadable_samples_are_an_empty_list_and_a_log_line(
    tmp_path, content, caplog
):
    path = tmp_path / "samples.json"
    if content is not None:
        path.write_text(content)
    with caplog.at_level(logging.INFO, logger="vigil_gateway.samples"):
        response = await get_samples(path)
    assert response.status_code == 200
    assert response.json() == {"samples": []}
    assert any("sample transactions not readable" in r.getMessage() for r in caplog.records)


async def test_unset_path_and_invalid_entries(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vigil_gateway.samples"):
        assert (await get_samples(None)).json() == {"samples": []}
    assert any("GATEWAY_SAMPLES_PATH is not set" in r.getMessage() for r in caplog.records)

    broken = {
        "samples": [
            SAMPLES["samples"][0],
            {"name": "no amount", "expect_fraud": False, "transaction": {"card_id": "c1"}},
        ]
    }
    bad_ip = {**SAMPLES["samples"][0]["transaction"], "ip_address": "192.0.2.999"}
    broken["samples"].append({"name": "bad ip", "expect_fraud": False, "transaction": bad_ip})
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(broken))
    with caplog.at_level(logging.INFO, logger="vigil_gateway.samples"):
        body = (await get_samples(path)).json()
    assert [s["name"] for s in body["samples"]] == ["regular purchase"]
    # Why each was skipped, where in the sample, but none of its values (README, *Privacy*).
    reasons = [r.reason for r in caplog.records if r.getMessage() == "sample transaction skipped"]
    assert len(reasons) == 2 and any("ip_address" in r for r in reasons)
    assert not any("192.0.2.999" in r or "'c1'" in r for r in reasons)
