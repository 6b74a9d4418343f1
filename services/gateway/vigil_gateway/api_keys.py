"""API keys: what a key is, how it is stored, and the table every gateway replica mirrors.

A key is a random token shown once, when it is made: ``vk_<id>_<secret>``. Redis keeps only
its keyed hash (HMAC-SHA256 under the server's secret, ``GATEWAY_AUTH_SECRET``), with the key's
id, client name, scopes, optional expiry and optional rate limits, in one hash
(``vigil:{apikeys}``: id -> JSON record) beside a version counter bumped on every change. Each
gateway process mirrors that table (:class:`KeyRing`): it reads the counter every
``GATEWAY_AUTH_REFRESH_S`` (<= 1 s) and the table when the counter moved, so a revocation takes
effect on every replica within a second without a restart, and a request costs no Redis round
trip for authentication. While Redis cannot be read, the last table read stays in force.

``vigil keys create|list|revoke|rotate`` (``vigil/cli.py``) is written on :class:`KeyAdmin`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis

from vigil_gateway.redis_wire import REDIS_FAILURES

logger = logging.getLogger(__name__)

# One hash tag, one slot: the table and its version are written in one transaction, also on a
# Redis Cluster.
TABLE_KEY = "vigil:{apikeys}"
VERSION_KEY = "vigil:{apikeys}:version"
PREFIX = "vk_"
Scope = Literal["score", "admin"]
SCOPES: tuple[str, ...] = ("score", "admin")
#: The development secret: refused in production (``GatewaySettings``).
DEVELOPMENT_SECRET = "vigil-development-secret-not-for-production"


def key_hash(secret: str, token: str) -> str:
    """The keyed hash stored for ``token``: a leaked table gives no usable key, and without the
    server's secret not even a way to test guesses offline."""
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(key id, secret part)`` of a well-formed token, else None."""
    if not token.startswith(PREFIX):
        return None
    key_id, sep, rest = token[len(PREFIX) :].partition("_")
    if not sep or not key_id or not rest or len(token) > 200:
        return None
    return key_id, rest


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored (never the key itself)."""

    key_id: str
    client: str
    scopes: tuple[str, ...]
    hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    requests_per_s: float | None = None
    """Rate limits of this key; None takes the gateway's defaults."""
    request_burst: float | None = None
    transactions_per_s: float | None = None
    transaction_burst: float | None = None

    def to_json(self) -> bytes:
        return orjson.dumps({**self.__dict__, "scopes": list(self.scopes)})

    @classmethod
    def from_json(cls, raw: bytes | str) -> KeyRecord:
        data = orjson.loads(raw)
        data["scopes"] = tuple(data.get("scopes") or ())
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        """What ``vigil keys list`` shows: everything but the hash."""
        return {
            k: v for k, v in {**self.__dict__, "scopes": list(self.scopes)}.items() if k != "hash"
        }

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class KeyRing:
    """The key table as this process last read it, refreshed in the background.

    ``lookup`` is pure CPU: a dict look-up and one HMAC, compared in constant time."""

    def __init__(
        self, client: aioredis.Redis | aioredis.RedisCluster, secret: str, *, refresh_s: float
    ) -> None:
        self.client = client
        self.secret = secret
        self.refresh_s = refresh_s
        self.records: dict[str, KeyRecord] = {}
        self.version: bytes | None = None
        self.loaded_at: float | None = None
        """When the table was last known current (monotonic); None: never read."""

    def lookup(self, token: str) -> KeyRecord | None:
        """The record of ``token`` if the token is one of the table's keys (active or not)."""
        parts = split_token(token)
        if parts is None:
            return None
        record = self.records.get(parts[0])
        # The hash is compared even for an unknown id, so timing tells nothing about ids.
        expected = record.hash if record is not None else "0" * 64
        if not hmac.compare_digest(key_hash(self.secret, token), expected) or record is None:
            return None
        return record

    async def refresh(self) -> None:
        """Read the table if its version moved (one GET, plus one HGETALL on a change)."""
        version = await self.client.get(VERSION_KEY)
        if version is None and self.version is not None:
            # The counter only ever grows: gone, Redis lost its data (restarted without
            # persistence, flushed). Keep the table read before rather than lock every client out.
            if self.records:
                logger.warning("API key table lost from Redis; keeping the last one read")
            self.loaded_at = time.monotonic()
            return
        if version != self.version or self.loaded_at is None:
            raw = await self.client.hgetall(TABLE_KEY)  # type: ignore[misc]  # redis-py types sync and async alike
            records = {}
            for key_id, value in raw.items():
                try:
                    records[key_id.decode()] = KeyRecord.from_json(value)
                except (ValueError, TypeError, KeyError):
                    logger.warning(
                        "unreadable API key record",
                        extra={"key_id": key_id.decode(errors="replace")},
                    )
            self.records, self.version = records, version
        self.loaded_at = time.monotonic()

    async def run(self) -> None:
        """Refresh forever; a failed read keeps the last table (logged once per outage)."""
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    logger.info("API key table readable again")
                failing = False
            except REDIS_FAILURES as exc:
                if not failing:
                    logger.warning(
                        "API key table unreadable; keeping the last one read",
                        extra={"error": repr(exc)},
                    )
                failing = True
            except Exception:  # a bug, never Redis's: logged, and the refresh goes on
                logger.exception("API key table refresh failed; keeping the last one read")
                failing = True
            await asyncio.sleep(self.refresh_s)


