"""The SQL store (SQLAlchemy Core, async). SQLite through aiosqlite is the embedded default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from proxy.errors import ConfigError
from proxy.store import _schema as t
from proxy.store._models import (
    ApiKeyRecord,
    ConnectionRecord,
    NamespaceRecord,
    ServiceTokenRecord,
    SigningKeyRecord,
    _utc,
)
from proxy.store._oauth import OAuthStore, SqlOAuthStore
from proxy.store._upstream import SqlUpstreamAuthStore, UpstreamAuthStore


class Store(Protocol):
    """What the gateway needs from durable storage; SQLite and PostgreSQL implement it."""

    @property
    def oauth(self) -> OAuthStore:
        """The authorization server's rows."""
        ...

    @property
    def upstream(self) -> UpstreamAuthStore:
        """The rows of the gateway as the OAuth client of upstreams."""
        ...

    async def close(self) -> None: ...
    async def create_namespace(self, name: str, tool_names: str = "auto") -> tuple[NamespaceRecord, bool]: ...
    async def get_namespace(self, name: str) -> NamespaceRecord | None: ...
    async def list_namespaces(
        self, offset: int, limit: int, names: frozenset[str] | None = None
    ) -> tuple[list[NamespaceRecord], int]: ...
    async def set_namespace_tool_names(self, name: str, tool_names: str) -> None: ...
    async def set_namespace_budget(
        self, name: str, tool_budget: int | None, curated: Sequence[str]
    ) -> None: ...
    async def delete_namespace(self, name: str) -> bool: ...
    async def list_connections(self, namespace: str) -> list[ConnectionRecord]: ...
    async def get_connection(self, namespace: str, connection_id: str) -> ConnectionRecord | None: ...
    async def put_connection(self, record: ConnectionRecord) -> None: ...
    async def delete_connection(self, namespace: str, connection_id: str) -> bool: ...
    async def set_connection_state(
        self, namespace: str, connection_id: str, status: dict[str, Any], server_info: dict[str, Any] | None
    ) -> None: ...
    async def add_api_key(self, record: ApiKeyRecord) -> None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None: ...
    async def delete_api_key(self, key_id: str) -> bool: ...
    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None: ...
    async def sealed_headers(self) -> list[tuple[str, str, str]]: ...
    async def api_key_ids(self) -> set[str]: ...
    async def has_api_key(self, key_id: str) -> bool: ...
    async def add_signing_key(self, record: SigningKeyRecord) -> None: ...
    async def signing_keys(self) -> list[SigningKeyRecord]: ...
    async def retire_signing_keys(self, before: datetime, when: datetime) -> None: ...
    async def add_service_token(self, record: ServiceTokenRecord) -> None: ...
    async def service_tokens(self, key_id: str, live_at: datetime) -> list[ServiceTokenRecord]: ...
    async def service_token(self, token_id: str) -> ServiceTokenRecord | None: ...
    async def revoke_service_token(self, token_id: str, when: datetime) -> bool: ...
    async def revocations(self, since: datetime) -> list[tuple[str, datetime]]: ...


def _namespace(row: sa.Row[Any]) -> NamespaceRecord:
    return NamespaceRecord(
        name=row.name,
        created_at=_utc(row.created_at),  # type: ignore[arg-type]
        tool_names=row.tool_names,
        tool_budget=row.tool_budget,
        curated_tools=tuple(row.curated_tools or ()),
    )


def _connection(row: sa.Row[Any]) -> ConnectionRecord:
    return ConnectionRecord(
        namespace=row.namespace,
        connection_id=row.connection_id,
        name=row.name,
        mcp_url=row.mcp_url,
        metadata=row.metadata,
        created_at=_utc(row.created_at),  # type: ignore[arg-type]
        updated_at=_utc(row.updated_at),  # type: ignore[arg-type]
        headers_ciphertext=row.headers_ciphertext,
        header_names=tuple(row.header_names or ()),
        status=row.status or {"state": "connected"},
        server_info=row.server_info,
        timeouts=row.timeouts,
        setup=row.setup,
    )


