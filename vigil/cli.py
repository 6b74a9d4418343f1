"""``vigil``: one command line for the offline steps, the local stack and the demo.

vigil generate      seeded synthetic transactions -> data/raw/transactions.parquet
vigil features      raw transactions -> offline feature tables (parquet) in the Feast repo,
                    and sample transactions from that world (feature_repo/data/samples.json)
vigil apply         feast apply + export of the serving spec
vigil materialize   feast materialize-incremental up to now (--full: the whole window)
vigil train         Feast point-in-time features -> XGBoost -> models/<name>/<version>/
vigil batch-score   score a parquet file of transactions with a model version
vigil stream-seed   the streamer's entity histories from the raw transactions (its "materialize")
vigil serve         the stack (redis, encoder, predictor, streamer, gateway) as local processes
vigil replay        replay the world's last days through the API; compare with the batch side
vigil keys          create, list, revoke or rotate the gateway's API keys (in its Redis)
vigil dead-letters  list what the streamer could not apply, or send it again (requeue)
vigil certs dev     a self-signed certificate and key for the gateway's HTTPS, locally
vigil demo          all of the above end to end, with a private redis-server
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from vigil.warning_filters import quiet_third_party

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure: printed as one clear line, exit code 2."""


def shown_url(url: str) -> str:
    """``url`` as a message may show it: without its password (a Redis URL may carry one)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _say(msg: str) -> None:
    print(f"[vigil] {msg}", file=sys.stderr, flush=True)


def _parse_time(value: str) -> datetime:
    try:
        # 3.11's fromisoformat reads a trailing Z itself, but refuses "2026-01-01Z" (FURB162)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # noqa: FURB162
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_generate(args: argparse.Namespace) -> None:
    from vigil.world import WorldConfig, generate_world

    config = WorldConfig(
        seed=args.seed, n_transactions=args.transactions, n_days=args.days, end=args.end
    )
    out = Path(args.data_dir) / "raw" / "transactions.parquet"
    summary = generate_world(config, out, progress=not args.quiet)
    _say(
        f"wrote {summary.n_transactions:,} transactions ({summary.n_fraud:,} fraud, "
        f"{summary.fraud_rate:.2%}) from {summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d} "
        f"-> {summary.path}"
    )


def _raw_path(args: argparse.Namespace) -> Path:
    path = Path(getattr(args, "raw", None) or Path(args.data_dir) / "raw" / "transactions.parquet")
    if not path.is_file():
        raise CliError(f"{path} does not exist: run `vigil generate` first")
    return path


def cmd_features(args: argparse.Namespace) -> None:
    import pandas as pd

    from vigil import feast_repo
    from vigil.pipeline import write_feature_tables
    from vigil.scenarios import write_samples

    repo = feast_repo.repo_dir(args.repo)
    raw = _raw_path(args)
    paths = write_feature_tables(raw, feast_repo.offline_dir(repo), progress=not args.quiet)
    for name, path in paths.items():
        _say(f"{name}: {path}")
    samples = write_samples(pd.read_parquet(raw), feast_repo.samples_path(repo))
    _say(
        f"{len(samples)} sample transactions ({', '.join(s.name for s in samples)}): "
        f"{feast_repo.samples_path(repo)}"
    )


def cmd_apply(args: argparse.Namespace) -> None:
    from vigil import feast_repo

    repo = feast_repo.repo_dir(args.repo)
    spec = feast_repo.apply(repo)
    for svc in spec.feature_services.values():
        _say(
            f"feature service {svc.name}: {len(svc.features)} features, contract {svc.feature_contract[:19]}…"
        )


def cmd_materialize(args: argparse.Namespace) -> None:
    from vigil import feast_repo

    repo = feast_repo.repo_dir(args.repo)
    report = feast_repo.materialize(repo, args.end, full=args.full)
    _say(
        f"materialized features up to {report.end:%Y-%m-%dT%H:%M:%S}Z into the "
        f"{report.online_store} online store"
    )
    for load in report.views:
        _say(
            f"  {load.view}: {load.rows:,} rows written "
            f"(the latest of each entity from {load.start:%Y-%m-%d %H:%M} to {load.end:%Y-%m-%d %H:%M} UTC)"
        )
    if report.unloaded:
        _say(
            f"the online store holds no complete load of {', '.join(report.unloaded)}: this "
            "incremental run only loads what is new since Feast's last materialization (into any "
            "store), and the services stay not ready. Load it with `vigil materialize --full`."
        )


def cmd_stream_seed(args: argparse.Namespace) -> None:
    from vigil import feast_repo, materialization
    from vigil.stream_seed import seed_from_files

    repo = feast_repo.repo_dir(args.repo)
    online = feast_repo.online_store_config(repo)
    if online.get("type", "redis") != "redis":
        raise CliError("the streamer needs a Redis online store")
    client = materialization.redis_client(online.get("connection_string", "localhost:6379"))
    try:
        report = seed_from_files(client, _raw_path(args), args.end, args.lateness_s)
    finally:
        client.close()
    kinds = ", ".join(f"{n:,} {k.removesuffix('_id')}s" for k, n in report.entities.items())
    _say(
        f"seeded the streamer's histories up to {report.end:%Y-%m-%dT%H:%M:%S}Z: "
        f"{report.records:,} records of {report.transactions:,} transactions ({kinds}), "
        f"{report.fx_rates:,} dated FX rates"
    )


def cmd_replay(args: argparse.Namespace) -> None:
    from vigil import feast_repo
    from vigil.replay import replay

    report = replay(
        feast_repo.repo_dir(args.repo),
        _raw_path(args),
        Path(args.models_dir),
        Path(args.data_dir) / "replay",
        days=args.days,
        limit=args.limit,
        model_version=args.version,
        progress=_say,
    )
    for line in report.lines():
        print(line)
    if report.feature_mismatches:
        for line in report.feature_mismatches[:10]:
            print(f"  differs: {line}")


def cmd_train(args: argparse.Namespace) -> None:
    from vigil import feast_repo
    from vigil.training import TrainConfig, headline, train
    from vigil_contracts.artifact import read_metadata

    config = TrainConfig(
        seed=args.seed,
        model_name=args.model_name,
        version=args.version,
        feature_service=args.feature_service,
        label_maturity_days=args.label_wait_days,
    )
    model_dir = train(
        _raw_path(args),
        feast_repo.repo_dir(args.repo),
        Path(args.models_dir),
        config,
        progress=_say,
    )
    print(headline(read_metadata(model_dir)))


def cmd_batch_score(args: argparse.Namespace) -> None:
    from vigil import feast_repo
    from vigil.batch import score_file

    scored = score_file(
        Path(args.input),
        Path(args.output),
        feast_repo.repo_dir(args.repo),
        Path(args.models_dir),
        args.model_name,
        args.version,
        args.with_features,
    )
    counts = scored["label"].value_counts().to_dict()
    _say(
        f"scored {len(scored):,} transactions with {args.model_name} "
        f"v{scored['model_version'].iloc[0] if len(scored) else '?'} -> {args.output}; labels {counts}"
    )


def cmd_serve(args: argparse.Namespace) -> None:
    import signal
    import threading

    from vigil import feast_repo
    from vigil.runner import LocalStack

    repo = feast_repo.repo_dir(args.repo)
    if not feast_repo.spec_path(repo).is_file():
        raise CliError("no serving spec: run `vigil apply` (and `vigil materialize`) first")
    stack = LocalStack(
        repo,
        Path(args.models_dir),
        Path(args.data_dir) / "logs",
        redis_url=args.redis_url,
        fixed_ports=not args.free_ports,
        with_streamer=not args.no_streamer,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with stack:
        _say("the stack is ready:\n" + stack.describe())
        _say(
            f"business API: {stack.services['gateway'].url}/v1/transactions/score  "
            f"web page: {stack.services['gateway'].url}/ui  (Ctrl-C stops everything)"
        )
        _say(
            f"an API key for this stack (shown once; more with `vigil keys create --client NAME "
            f"--redis-url {stack.redis_url}`): {stack.api_key}"
        )
        try:
            while not stopping.wait(1.0):
                for name, svc in stack.services.items():
                    if svc.process.poll() is not None:
                        raise CliError(
                            f"{name} exited with {svc.process.returncode}; see {svc.log_path}"
                        )
        except KeyboardInterrupt:
            pass
        _say("stopping")


def cmd_keys(args: argparse.Namespace) -> None:
    import asyncio
    import json

    from redis.exceptions import RedisClusterException, RedisError

    from vigil.keys import KeysError, run_keys_command

    try:
        lines = asyncio.run(run_keys_command(args))
    except KeysError as exc:
        raise CliError(str(exc)) from None
    except (RedisError, RedisClusterException, OSError) as exc:
        raise CliError(
            f"Redis at {shown_url(args.redis_url)}: {type(exc).__name__}: {exc}"
        ) from None
    for line in lines:
        print(line if isinstance(line, str) else json.dumps(line))


def cmd_dead_letters(args: argparse.Namespace) -> None:
    import redis

    from vigil.dead_letters import list_dead_letters, requeue

    client = redis.Redis.from_url(args.redis_url, socket_timeout=10, socket_connect_timeout=5)
    try:
        if args.action == "list":
            if args.entry_ids:
                raise CliError("dead-letters list takes no entry id (see --count)")
            letters = list_dead_letters(client, args.dead_letter_stream, args.count)
            for letter in letters:
                print(letter.line())
            _say(f"{len(letters):,} dead letters shown ({args.dead_letter_stream})")
            return
        if not args.entry_ids and not args.all:
            raise CliError("dead-letters requeue needs entry ids or --all")
        if args.entry_ids and args.all:
            raise CliError("dead-letters requeue takes entry ids or --all, not both")
        done = requeue(
            client, args.dead_letter_stream, args.stream, None if args.all else args.entry_ids
        )
    except redis.RedisError as exc:
        raise CliError(
            f"Redis at {shown_url(args.redis_url)}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        client.close()
    _say(f"sent {len(done.sent):,} dead letters to {args.stream} again")
    if done.kept:
        _say(f"left {len(done.kept):,} (no event kept, or not found): {' '.join(done.kept)}")


def cmd_certs(args: argparse.Namespace) -> None:
    from vigil.keys import KeysError, dev_certificate

    try:
        cert, key = dev_certificate(Path(args.out), days=args.days)
    except KeysError as exc:
        raise CliError(str(exc)) from None
    _say(
        f"wrote {cert} and {key} (self-signed, for localhost and 127.0.0.1; local use only): "
        f"GATEWAY_TLS_CERTFILE={cert} GATEWAY_TLS_KEYFILE={key}"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from vigil.demo import run_demo

    run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("VIGIL_DATA_DIR", "data"),
        help="where raw and scored data live (default: %(default)s)",
    )
    parser.add_argument(
        "--repo",
        default=None,
        help="the Feast repo folder (default: $VIGIL_FEATURE_REPO or ./feature_repo)",
    )
    parser.add_argument(
        "--models-dir",
        default=os.environ.get("VIGIL_MODELS_DIR", "models"),
        help="model artifacts root (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], None], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        return p

    p = add("generate", cmd_generate, "generate the seeded synthetic payments world")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--transactions",
        type=int,
        default=200_000,
        help="about how many transactions (default %(default)s; up to 10M)",
    )
    p.add_argument("--days", type=int, default=120, help="days of history (default %(default)s)")
    p.add_argument(
        "--end",
        type=_parse_time,
        default=None,
        help="exclusive end of the data (default: today 00:00 UTC)",
    )

    p = add("features", cmd_features, "compute the offline feature tables from raw transactions")
    p.add_argument(
        "--raw", help="raw transactions parquet (default: DATA_DIR/raw/transactions.parquet)"
    )

    add("apply", cmd_apply, "feast apply and export the serving spec")

    p = add("materialize", cmd_materialize, "feast materialize-incremental up to now")
    p.add_argument(
        "--end", type=_parse_time, default=None, help="end time (default: now; never later)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="load the whole freshness window (for an empty or new online store)",
    )

    p = add(
        "stream-seed",
        cmd_stream_seed,
        "seed the streamer's entity histories (and dated FX rates) from the raw transactions",
    )
    p.add_argument(
        "--raw", help="raw transactions parquet (default: DATA_DIR/raw/transactions.parquet)"
    )
    p.add_argument(
        "--end",
        type=_parse_time,
        default=None,
        help="histories of the transactions before this time (default: now)",
    )
    p.add_argument(
        "--lateness-s",
        type=float,
        default=3600.0,
        help="the streamer's STREAMER_ALLOWED_LATENESS_S (default %(default)s)",
    )

    p = add(
        "replay",
        cmd_replay,
        "replay the world's last days through the business API on a "
        "private stack with the streamer; compare with the batch side",
    )
    p.add_argument(
        "--raw", help="raw transactions parquet (default: DATA_DIR/raw/transactions.parquet)"
    )
    p.add_argument(
        "--days",
        type=float,
        default=1.0,
        help="replay from midnight UTC this many days before the world's end",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many transactions")
    p.add_argument("--version", default=None, help="model version (default: latest)")

    p = add("train", cmd_train, "train a model version from Feast point-in-time features")
    p.add_argument("--raw", help="labelled raw transactions parquet")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model-name", default="fraud_detector")
    p.add_argument("--version", default=None, help="version to write (default: next number)")
    p.add_argument("--feature-service", default="fraud_model_v1")
    p.add_argument(
        "--label-wait-days",
        type=float,
        default=None,
        help="days a fraud label takes to be known (default: the p95 of the chargeback "
        "delays of payments old enough to have all theirs; the card says which)",
    )

    p = add("batch-score", cmd_batch_score, "score a parquet file of transactions offline")
    p.add_argument("--input", required=True, help="parquet of transactions")
    p.add_argument("--output", required=True, help="parquet to write scores and labels to")
    p.add_argument("--model-name", default="fraud_detector")
    p.add_argument("--version", default=None, help="model version (default: latest)")
    p.add_argument("--with-features", action="store_true", help="also write the feature vectors")

    p = add("serve", cmd_serve, "start redis + encoder + predictor + gateway as local processes")
    p.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis (default: start a private redis-server; it then holds "
        "no features until `vigil materialize` runs against it)",
    )
    p.add_argument("--free-ports", action="store_true", help="pick free ports instead of 8000-8003")
    p.add_argument(
        "--no-streamer",
        action="store_true",
        help="do not start the streamer (online features then change only by materialize)",
    )

    p = add(
        "keys",
        cmd_keys,
        "manage the gateway's API keys (GATEWAY_AUTH_SECRET must be the "
        "gateway's; a new key is printed once)",
    )
    p.add_argument("action", choices=["create", "list", "revoke", "rotate"])
    p.add_argument("key_id", nargs="?", help="the key to revoke or rotate")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("GATEWAY_REDIS_URL", "redis://localhost:6379/0"),
        help="the gateway's Redis (default: $GATEWAY_REDIS_URL or %(default)s)",
    )
    p.add_argument("--client", help="who the key is for (create)")
    p.add_argument(
        "--scope",
        action="append",
        choices=["score", "admin"],
        help="a scope of the new key (repeatable; default: score)",
    )
    p.add_argument("--expires-in-days", type=float, default=None, help="expiry of the new key")
    p.add_argument("--requests-per-s", type=float, default=None, help="the key's own request rate")
    p.add_argument(
        "--transactions-per-s", type=float, default=None, help="the key's own transaction rate"
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=0.0,
        help="rotate: how long the old key stays valid (default: revoked at once)",
    )

    p = add(
        "dead-letters",
        cmd_dead_letters,
        "list the decision events the streamer could not apply (with the reason), or send "
        "them to the decision stream again once the cause is fixed",
    )
    p.add_argument("action", choices=["list", "requeue"])
    p.add_argument("entry_ids", nargs="*", help="requeue: these dead-letter entry ids")
    p.add_argument("--all", action="store_true", help="requeue: every dead letter")
    p.add_argument("--count", type=int, default=None, help="list: at most this many (oldest)")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("STREAMER_REDIS_URL", "redis://localhost:6379/0"),
        help="the streamer's Redis (default: $STREAMER_REDIS_URL or %(default)s)",
    )
    p.add_argument(
        "--stream",
        default=os.environ.get("STREAMER_STREAM", "vigil:decisions"),
        help="the decision stream (default: $STREAMER_STREAM or %(default)s)",
    )
    p.add_argument(
        "--dead-letter-stream",
        default=os.environ.get("STREAMER_DEAD_LETTER_STREAM", "vigil:decisions:dead"),
        help="the dead-letter stream (default: $STREAMER_DEAD_LETTER_STREAM or %(default)s)",
    )

    p = add("certs", cmd_certs, "make a self-signed certificate and key for local HTTPS")
    p.add_argument("kind", choices=["dev"])
    p.add_argument("--out", default="certs", help="folder to write cert.pem and key.pem to")
    p.add_argument("--days", type=int, default=30)

    p = add("demo", cmd_demo, "run the whole job end to end with a private redis-server")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--transactions", type=int, default=200_000)
    p.add_argument("--days", type=int, default=120)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party()  # libraries' deprecation notices are not the user's to act on
    from vigil.errors import USER_ERRORS

    user_errors: tuple[type[Exception], ...] = (CliError, *USER_ERRORS)
    try:
        args.func(args)
    except user_errors as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
