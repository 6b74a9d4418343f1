"""Replay a period of the world through the business API, with the streamer keeping the online
features current, and hold the outcome against the batch side.

The stack runs on a private Redis loaded as it would have been when the period began: ``vigil
materialize --full --end START`` (Feast's own materialization) and ``vigil stream-seed --end
START`` (the streamer's histories). The period's transactions are then sent one by one in time
order; a transaction whose card, merchant or device had an earlier transaction in the replay is
sent once that one's features are visible online (as a real card's next payment, seconds later,
finds them; the wait is reported). At the end, once the streamer has caught up:

* every touched entity's online row must equal the batch pipeline's newest row over the same
  history (``compute_feature_tables`` of every transaction before the period's end);
* the live labels are compared with the offline point-in-time batch scoring of the same
  transactions (``vigil.batch.score_frame``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from vigil import feast_repo
from vigil.fx import FX_FILE, read_fx_table
from vigil.pipeline import ENTITY_KEYS, FEATURE_TABLES, compute_feature_tables
from vigil.redis_server import RedisServer
from vigil.runner import LocalStack
from vigil.stream_seed import seed_histories
from vigil_contracts.feature_contract import short_name
from vigil_contracts.request_features import OUTPUT_FEATURES


@dataclass
class ReplayReport:
    start: datetime
    end: datetime
    transactions: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    waits: int = 0
    """Transactions held until an earlier transaction's features were visible online."""
    wait_ms: list[float] = field(default_factory=list)
    entities_checked: int = 0
    feature_mismatches: list[str] = field(default_factory=list)
    labels_agree: float = 0.0
    """Share of the compared transactions whose live label is the offline one."""
    stale_by_wall_clock: int = 0
    """Answered ``FEATURES_STALE`` online although fresh at the transaction's own time: the
    encoder judges a row's age by the wall clock, and the replayed transactions are days old.
    Left out of the comparison (a live transaction is scored at its own time)."""
    label_disagreements: list[tuple[str, str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    catch_up_s: float = 0.0

    def lines(self) -> list[str]:
        waits = np.asarray(self.wait_ms or [0.0])
        return [
            f"replayed {self.transactions:,} transactions from {self.start:%Y-%m-%d %H:%M} to "
            f"{self.end:%Y-%m-%d %H:%M} UTC in {self.elapsed_s:.1f} s; labels {self.answered}",
            f"held for an earlier transaction's features: {self.waits} "
            f"(wait p50 {np.percentile(waits, 50):.1f} ms, p99 {np.percentile(waits, 99):.1f} ms, "
            f"max {waits.max():.1f} ms); streamer caught up {self.catch_up_s:.2f} s after the last answer",
            f"online features of {self.entities_checked:,} touched entities vs the batch pipeline: "
            f"{len(self.feature_mismatches)} differ (rel 1e-9)",
            f"labels agree with offline point-in-time batch scoring on {self.labels_agree:.2%} "
            f"({len(self.label_disagreements)} differ; {self.stale_by_wall_clock} answered stale only "
            "because the replay runs after the period: left out)",
        ]


def transaction_body(row: Any) -> dict[str, Any]:
    """A raw world transaction (a row with attribute access) as the business API's request body."""
    body = {
        "transaction_id": str(row.transaction_id),
        "card_id": row.card_id,
        "merchant_id": row.merchant_id,
        "amount": float(row.amount),
        "currency": row.currency,
        "timestamp": row.event_timestamp.isoformat(),
        "channel": row.channel,
    }
    if isinstance(row.country, str):
        body["country"] = row.country
    if isinstance(row.device_id, str):
        body["device_id"] = row.device_id
    if isinstance(getattr(row, "ip_address", None), str):
        body["ip_address"] = row.ip_address
    return body


def online_rows(
    client: Any, project: str, targets: list[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Each target's row of its view as Feast's protobufs hold it (None for an empty value)."""
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    from vigil_streamer.feast_layout import field_name, redis_key, timestamp_field

    views = {join_key: view for view, join_key in ENTITY_KEYS.items()}
    pipe = client.pipeline(transaction=False)
    for join_key, value in targets:
        view = views[join_key]
        pipe.hmget(
            redis_key(join_key, value, project),
            [timestamp_field(view), *(field_name(view, f) for f in FEATURE_TABLES[view])],
        )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for target, replies in zip(targets, pipe.execute(), strict=True):
        view = views[target[0]]
        if replies[0] is None:
            continue
        stamp = Timestamp()
        stamp.ParseFromString(replies[0])
        row: dict[str, Any] = {"_ts_us": stamp.seconds * 1_000_000 + stamp.nanos // 1000}
        for name, raw in zip(FEATURE_TABLES[view], replies[1:], strict=True):
            value = Value()
            value.ParseFromString(raw or b"")
            kind = value.WhichOneof("val")
            if kind is None or kind == "null_val":
                row[name] = None
            elif kind.endswith("_list_val"):
                row[name] = list(getattr(value, kind).val)
            else:
                row[name] = getattr(value, kind)
        out[target] = row
    return out


def compare_rows(expected: dict[str, Any], online: dict[str, Any], rel: float = 1e-9) -> list[str]:
    """The features on which ``online`` differs from ``expected`` (floats within ``rel``)."""
    bad = []
    for name, want in expected.items():
        got = online.get(name)
        if isinstance(want, float) and isinstance(got, float):
            if not math.isclose(want, got, rel_tol=rel, abs_tol=rel):
                bad.append(f"{name}: {got!r} != {want!r}")
        elif isinstance(want, list) and isinstance(got, list):  # an entity's event list
            pairs = (
                [(str(i), x) for i, x in enumerate(want)],
                [(str(i), x) for i, x in enumerate(got)],
            )
            if len(want) != len(got) or compare_rows(dict(pairs[0]), dict(pairs[1]), rel):
                bad.append(f"{name}: {got!r} != {want!r}")
        elif want != got and not (want is None and got is None):
            bad.append(f"{name}: {got!r} != {want!r}")
    return bad


def expected_rows(
    raw: pd.DataFrame, fx: pd.DataFrame | None, end: datetime, targets: list[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The batch pipeline's newest row of each target over every transaction before ``end``."""
    ts = pd.to_datetime(raw["event_timestamp"], utc=True)
    tables = compute_feature_tables(raw[ts < pd.Timestamp(end)].reset_index(drop=True), fx_rates=fx)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    wanted = set(targets)
    for view, join_key in ENTITY_KEYS.items():
        last = tables[view].drop_duplicates(subset=[join_key], keep="last")
        last = last[[(join_key, v) in wanted for v in last[join_key]]]
        for record in last.to_dict("records"):
            row = {n: record[n] for n in FEATURE_TABLES[view]}
            row = {
                n: (
                    None
                    if isinstance(v, float) and math.isnan(v)
                    else int(v)
                    if isinstance(v, np.integer)
                    else float(v)
                    if isinstance(v, np.floating)
                    else v
                )
                for n, v in row.items()
            }
            row["_ts_us"] = int(pd.Timestamp(record["event_timestamp"]).value // 1000)
            out[(join_key, record[join_key])] = row
    return out


def wait_visible(
    client: Any,
    project: str,
    pending: dict[tuple[str, str], int],
    keys: list[tuple[str, str]],
    timeout_s: float,
) -> float:
    """Wait (at most ``timeout_s``) until each of ``keys`` with a pending stamp shows that stamp
    (or newer) online; those that do leave ``pending``. Milliseconds waited."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from vigil_streamer.feast_layout import redis_key, timestamp_field

    views = {join_key: view for view, join_key in ENTITY_KEYS.items()}
    todo = [k for k in keys if k in pending]
    if not todo:
        return 0.0
    started = time.perf_counter()
    deadline = started + timeout_s
    while todo and time.perf_counter() < deadline:
        pipe = client.pipeline(transaction=False)
        for join_key, value in todo:
            pipe.hget(redis_key(join_key, value, project), timestamp_field(views[join_key]))
        left = []
        for key, raw in zip(todo, pipe.execute(), strict=True):
            stamp = Timestamp()
            stamp.ParseFromString(raw or b"")
            if stamp.seconds * 1_000_000 + stamp.nanos // 1000 < pending[key]:
                left.append(key)
            else:
                del pending[key]
        todo = left
        if todo:
            time.sleep(0.001)
    return 1000 * (time.perf_counter() - started)


def offline_labels(transactions: pd.DataFrame, repo: Path, model_dir: Path) -> dict[str, str]:
    """Offline point-in-time labels (``vigil.batch.score_frame``) under the model's serving
    policy, as the gateway applies it: a vector missing more than the allowed share of its
    stored features is ``uncertain`` (offline, a row older than its TTL is missing)."""
    from vigil.batch import load_model, score_frame

    _, meta = load_model(model_dir)
    scored = score_frame(transactions, repo, model_dir, with_features=True)
    spec = feast_repo.load_serving_spec(repo).feature_services[meta["feature_service"]]
    # The gateway's rule (model_metadata.is_stored): every feature of an entity, stored or
    # finished at request time from its stored events, but not the request-time transform's.
    stored = [f.name for f in spec.features if short_name(f.name) not in OUTPUT_FEATURES]
    allowed = float(meta["serving_policy"]["max_missing_stored_fraction"])
    missing = scored[stored].isna().mean(axis=1) > allowed
    labels = scored["label"].where(~missing, "uncertain")
    return dict(zip(scored["transaction_id"].astype(str), labels.astype(str), strict=True))


def wait_caught_up(client: Any, stream: str, group: str, timeout_s: float = 60.0) -> float:
    """Seconds until the group has read and acknowledged everything on the stream."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        groups = (
            {
                g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                for g in client.xinfo_groups(stream)
            }
            if client.exists(stream)
            else {}
        )
        g = groups.get(group)
        if g is not None and (g.get("lag") or 0) == 0 and (g.get("pending") or 0) == 0:
            return time.monotonic() - started
        time.sleep(0.01)
    raise TimeoutError(f"the streamer did not catch up within {timeout_s:.0f} s")


def replay(
    repo: Path,
    raw_path: Path,
    models_dir: Path,
    work_dir: Path,
    *,
    days: float = 1.0,
    end: datetime | None = None,
    limit: int | None = None,
    model_version: str | None = None,
    progress: Any = None,
    fault: Any = None,
) -> ReplayReport:
    """Replay the last ``days`` before ``end`` (default: the world's last transaction) of the
    world at ``raw_path`` on a private stack; see the module. ``fault(i, stack, redis_server)``,
    if given, is called after the ``i``-th answer (the fault tests kill or hang things there)."""
    from vigil.batch import resolve_version
    from vigil.materialization import redis_client

    raw = pd.read_parquet(raw_path)
    fx_path = raw_path.parent / FX_FILE
    fx = read_fx_table(fx_path) if fx_path.is_file() else None
    ts = pd.to_datetime(raw["event_timestamp"], utc=True)
    stop = pd.Timestamp(end) if end is not None else ts.max() + pd.Timedelta(microseconds=1)
    start = (stop - pd.Timedelta(days=days)).floor("D")
    period = raw[(ts >= start) & (ts < stop)].copy()
    period["event_timestamp"] = ts[period.index]
    period = period.sort_values("event_timestamp", kind="stable")
    if limit is not None:
        period = period.head(limit)
        stop = period["event_timestamp"].max() + pd.Timedelta(microseconds=1)
    if period.empty:
        raise ValueError("no transactions in the replay period")
    report = ReplayReport(start.to_pydatetime(), stop.to_pydatetime())
    say = progress or (lambda _msg: None)

    work_dir.mkdir(parents=True, exist_ok=True)
    own_repo = work_dir / "feature_repo"
    if own_repo.exists():
        shutil.rmtree(own_repo)
    shutil.copytree(repo, own_repo, ignore=shutil.ignore_patterns("offline"))
    (own_repo / "data" / "offline").symlink_to(feast_repo.offline_dir(repo).resolve())
    server = RedisServer(log_path=work_dir / "redis.log").start()
    previous = os.environ.get("VIGIL_REDIS_CONNECTION_STRING")
    os.environ["VIGIL_REDIS_CONNECTION_STRING"] = server.connection_string
    client = redis_client(server.connection_string)
    try:
        say(f"loading the online store as of {start:%Y-%m-%d %H:%M} UTC (feast materialize) ...")
        feast_repo.materialize(own_repo, start.to_pydatetime(), full=True)
        seed_histories(client, raw, fx, start.to_pydatetime())
        project = next(
            iter(feast_repo.load_serving_spec(own_repo).feature_services.values())
        ).project
        stack = LocalStack(
            own_repo,
            models_dir,
            work_dir / "logs",
            redis_url=server.url,
            with_streamer=True,
            key_limits={
                "requests_per_s": 1e6,
                "request_burst": 1e6,
                "transactions_per_s": 1e6,
                "transaction_burst": 1e6,
            },
        )
        with stack:
            say(
                f"replaying {len(period):,} transactions through {stack.services['gateway'].url} ..."
            )
            online = _send(
                stack,
                client,
                project,
                period,
                report,
                None if fault is None else lambda i: fault(i, stack, server),
            )
            report.catch_up_s = wait_caught_up(client, "vigil:decisions", "streamer")
            touched = sorted(
                {
                    (k, v)
                    for row in period.itertuples()
                    for k, v in (
                        ("card_id", row.card_id),
                        ("merchant_id", row.merchant_id),
                        ("device_id", row.device_id),
                    )
                    if isinstance(v, str)
                }
            )
            got = online_rows(client, project, touched)
        want = expected_rows(raw, fx, stop.to_pydatetime(), touched)
        report.entities_checked = len(touched)
        for target in touched:
            if target not in got or target not in want:
                report.feature_mismatches.append(
                    f"{target}: online {target in got}, batch {target in want}"
                )
                continue
            bad = compare_rows(want[target], got[target])
            if bad:
                report.feature_mismatches.append(f"{target}: {'; '.join(bad[:4])}")
        model_dir = resolve_version(models_dir, "fraud_detector", model_version)
        offline = offline_labels(period.reset_index(drop=True), repo, model_dir)
        compared = 0
        agree = 0
        for tid, label in online.items():
            want_label = offline[tid]
            if label == "uncertain:FEATURES_STALE" and want_label != "uncertain":
                report.stale_by_wall_clock += 1
                continue
            compared += 1
            if want_label == label.split(":")[0]:
                agree += 1
            else:
                report.label_disagreements.append((tid, label, want_label))
        report.labels_agree = agree / max(compared, 1)
    finally:
        client.close()
        server.stop()
        if previous is None:
            os.environ.pop("VIGIL_REDIS_CONNECTION_STRING", None)
        else:
            os.environ["VIGIL_REDIS_CONNECTION_STRING"] = previous
    return report


def _send(
    stack: LocalStack,
    client: Any,
    project: str,
    period: pd.DataFrame,
    report: ReplayReport,
    fault: Any = None,
) -> dict[str, str]:
    labels: dict[str, str] = {}
    pending: dict[tuple[str, str], int] = {}  # entity -> stamp its row must reach
    started = time.perf_counter()
    with httpx.Client(
        base_url=stack.services["gateway"].url,
        timeout=10.0,
        headers={"authorization": f"Bearer {stack.api_key}"},
    ) as http:
        for row in period.itertuples():
            keys = [
                (k, v)
                for k, v in (
                    ("card_id", row.card_id),
                    ("merchant_id", row.merchant_id),
                    ("device_id", row.device_id),
                )
                if isinstance(v, str)
            ]
            if any(k in pending for k in keys):
                report.waits += 1
                with contextlib.suppress(Exception):  # a hung Redis: go on after the timeout
                    report.wait_ms.append(
                        wait_visible(client, project, pending, keys, timeout_s=10.0)
                    )
            answer = http.post("/v1/transactions/score", json=transaction_body(row))
            answer.raise_for_status()
            body = answer.json()
            label = body["label"]
            if label == "uncertain":
                label = f"uncertain:{body['reasons'][0]['code']}"
            labels[str(row.transaction_id)] = label
            report.answered[label] = report.answered.get(label, 0) + 1
            stamp = int(row.event_timestamp.value // 1000) + 1
            for key in keys:
                pending[key] = max(pending.get(key, 0), stamp)
            if fault is not None:
                fault(len(labels))
    report.transactions = len(labels)
    report.elapsed_s = time.perf_counter() - started
    return labels
