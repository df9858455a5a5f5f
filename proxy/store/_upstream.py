"""The rows of the gateway as the OAuth client of upstreams: registrations, tokens, flows.

Refresh tokens rotate, so two refreshes of one connection must never run at once, on one instance
or several: `lease` takes a row for one refresher in a conditional UPDATE (it names the token
version it saw, so a lease is never taken on tokens someone already replaced), and `save_tokens`
writes only over the version it names (a refresh ends well within its lease). Authorization states are single-use: `take_state` deletes
the row and succeeds for exactly one caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store import _schema as t
from proxy.store._models import _utc

Key = tuple[str, str]


@dataclass(frozen=True)
class UpstreamAuthRecord:
    """What the gateway knows about authorizing one connection to its upstream."""

    namespace: str
    connection_id: str
    discovered: dict[str, Any]
    version: int
    tokens_sealed: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    refresh_at: float | None = None
    lease_owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True)
class UpstreamStateRecord:
    namespace: str
    connection_id: str
    sealed: str = field(repr=False)
    expires_at: datetime = field(default_factory=datetime.now)


class UpstreamAuthStore(Protocol):
    async def client(self, issuer: str, redirect_uri: str) -> str | None: ...
    async def add_client(self, issuer: str, redirect_uri: str, sealed: str, when: datetime) -> str: ...
    async def auth(self, key: Key) -> UpstreamAuthRecord | None: ...
    async def discovered(
        self, key: Key, discovered: dict[str, Any], expected: int | None, when: datetime
    ) -> int | None: ...
    async def lease(self, key: Key, version: int, owner: str, now: float, until: float) -> bool: ...
    async def release(self, key: Key, owner: str) -> None: ...
    async def save_tokens(
        self,
        key: Key,
        *,
        version: int,
        sealed: str | None,
        expires_at: float | None,
        refresh_at: float | None,
        when: datetime,
    ) -> bool: ...
    async def postpone(self, key: Key, version: int, refresh_at: float) -> None: ...
    async def due(self, before: float) -> list[tuple[Key, int]]: ...
    async def next_due(self) -> float | None: ...
    async def forget(self, key: Key) -> None: ...
    async def add_state(self, state_hash: str, record: UpstreamStateRecord) -> None: ...
    async def take_state(self, state_hash: str, now: datetime) -> UpstreamStateRecord | None: ...


def _where(key: Key) -> sa.ColumnElement[bool]:
    c = t.upstream_auth.c
    return (c.namespace == key[0]) & (c.connection_id == key[1])


class SqlUpstreamAuthStore:
    """`UpstreamAuthStore` over the gateway's SQL engine."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def client(self, issuer: str, redirect_uri: str) -> str | None:
        c = t.upstream_clients.c
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(c.sealed).where(c.issuer == issuer, c.redirect_uri == redirect_uri)
                )
            ).first()
        return row.sealed if row is not None else None

    async def add_client(self, issuer: str, redirect_uri: str, sealed: str, when: datetime) -> str:
        """Store a registration unless one exists (another instance was first); the stored one."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    sa.insert(t.upstream_clients).values(
                        issuer=issuer, redirect_uri=redirect_uri, sealed=sealed, created_at=when
                    )
                )
            return sealed
        except sa.exc.IntegrityError:
            stored = await self.client(issuer, redirect_uri)
            return stored or sealed

    async def auth(self, key: Key) -> UpstreamAuthRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.upstream_auth).where(_where(key)))).first()
        if row is None:
            return None
        return UpstreamAuthRecord(
            namespace=row.namespace,
            connection_id=row.connection_id,
            discovered=row.discovered,
            version=row.version,
            tokens_sealed=row.tokens_sealed,
            expires_at=row.expires_at,
            refresh_at=row.refresh_at,
            lease_owner=row.lease_owner,
            lease_until=row.lease_until,
        )

    async def discovered(
        self, key: Key, discovered: dict[str, Any], expected: int | None, when: datetime
    ) -> int | None:
        """Record what discovery found, in place of the row of version `expected` (None: there is
        no row yet, and the connection exists); the tokens are dropped (they no longer serve). The
        new version, or None when the row moved on meanwhile or the connection is gone."""
        values = {
            "discovered": discovered,
            "tokens_sealed": None,
            "expires_at": None,
            "refresh_at": None,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": when,
        }
        c = t.upstream_auth.c
        if expected is not None:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    sa.update(t.upstream_auth)
                    .where(_where(key), c.version == expected)
                    .values(version=c.version + 1, **values)
                )
            return expected + 1 if result.rowcount == 1 else None
        connection = t.connections.c
        try:
            async with self._engine.begin() as conn:
                exists = (
                    await conn.execute(
                        sa.select(connection.connection_id).where(
                            connection.namespace == key[0], connection.connection_id == key[1]
                        )
                    )
                ).first()
                if exists is None:
                    return None  # deleted meanwhile: leave nothing behind for a later one of that id
                await conn.execute(
                    sa.insert(t.upstream_auth).values(
                        namespace=key[0], connection_id=key[1], version=1, **values
                    )
                )
        except sa.exc.IntegrityError:
            return None  # another writer was first
        return 1

    async def lease(self, key: Key, version: int, owner: str, now: float, until: float) -> bool:
        """Take the right to refresh tokens of `version` until `until`; False when they changed
        meanwhile or another refresher holds an unexpired lease."""
        c = t.upstream_auth.c
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.update(t.upstream_auth)
                .where(
                    _where(key),
                    c.version == version,
                    sa.or_(c.lease_until.is_(None), c.lease_until < now, c.lease_owner == owner),
                )
                .values(lease_owner=owner, lease_until=until)
            )
        return result.rowcount == 1

    async def release(self, key: Key, owner: str) -> None:
        c = t.upstream_auth.c
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(t.upstream_auth)
                .where(_where(key), c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    async def save_tokens(
        self,
        key: Key,
        *,
        version: int,
        sealed: str | None,
        expires_at: float | None,
        refresh_at: float | None,
        when: datetime,
    ) -> bool:
        """Replace the tokens of `version`, ending any lease; False when the row moved on (another
        writer was first). The version goes up by one."""
        c = t.upstream_auth.c
        conditions = [_where(key), c.version == version]
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.update(t.upstream_auth)
                .where(*conditions)
                .values(
                    version=c.version + 1,
                    tokens_sealed=sealed,
                    expires_at=expires_at,
                    refresh_at=refresh_at,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=when,
                )
            )
        return result.rowcount == 1

    async def postpone(self, key: Key, version: int, refresh_at: float) -> None:
        """Try the refresh of `version` again at `refresh_at` (the authorization server was down)."""
        c = t.upstream_auth.c
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(t.upstream_auth)
                .where(_where(key), c.version == version)
                .values(refresh_at=refresh_at)
            )

    async def due(self, before: float) -> list[tuple[Key, int]]:
        """Connections whose tokens should be refreshed before `before`, with their versions."""
        c = t.upstream_auth.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(c.namespace, c.connection_id, c.version).where(
                    c.refresh_at.is_not(None), c.refresh_at <= before
                )
            )
            return [((r.namespace, r.connection_id), r.version) for r in rows]

    async def next_due(self) -> float | None:
        c = t.upstream_auth.c
        async with self._engine.connect() as conn:
            value = (await conn.execute(sa.select(sa.func.min(c.refresh_at)))).scalar()
        return float(value) if value is not None else None

    async def forget(self, key: Key) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(t.upstream_auth).where(_where(key)))

    async def add_state(self, state_hash: str, record: UpstreamStateRecord) -> None:
        c = t.upstream_states.c
        async with self._engine.begin() as conn:
            # Expired flows are dropped as new ones begin: opening setup links cannot fill the table.
            await conn.execute(sa.delete(t.upstream_states).where(c.expires_at < datetime.now(UTC)))
            await conn.execute(
                sa.insert(t.upstream_states).values(
                    state_hash=state_hash,
                    namespace=record.namespace,
                    connection_id=record.connection_id,
                    sealed=record.sealed,
                    expires_at=record.expires_at,
                )
            )

    async def take_state(self, state_hash: str, now: datetime) -> UpstreamStateRecord | None:
        """The state's record, deleted in the same transaction: it is used once. Expired: None."""
        c = t.upstream_states.c
        async with self._engine.begin() as conn:
            row = (await conn.execute(sa.select(t.upstream_states).where(c.state_hash == state_hash))).first()
            if row is None:
                return None
            deleted = await conn.execute(sa.delete(t.upstream_states).where(c.state_hash == state_hash))
            await conn.execute(sa.delete(t.upstream_states).where(c.expires_at < now))
        expires_at = _utc(row.expires_at)
        if deleted.rowcount != 1 or expires_at is None or expires_at < now:
            return None
        return UpstreamStateRecord(row.namespace, row.connection_id, row.sealed, expires_at)