class KeyAdmin:
    """Create, list, revoke and rotate keys (the ``vigil keys`` commands, and tests)."""

    def __init__(self, client: aioredis.Redis, secret: str) -> None:
        self.client = client
        self.secret = secret

    async def create(
        self,
        client_name: str,
        scopes: tuple[str, ...] = ("score",),
        *,
        expires_at: float | None = None,
        limits: dict[str, float | None] | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: the token (shown once, never stored) and its record."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be among {SCOPES}, got {sorted(scopes)}")
        key_id = secrets.token_hex(6)
        token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(
            key_id=key_id,
            client=client_name,
            scopes=tuple(scopes),
            hash=key_hash(self.secret, token),
            created_at=time.time(),
            expires_at=expires_at,
            **(limits or {}),
        )
        await self._write(record)
        return token, record

    async def list(self) -> list[KeyRecord]:
        raw = await self.client.hgetall(TABLE_KEY)  # type: ignore[misc]  # redis-py types sync and async alike
        return sorted((KeyRecord.from_json(v) for v in raw.values()), key=lambda r: r.created_at)

    async def get(self, key_id: str) -> KeyRecord:
        raw = await self.client.hget(TABLE_KEY, key_id)  # type: ignore[misc]  # as above
        if raw is None:
            raise LookupError(f"no API key with id {key_id!r}")
        return KeyRecord.from_json(raw)

    async def revoke(self, key_id: str) -> KeyRecord:
        record = await self.get(key_id)
        revoked = KeyRecord(**{**record.__dict__, "revoked_at": time.time()})
        await self._write(revoked)
        return revoked

    async def rotate(self, key_id: str, *, grace_s: float = 0.0) -> tuple[str, KeyRecord]:
        """A new key for the same client, scopes and limits; the old one expires after
        ``grace_s`` (0: at once), so a client can switch without an outage."""
        old = await self.get(key_id)
        limits = {
            name: getattr(old, name)
            for name in (
                "requests_per_s",
                "request_burst",
                "transactions_per_s",
                "transaction_burst",
            )
        }
        token, record = await self.create(
            old.client, old.scopes, expires_at=old.expires_at, limits=limits
        )
        until = time.time() + grace_s
        if old.expires_at is None or old.expires_at > until:
            await self._write(KeyRecord(**{**old.__dict__, "expires_at": until}))
        return token, record

    async def _write(self, record: KeyRecord) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(TABLE_KEY, record.key_id, record.to_json())  # type: ignore[arg-type]  # bytes are fine
            pipe.incr(VERSION_KEY)
            await pipe.execute()
