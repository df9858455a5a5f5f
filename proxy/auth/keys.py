"""API keys: random, shown once, stored as SHA-256 hashes, checked from an in-memory cache.

Revoking is immediate: a check that was already waiting on the store when the key was revoked
may still let its own request through, but it can no longer put the key back into the cache.
`lastUsedAt` is kept in memory on every check (one dict write) and written to the store by
`run_flusher` at most once per `LAST_USED_FLUSH_INTERVAL` per key, off the request path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import anyio

from proxy.auth.policy import Principal
from proxy.store import ApiKeyRecord, Store

KEY_PREFIX = "jct_"
LAST_USED_FLUSH_INTERVAL = 60.0

log = logging.getLogger("junction.keys")


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
        # The environment key's id names its hash, so tokens minted with it die when it changes.
        env_id = "env_" + self._admin_hash[:16] if self._admin_hash else ""
        self._env_admin = Principal(kind="api_key", id=env_id, name="JUNCTION_ADMIN_KEY", key_id=env_id)
        self._live: set[str] = set()  # ids of the stored keys, for tokens bound to them
        self._valid: dict[str, Principal] = {}
        # Bumped by every revoke: a check that read the store before a revoke finished must not
        # cache what it read (the key may be the one revoked).
        self._generation = 0
        self._used: dict[str, float] = {}  # key id -> time.time() of its latest use, not yet stored

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
        self._generation += 1  # a key-id read in flight must not drop the new key
        self._live.add(record.id)
        return IssuedKey(record=record, key=key)

    async def list(self) -> list[ApiKeyRecord]:
        """Every stored key, with `last_used_at` as of the latest use (even if not yet written)."""
        records = await self._store.list_api_keys()
        return [self._with_last_use(r) for r in records]

    def _with_last_use(self, record: ApiKeyRecord) -> ApiKeyRecord:
        used = self._used.get(record.id)
        if used is None:
            return record
        when = datetime.fromtimestamp(used, UTC)
        if record.last_used_at is not None and record.last_used_at >= when:
            return record
        return replace(record, last_used_at=when)

    async def revoke(self, key_id: str) -> bool:
        removed = await self._store.delete_api_key(key_id)
        # After the delete, in one step: checks in flight will not cache, and the cache forgets it.
        self._generation += 1
        self._valid = {h: p for h, p in self._valid.items() if p.id != key_id}
        self._used.pop(key_id, None)
        self._live.discard(key_id)
        return removed

    def is_live(self, key_id: str) -> bool:
        """Whether the API key with this id still exists (tokens minted under it live as long)."""
        return key_id in self._live or (key_id == self._env_admin.id and self._admin_hash is not None)

    async def confirm_live(self, key_id: str) -> bool:
        """Ask the store about a key id this instance does not know (made by another instance
        since the last sync); remember it when it exists."""
        generation = self._generation
        if not key_id or not await self._store.has_api_key(key_id):
            return False
        if generation != self._generation:
            return False  # revoked here meanwhile, or ids changed: the next sync decides
        self._live.add(key_id)
        return True

    @property
    def generation(self) -> int:
        """Changes with every revoke: read it before reading key ids from the store."""
        return self._generation

    def set_live(self, key_ids: set[str], generation: int) -> None:
        """The stored key ids as read from the store (keys made or revoked by other instances),
        unless a revoke ran here since `generation` was read (the read may predate it)."""
        if generation == self._generation:
            self._live = set(key_ids)

    def recognizes(self, credential: str) -> bool:
        """Last in the chain: whatever no other authenticator recognizes is tried as an API key."""
        return True

    async def authenticate(self, credential: str) -> Principal | None:
        return await self.verify(credential)

    async def verify(self, presented: str) -> Principal | None:
        """The principal for a presented key, or None. Constant-time where a secret is compared."""
        if not presented or len(presented) > 512:
            return None
        digest = hash_key(presented)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return self._env_admin
        cached = self._valid.get(digest)
        if cached is not None:
            self._used[cached.id] = time.time()
            return cached
        generation = self._generation
        record = await self._store.find_api_key(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        principal = Principal(kind="api_key", id=record.id, name=record.name, key_id=record.id)
        if generation == self._generation:
            self._valid[digest] = principal
        self._used[principal.id] = time.time()
        return principal

    async def flush_last_used(self) -> int:
        """Write the pending `lastUsedAt` times to the store; return how many keys were written."""
        if not self._used:
            return 0
        used, self._used = self._used, {}
        try:
            await self._store.touch_api_keys({k: datetime.fromtimestamp(t, UTC) for k, t in used.items()})
        except BaseException:
            for key_id, when in used.items():  # keep them for the next round, unless used since
                self._used.setdefault(key_id, when)
            raise
        return len(used)

    async def run_flusher(self, interval: float = LAST_USED_FLUSH_INTERVAL) -> None:
        """Flush `lastUsedAt` every `interval` seconds, forever (run it in the app's task group)."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.flush_last_used()
            except Exception:  # the store is down: the times stay pending for the next round
                log.warning("could not record when API keys were last used", exc_info=True)

    async def close(self) -> None:
        """Write what is pending before the process exits."""
        try:
            await self.flush_last_used()
        except Exception:
            log.warning("could not record when API keys were last used", exc_info=True)

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
