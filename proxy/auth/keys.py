"""API keys: random, shown once, stored as SHA-256 hashes, checked from an in-memory cache."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from proxy.auth.policy import Principal
from proxy.store import ApiKeyRecord, Store

KEY_PREFIX = "jct_"


_ENV_ADMIN = Principal(kind="api_key", id="env", name="JUNCTION_ADMIN_KEY")


def hash_key(key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is as strong as a slow one here.
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    record: ApiKeyRecord
    key: str


class ApiKeys:
    """Creates, lists, revokes and verifies API keys."""

    def __init__(self, store: Store, admin_key: str = ""):
        self._store = store
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._valid: dict[str, Principal] = {}

    async def create(self, name: str) -> IssuedKey:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            key_hash=hash_key(key),
            prefix=key[: len(KEY_PREFIX) + 4],
            created_at=datetime.now(UTC),
        )
        await self._store.add_api_key(record)
        return IssuedKey(record=record, key=key)

    async def list(self) -> list[ApiKeyRecord]:
        return await self._store.list_api_keys()

    async def revoke(self, key_id: str) -> bool:
        removed = await self._store.delete_api_key(key_id)
        self._valid = {h: p for h, p in self._valid.items() if p.id != key_id}
        return removed

    async def verify(self, presented: str) -> Principal | None:
        """The principal for a presented key, or None. Constant-time where a secret is compared."""
        if not presented or len(presented) > 512:
            return None
        digest = hash_key(presented)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return _ENV_ADMIN
        cached = self._valid.get(digest)
        if cached is not None:
            return cached
        record = await self._store.find_api_key(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        principal = Principal(kind="api_key", id=record.id, name=record.name)
        self._valid[digest] = principal
        return principal

    async def bootstrap(self, data_dir: Path) -> str | None:
        """On first start with no keys and no env key, create the admin key; return it to print once."""
        if self._admin_hash is not None or await self._store.list_api_keys():
            return None
        issued = await self.create("admin")
        await anyio.to_thread.run_sync(_write_secret_file, data_dir / "admin.key", issued.key)
        return issued.key


def _write_secret_file(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)
