"""``GET /ui/samples``: sample transactions for the web page, taken from the world the model learnt.

``vigil features`` writes ``samples.json`` (``{"samples": [{"name", "expect_fraud",
"transaction"}]}``) with real card, merchant and device ids, so the page's first click gets a real
decision with reasons. Each time they are served, every timestamp is moved by whole days to the
latest same time of day before now (a night-time takeover stays at night, and no sample is in
the future), and every transaction id gets a fresh suffix, so a click is scored, not replayed
from the decision store. A missing or unreadable file is an empty list and a log line: the page
still works with its own form.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from vigil_contracts.api import Transaction
from vigil_gateway.deps import SettingsDep

logger = logging.getLogger(__name__)

samples_router = APIRouter(tags=["ui"])

_DAY = timedelta(days=1)


def read_samples(path: Path | None) -> list[dict[str, Any]]:
    """The valid samples of ``path``; ``[]`` (and a log line) if there are none to read."""
    if path is None:
        logger.info("no sample transactions: GATEWAY_SAMPLES_PATH is not set")
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = document["samples"]
        if not isinstance(entries, list):
            raise TypeError("'samples' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning(
            "sample transactions not readable",
            extra={"path": str(path), "reason": f"{type(exc).__name__}: {exc}"},
        )
        return []
    samples = []
    for entry in entries:
        try:
            Transaction.model_validate(entry["transaction"])
            samples.append(
                {
                    "name": str(entry["name"]),
                    "expect_fraud": bool(entry["expect_fraud"]),
                    "transaction": dict(entry["transaction"]),
                }
            )
        except ValidationError as exc:
            # Where and why, never the values (a sample holds a card, a device, an IP address).
            where = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            logger.warning("sample transaction skipped", extra={"path": str(path), "reason": where})
        except (KeyError, TypeError) as exc:  # a sample without a field, or not an object
            logger.warning(
                "sample transaction skipped",
                extra={"path": str(path), "reason": f"{type(exc).__name__}: {exc}"},
            )
    return samples


def latest_same_time(timestamp: datetime, now: datetime) -> datetime:
    """``timestamp`` moved by whole days to the latest such instant not after ``now``."""
    return timestamp + (now - timestamp) // _DAY * _DAY


def refreshed(samples: list[dict[str, Any]], now: datetime, suffix: str) -> list[dict[str, Any]]:
    """The samples as of ``now``: timestamps moved (their offset kept), ids suffixed."""
    out = []
    for sample in samples:
        txn = dict(sample["transaction"])
        ts = datetime.fromisoformat(txn["timestamp"])
        txn["timestamp"] = latest_same_time(ts, now).isoformat()
        txn["transaction_id"] = f"{txn['transaction_id'][:50]}-{suffix}"
        out.append({**sample, "transaction": txn})
    return out


@samples_router.get("/ui/samples", summary="Sample transactions from the model's world")
async def ui_samples(settings: SettingsDep) -> dict[str, Any]:
    samples = await asyncio.to_thread(read_samples, settings.samples_path)
    return {"samples": refreshed(samples, datetime.now(UTC), secrets.token_hex(4))}