def _api_key(row: sa.Row[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        key_hash=row.key_hash,
        prefix=row.prefix,
        created_at=_utc(row.created_at),  # type: ignore[arg-type]
        last_used_at=_utc(row.last_used_at),
    )


def _service_token(row: sa.Row[Any]) -> ServiceTokenRecord:
    return ServiceTokenRecord(
        id=row.id,
        key_id=row.key_id,
        parent_id=row.parent_id,
        ancestors=tuple(row.ancestors or ()),
        policy=row.policy,
        created_at=_utc(row.created_at),  # type: ignore[arg-type]
        expires_at=_utc(row.expires_at),  # type: ignore[arg-type]
        revoked_at=_utc(row.revoked_at),
    )


def _add_column(conn: sa.Connection, table: sa.Table, column: sa.Column[Any]) -> None:
    """`ALTER TABLE ... ADD COLUMN`, unless the table already has it (it was created with it)."""
    if column.name in {c["name"] for c in sa.inspect(conn).get_columns(table.name)}:
        return
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


class SqlStore:
    """`Store` over an async SQLAlchemy engine."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self.oauth = SqlOAuthStore(engine)
        self.upstream = SqlUpstreamAuthStore(engine)

    async def migrate(self) -> None:
        """Bring the schema to the newest version; safe to run on every start."""
        async with self._engine.begin() as conn:
            await conn.run_sync(lambda c: t.schema_version.create(c, checkfirst=True))
            current = (await conn.execute(sa.select(sa.func.max(t.schema_version.c.version)))).scalar() or 0
            for version, changes in enumerate(t.MIGRATIONS, start=1):
                if version <= current:
                    continue
                for change in changes:
                    if isinstance(change, sa.Table):
                        await conn.run_sync(change.create, checkfirst=True)
                    else:
                        await conn.run_sync(_add_column, t.ADDED_TO[change.name], change)
                await conn.execute(sa.insert(t.schema_version).values(version=version))

    async def close(self) -> None:
        await self._engine.dispose()

    # namespaces
    async def create_namespace(self, name: str, tool_names: str = "auto") -> tuple[NamespaceRecord, bool]:
        async with self._engine.begin() as conn:
            row = (await conn.execute(sa.select(t.namespaces).where(t.namespaces.c.name == name))).first()
            if row is not None:
                return _namespace(row), False
            record = NamespaceRecord(name=name, created_at=datetime.now(UTC), tool_names=tool_names)
            await conn.execute(
                sa.insert(t.namespaces).values(name=name, created_at=record.created_at, tool_names=tool_names)
            )
            return record, True

    async def get_namespace(self, name: str) -> NamespaceRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.namespaces).where(t.namespaces.c.name == name))).first()
            return _namespace(row) if row is not None else None

    async def list_namespaces(
        self, offset: int, limit: int, names: frozenset[str] | None = None
    ) -> tuple[list[NamespaceRecord], int]:
        """A page of namespaces (only those in `names`, when given) and how many there are."""
        where = t.namespaces.c.name.in_(sorted(names)) if names is not None else sa.true()
        async with self._engine.connect() as conn:
            total = (
                await conn.execute(sa.select(sa.func.count()).select_from(t.namespaces).where(where))
            ).scalar() or 0
            rows = await conn.execute(
                sa.select(t.namespaces).where(where).order_by(t.namespaces.c.name).offset(offset).limit(limit)
            )
            return [_namespace(r) for r in rows], int(total)

    async def set_namespace_tool_names(self, name: str, tool_names: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(t.namespaces).where(t.namespaces.c.name == name).values(tool_names=tool_names)
            )

    async def set_namespace_budget(self, name: str, tool_budget: int | None, curated: Sequence[str]) -> None:
        """A namespace's tool budget and curated tools (proxy/gateway/budget.py)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(t.namespaces)
                .where(t.namespaces.c.name == name)
                .values(tool_budget=tool_budget, curated_tools=list(curated) or None)
            )

    async def delete_namespace(self, name: str) -> bool:
        async with self._engine.begin() as conn:
            await conn.execute(sa.delete(t.connections).where(t.connections.c.namespace == name))
            for table in (t.upstream_auth, t.upstream_states):
                await conn.execute(sa.delete(table).where(table.c.namespace == name))
            result = await conn.execute(sa.delete(t.namespaces).where(t.namespaces.c.name == name))
            return result.rowcount > 0

    # connections
    async def list_connections(self, namespace: str) -> list[ConnectionRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.connections)
                .where(t.connections.c.namespace == namespace)
                .order_by(t.connections.c.connection_id)
            )
            return [_connection(r) for r in rows]

    async def get_connection(self, namespace: str, connection_id: str) -> ConnectionRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(t.connections).where(
                        t.connections.c.namespace == namespace, t.connections.c.connection_id == connection_id
                    )
                )
            ).first()
            return _connection(row) if row is not None else None

    async def put_connection(self, record: ConnectionRecord) -> None:
        values = {
            "name": record.name,
            "mcp_url": record.mcp_url,
            "metadata": record.metadata,
            "headers_ciphertext": record.headers_ciphertext,
            "header_names": list(record.header_names),
            "status": record.status,
            "server_info": record.server_info,
            "timeouts": record.timeouts,
            "setup": record.setup,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }
        key = (t.connections.c.namespace == record.namespace) & (
            t.connections.c.connection_id == record.connection_id
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(sa.update(t.connections).where(key).values(**values))
            if result.rowcount == 0:
                await conn.execute(
                    sa.insert(t.connections).values(
                        namespace=record.namespace, connection_id=record.connection_id, **values
                    )
                )

    async def delete_connection(self, namespace: str, connection_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.delete(t.connections).where(
                    t.connections.c.namespace == namespace, t.connections.c.connection_id == connection_id
                )
            )
            for table in (t.upstream_auth, t.upstream_states):
                await conn.execute(
                    sa.delete(table).where(
                        table.c.namespace == namespace, table.c.connection_id == connection_id
                    )
                )
            return result.rowcount > 0

    async def set_connection_state(
        self, namespace: str, connection_id: str, status: dict[str, Any], server_info: dict[str, Any] | None
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(t.connections)
                .where(t.connections.c.namespace == namespace, t.connections.c.connection_id == connection_id)
                .values(status=status, server_info=server_info)
            )

    # API keys
    async def add_api_key(self, record: ApiKeyRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(t.api_keys).values(**asdict(record)))

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(t.api_keys).order_by(t.api_keys.c.created_at))
            return [_api_key(r) for r in rows]

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.api_keys).where(t.api_keys.c.key_hash == key_hash))).first()
            return _api_key(row) if row is not None else None

    async def delete_api_key(self, key_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(sa.delete(t.api_keys).where(t.api_keys.c.id == key_id))
            return result.rowcount > 0

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        """Record when keys were last used (one statement for all of them)."""
        if not used:
            return
        stmt = (
            sa.update(t.api_keys)
            .where(t.api_keys.c.id == sa.bindparam("key_id"))
            .values(last_used_at=sa.bindparam("when"))
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt, [{"key_id": k, "when": when} for k, when in used.items()])

    async def sealed_headers(self) -> list[tuple[str, str, str]]:
        """(namespace, connection id, headers ciphertext) of every connection that has headers."""
        c = t.connections.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(c.namespace, c.connection_id, c.headers_ciphertext)
                .where(c.headers_ciphertext.is_not(None))
                .order_by(c.namespace, c.connection_id)
            )
            return [(r.namespace, r.connection_id, r.headers_ciphertext) for r in rows]

    async def api_key_ids(self) -> set[str]:
        async with self._engine.connect() as conn:
            return {r.id for r in await conn.execute(sa.select(t.api_keys.c.id))}

    async def has_api_key(self, key_id: str) -> bool:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.api_keys.c.id).where(t.api_keys.c.id == key_id))).first()
            return row is not None

    # token signing keys
    async def add_signing_key(self, record: SigningKeyRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(t.signing_keys).values(**asdict(record)))

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Every signing key, newest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(t.signing_keys).order_by(t.signing_keys.c.created_at.desc()))
            return [
                SigningKeyRecord(
                    kid=r.kid,
                    private_sealed=r.private_sealed,
                    public_pem=r.public_pem,
                    created_at=_utc(r.created_at),  # type: ignore[arg-type]
                    retired_at=_utc(r.retired_at),
                )
                for r in rows
            ]

    async def retire_signing_keys(self, before: datetime, when: datetime) -> None:
        """Mark every key created before `before` (and not yet retired) as retired at `when`."""
        k = t.signing_keys.c
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.update(t.signing_keys)
                .where(k.created_at < before, k.retired_at.is_(None))
                .values(retired_at=when)
            )

    # service tokens
    async def add_service_token(self, record: ServiceTokenRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.insert(t.service_tokens).values(**asdict(record)))

    async def service_tokens(self, key_id: str, live_at: datetime) -> list[ServiceTokenRecord]:
        """The tokens minted under an API key that are neither expired at `live_at` nor revoked."""
        c = t.service_tokens.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(t.service_tokens)
                .where(c.key_id == key_id, c.expires_at > live_at, c.revoked_at.is_(None))
                .order_by(c.created_at, c.id)
            )
            return [_service_token(r) for r in rows]

    async def service_token(self, token_id: str) -> ServiceTokenRecord | None:
        c = t.service_tokens.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(t.service_tokens).where(c.id == token_id))).first()
            return _service_token(row) if row is not None else None

    async def revoke_service_token(self, token_id: str, when: datetime) -> bool:
        c = t.service_tokens.c
        async with self._engine.begin() as conn:
            result = await conn.execute(
                sa.update(t.service_tokens)
                .where(c.id == token_id, c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
            return result.rowcount > 0

    async def revocations(self, since: datetime) -> list[tuple[str, datetime]]:
        """(id, expiry) of the service tokens and OAuth grants revoked at or after `since` that
        have not yet expired (an OAuth access token carries its grant's id among its ancestors)."""
        c = t.service_tokens.c
        g = t.oauth_grants.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.union_all(
                    sa.select(c.id, c.expires_at).where(c.revoked_at >= since, c.expires_at > since),
                    sa.select(g.id, g.expires_at).where(g.revoked_at >= since, g.expires_at > since),
                )
            )
            return [(r.id, _utc(r.expires_at)) for r in rows]  # type: ignore[misc]


async def open_store(database_url: str) -> SqlStore:
    """Open (and migrate) the store named by a SQLAlchemy URL."""
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"database_url is not a valid database URL: {exc}") from exc
    if url.get_backend_name() != "sqlite":
        raise ConfigError(
            f"database backend {url.get_backend_name()!r} is not supported yet; use a sqlite+aiosqlite:/// URL"
        )
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    store = SqlStore(engine)
    await store.migrate()
    return store
