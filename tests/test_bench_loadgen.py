"""The load generator's bodies: unique ids, and with ``fresh_timestamps`` every transaction
stamped the time it is sent (live payments, newer than every stored row)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bench.loadgen import Bodies


def _batch(n: int) -> str:
    return json.dumps(
        {
            "transactions": [
                {"transaction_id": "__TXID__", "timestamp": "2024-01-01T10:00:00Z", "amount": 1}
                for _ in range(n)
            ]
        }
    )


def test_fresh_timestamps_are_the_time_of_sending_and_ids_stay_unique() -> None:
    bodies = Bodies([_batch(3), _batch(2)], "__TXID__", "p", fresh_timestamps=True)
    sent = [json.loads(bodies.next())["transactions"] for _ in range(4)]
    now = datetime.now(UTC)
    ids = [t["transaction_id"] for body in sent for t in body]
    assert len(ids) == len(set(ids)) == 10
    for body in sent:
        stamps = {t["timestamp"] for t in body}
        assert len(stamps) == 1  # one body, one instant
        when = datetime.fromisoformat(stamps.pop())
        assert now - timedelta(seconds=5) < when <= now
    assert [len(b) for b in sent] == [3, 2, 3, 2]


def test_without_fresh_timestamps_a_template_is_sent_as_written() -> None:
    bodies = Bodies([_batch(2)], "__TXID__", "p")
    body = json.loads(bodies.next())["transactions"]
    assert {t["timestamp"] for t in body} == {"2024-01-01T10:00:00Z"}
