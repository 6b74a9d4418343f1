"""``vigil keys`` and ``vigil certs dev``: the operator's side of the gateway's API keys and of
its local HTTPS. The keys are written through the gateway's own ``KeyAdmin`` into the gateway's
Redis, hashed with ``GATEWAY_AUTH_SECRET`` (the development secret when unset, as the gateway)."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path
from typing import Any


class KeysError(Exception):
    """A user-facing failure of ``vigil keys`` / ``vigil certs`` (one line, exit code 2)."""


def key_store_client(redis_url: str) -> Any:
    """A client of the gateway's Redis, single or a cluster (``redis+cluster://``)."""
    import redis.asyncio as aioredis

    from vigil_servicekit.redis_url import cluster_url, is_cluster

    # A command, not a service: a Redis that does not answer fails it within seconds.
    if is_cluster(redis_url):
        return aioredis.RedisCluster.from_url(
            cluster_url(redis_url), socket_connect_timeout=5.0, socket_timeout=10.0
        )
    return aioredis.Redis.from_url(redis_url, socket_connect_timeout=5.0, socket_timeout=10.0)


def auth_secret() -> str:
    from vigil_gateway.api_keys import DEVELOPMENT_SECRET

    return os.environ.get("GATEWAY_AUTH_SECRET") or DEVELOPMENT_SECRET


async def run_keys_command(args: argparse.Namespace) -> list[Any]:

    from vigil_gateway.api_keys import KeyAdmin

    client = key_store_client(args.redis_url)
    admin = KeyAdmin(client, auth_secret())
    try:
        if args.action == "create":
            if not args.client:
                raise KeysError("keys create needs --client NAME")
            expires = (
                None if args.expires_in_days is None else time.time() + args.expires_in_days * 86400
            )
            token, record = await admin.create(
                args.client,
                tuple(args.scope or ("score",)),
                expires_at=expires,
                limits={
                    "requests_per_s": args.requests_per_s,
                    "transactions_per_s": args.transactions_per_s,
                },
            )
            return [record.public(), f"key (shown once, store it now): {token}"]
        if args.action == "list":
            return [r.public() for r in await admin.list()]
        if not args.key_id:
            raise KeysError(f"keys {args.action} needs the key id")
        try:
            if args.action == "revoke":
                return [(await admin.revoke(args.key_id)).public()]
            token, record = await admin.rotate(args.key_id, grace_s=args.grace_s)
        except LookupError as exc:
            raise KeysError(str(exc)) from None
        return [record.public(), f"new key (shown once, store it now): {token}"]
    finally:
        await client.aclose()


def dev_certificate(out: Path, *, days: int = 30) -> tuple[Path, Path]:
    """A self-signed EC certificate for ``localhost`` / ``127.0.0.1`` and its key (openssl)."""
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "cert.pem", out / "key.pem"
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                str(days),
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise KeysError("openssl is not installed") from None
    except subprocess.CalledProcessError as exc:
        raise KeysError(f"openssl failed: {exc.stderr.strip()}") from None
    key.chmod(0o600)
    return cert, key
