"""The authorization server's rows: registered clients, grants, codes and refresh tokens.

Codes and refresh tokens are single-use: `use_code` and `use_refresh_token` mark a row used in
one conditional UPDATE, so of two concurrent uses exactly one wins, on one instance or several.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store import _schema as t
from proxy.store._models import AuthCodeRecord, OAuthClientRecord, OAuthGrantRecord, _utc

Use = Literal["ok", "used", "unknown"]


class OAuthStore(Protocol):
    async def add_client(self, record: OAuthClientRecord) -> None: ...
    async def client(self, client_id: str) -> OAuthClientRecord | None: ...
    async def add_grant(self, record: OAuthGrantRecord) -> None: ...
    async def grant(self, grant_id: str) -> OAuthGrantRecord | None: ...
    async def grants(self, key_id: str | None, live_at: datetime) -> list[OAuthGrantRecord]: ...
    async def revoke_grant(self, grant_id: str, when: datetime) -> bool: ...
    async def add_code(self, record: AuthCodeRecord) -> None: ...
    async def use_code(self, code_hash: str, when: datetime) -> tuple[Use, AuthCodeRecord | None]: ...
    async def add_refresh_token(self, token_hash: str, grant_id: str, when: datetime) -> None: ...
    async def use_refresh_token(
        self, token_hash: str, client_id: str, when: datetime
    ) -> tuple[Use, str | None]: ...
    async def refresh_token_grant(self, token_hash: str) -> str | None: ...
    async def prune(self, now: datetime) -> int: ...


def _grant(row: sa.Row[Any]) -> OAuthGrantRecord:
    values = dict(row._mapping)
    for name in ("created_at", "expires_at", "revoked_at"):
        values[name] = _utc(values[name])
    return OAuthGrantRecord(**values)


class SqlOAuthStore:
    """`OAuthStore` over the gateway's SQL engine."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine

    async def add_client(self, record: OAuthClientRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(t.oauth_clients).values(**asdict(record)))

    async def client(self, client_id: str) -> OAuthClientRecord | None:
        c = t.oauth_clients.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.oauth_clients).where(c.client_id == client_id))).first()
        if row is None:
            return None
        return OAuthClientRecord(
            client_id=row.client_id,
            metadata=row.metadata,
            created_at=_utc(row.created_at),  # type: ignore[arg-type]
            secret_hash=row.secret_hash,
        )

    async def add_grant(self, record: OAuthGrantRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(t.oauth_grants).values(**asdict(record)))

    async def grant(self, grant_id: str) -> OAuthGrantRecord | None:
        c = t.oauth_grants.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.oauth_grants).where(c.id == grant_id))).first()
        return _grant(row) if row is not None else None

    async def grants(self, key_id: str | None, live_at: datetime) -> list[OAuthGrantRecord]:
        """Live grants (not revoked, not expired at `live_at`), of one API key's chain or all."""
        c = t.oauth_grants.c
        query = sa.select(t.oauth_grants).where(c.revoked_at.is_(None), c.expires_at > live_at)
        if key_id is not None:
            query = query.where(c.key_id == key_id)
        async with self._engine.connect() as conn:
            rows = await conn.execute(query.order_by(c.created_at, c.id))
        return [_grant(r) for r in rows]

    async def revoke_grant(self, grant_id: str, when: datetime) -> bool:
        c = t.oauth_grants.c
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.update(t.oauth_grants)
                .where(c.id == grant_id, c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
        return result.rowcount > 0

    async def add_code(self, record: AuthCodeRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(t.oauth_codes).values(**asdict(record)))

    async def use_code(self, code_hash: str, when: datetime) -> tuple[Use, AuthCodeRecord | None]:
        """Mark a code used: "ok" the first time, "used" after, "unknown" for no such code."""
        c = t.oauth_codes.c
        async with self._engine.begin() as conn:
            row = (await conn.execute(sa.select(t.oauth_codes).where(c.code_hash == code_hash))).first()
            if row is None:
                return "unknown", None
            record = AuthCodeRecord(
                code_hash=row.code_hash,
                grant_id=row.grant_id,
                code_challenge=row.code_challenge,
                expires_at=_utc(row.expires_at),  # type: ignore[arg-type]
                used_at=_utc(row.used_at),
            )
            result = await conn.execute(
                sa.update(t.oauth_codes)
                .where(c.code_hash == code_hash, c.used_at.is_(None))
                .values(used_at=when)
            )
        return ("ok" if result.rowcount > 0 else "used"), record

    async def add_refresh_token(self, token_hash: str, grant_id: str, when: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.insert(t.oauth_refresh_tokens).values(
                    token_hash=token_hash, grant_id=grant_id, created_at=when
                )
            )

    async def use_refresh_token(
        self, token_hash: str, client_id: str, when: datetime
    ) -> tuple[Use, str | None]:
        """Mark a refresh token of `client_id` used; returns how it went and its grant. Another
        client's token is "unknown" and left as it is (it cannot spend the owner's token)."""
        c = t.oauth_refresh_tokens.c
        g = t.oauth_grants.c
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(c.grant_id)
                    .join(t.oauth_grants, g.id == c.grant_id)
                    .where(c.token_hash == token_hash, g.client_id == client_id)
                )
            ).first()
            if row is None:
                return "unknown", None
            result = await conn.execute(
                sa.update(t.oauth_refresh_tokens)
                .where(c.token_hash == token_hash, c.used_at.is_(None))
                .values(used_at=when)
            )
        return ("ok" if result.rowcount > 0 else "used"), row.grant_id

    async def refresh_token_grant(self, token_hash: str) -> str | None:
        """The grant a refresh token belongs to, without using it."""
        c = t.oauth_refresh_tokens.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(c.grant_id).where(c.token_hash == token_hash))).first()
        return row.grant_id if row is not None else None

    async def prune(self, now: datetime) -> int:
        """Delete what can no longer be used: expired codes, the refresh tokens of grants that
        were revoked or have expired (a used one is kept while its grant lives, to catch reuse),
        and registered clients never given a grant in their first day."""
        codes = t.oauth_codes.c
        refresh = t.oauth_refresh_tokens.c
        grants = t.oauth_grants.c
        dead = sa.select(grants.id).where(sa.or_(grants.revoked_at.is_not(None), grants.expires_at <= now))
        clients = t.oauth_clients.c
        # A registered client that has not been given a grant within a day is registration spam
        # or an abandoned attempt (anyone may register); one with a grant, live or not, is kept.
        unused = sa.and_(
            clients.created_at <= now - timedelta(days=1),
            clients.client_id.not_in(sa.select(grants.client_id)),
        )
        async with self._engine.begin() as conn:
            removed = (await conn.execute(sa.delete(t.oauth_codes).where(codes.expires_at <= now))).rowcount
            removed += (await conn.execute(sa.delete(t.oauth_clients).where(unused))).rowcount
            removed += (
                await conn.execute(sa.delete(t.oauth_refresh_tokens).where(refresh.grant_id.in_(dead)))
            ).rowcount
        return int(removed)
