"""Namespaces and connections: the domain operations every surface uses.

Reads come from an in-memory copy that every write here refreshes, so tool calls never touch
the database. Credentials are sealed by the vault before they reach the store and opened only
to build an upstream config.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio

from proxy import stdio_records
from proxy.errors import Conflict, JunctionError, NotFound, ValidationFailed
from proxy.names import (
    CONNECTION_ID_RE,
    generate_connection_id,
    generate_namespace,
    validate_connection_id,
    validate_namespace,
)
from proxy.redact import LOG_REDACTION, Redactor
from proxy.settings import Settings
from proxy.store import ConnectionRecord, NamespaceRecord, Store
from proxy.upstream import ConnectionPool, UpstreamConfig
from proxy.upstream.pool import UpstreamSession
from proxy.upstream.ssrf import validate_url_syntax
from proxy.upstream.stdio import STDIO_FIELDS, StdioInput, parse_stdio_input
from proxy.upstream_auth import UpstreamAuth
from proxy.upstream_auth import config as server_config
from proxy.vault import Vault, VaultError

HEADER_NAME_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
FORBIDDEN_HEADERS = server_config.MANAGED_HEADERS
ChangeListener = Callable[[str, str | None], None]
TIMEOUT_KEYS = {"connect": "connect_timeout", "list": "list_timeout", "call": "call_timeout"}
UNDECRYPTABLE = (
    "the stored headers of this connection cannot be decrypted with the configured master key; "
    "PUT new headers to replace them, or restart with the key that sealed them"
)


@dataclass(frozen=True)
class ConnectionInput:
    """A validated create/update request."""

    mcp_url: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None
    metadata_set: bool = False
    headers: dict[str, str | None] | None = None
    timeouts: dict[str, float] | None = None
    server: str | None = None
    return_url: str | None = None
    setup: dict[str, Any] | None = None  # resolved from `server` and the upstream, not the body
    stdio: StdioInput | None = None  # `transport: "stdio"`: a program the gateway runs


def parse_connection_input(body: Mapping[str, Any]) -> ConnectionInput:
    """Validate the JSON body of POST/PUT connection requests."""
    known = {
        "mcpUrl", "name", "metadata", "headers", "connectionId", "timeouts", "transport", "server", "returnUrl",
        *STDIO_FIELDS,
    }  # fmt: skip
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
    server = body.get("server")
    if server is not None and (not isinstance(server, str) or not 1 <= len(server) <= 128):
        raise ValidationFailed("server must be the name of a server in the gateway's catalog")
    return_url = body.get("returnUrl")
    if return_url is not None:
        parts = urlsplit(return_url) if isinstance(return_url, str) else None
        if (
            parts is None
            or len(return_url) > 2048
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or any(c <= " " or c == "\x7f" for c in return_url)
        ):
            raise ValidationFailed("returnUrl must be an http(s) URL of at most 2048 characters")
    transport = body.get("transport")
    if transport not in (None, "http", "stdio"):
        raise ValidationFailed("transport must be 'http' or 'stdio'")
    stdio = None
    if transport == "stdio" or any(k in body for k in STDIO_FIELDS):
        if transport == "http":
            raise ValidationFailed(
                f"{', '.join(k for k in STDIO_FIELDS if k in body)}: only for transport 'stdio'"
            )
        clash = [k for k in ("mcpUrl", "headers", "server", "returnUrl") if body.get(k) is not None]
        if clash:
            raise ValidationFailed(f"{', '.join(clash)}: not for transport 'stdio' (a stdio server gets env)")
        stdio = parse_stdio_input(body)
    url = body.get("mcpUrl")
    if url is not None:
        if isinstance(url, str) and any(c <= " " or c == "\x7f" for c in url):
            # urlsplit would quietly drop a tab or newline; a URL never holds these (RFC 3986).
            raise ValidationFailed("mcpUrl must not contain spaces or control characters")
        validate_url_syntax(url)
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 255):
        raise ValidationFailed("name must be a string of 1-255 characters")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValidationFailed("metadata must be a JSON object")
        if len(json.dumps(metadata)) > 16_384:
            raise ValidationFailed("metadata must be at most 16 KiB of JSON")
    headers = body.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise ValidationFailed("headers must be an object of header name to string value")
        for key, value in headers.items():
            if not key or not set(key) <= HEADER_NAME_CHARS or len(key) > 256:
                raise ValidationFailed(f"header name {key[:64]!r} is not a valid HTTP header name")
            if key.lower() in FORBIDDEN_HEADERS:
                raise ValidationFailed(f"header {key!r} is managed by the gateway and cannot be set")
            if value is not None and (
                not isinstance(value, str)
                or len(value) > 8192
                or not all(c == "\t" or " " <= c <= "~" for c in value)
            ):
                # Never echo the value: it is a credential.
                raise ValidationFailed(
                    f"header {key!r} must be a string of printable ASCII (or null to remove it)"
                )
    timeouts = body.get("timeouts")
    if timeouts is not None:
        if not isinstance(timeouts, dict) or not set(timeouts) <= set(TIMEOUT_KEYS):
            raise ValidationFailed("timeouts must be an object with optional connect, list, call seconds")
        for key, value in timeouts.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86_400:
                raise ValidationFailed(f"timeouts.{key} must be a number of seconds between 0 and 86400")
    return ConnectionInput(
        mcp_url=url,
        name=name,
        metadata=metadata,
        metadata_set="metadata" in body,
        headers=headers,
        timeouts={k: float(v) for k, v in timeouts.items()} if timeouts else None,
        server=server,
        return_url=return_url,
        stdio=stdio,
    )


def _metadata_matches(metadata: Mapping[str, Any] | None, filters: Mapping[str, str]) -> bool:
    if not filters:
        return True
    if not metadata:
        return False
    for key, wanted in filters.items():
        if key not in metadata:
            return False
        value = metadata[key]
        if (value if isinstance(value, str) else json.dumps(value)) != wanted:
            return False
    return True


def _incarnation(record: ConnectionRecord) -> str:
    """Tells a connection from an earlier one with the same id (setup links bind to it)."""
    return record.created_at.isoformat()


def _encode_cursor(connection_id: str) -> str:
    return base64.urlsafe_b64encode(connection_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        value = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not valid; pass the nextCursor of a previous page") from exc
    if not CONNECTION_ID_RE.match(value):
        raise ValidationFailed("cursor is not valid; pass the nextCursor of a previous page")
    return value


class Directory:
    """Namespaces and their connections, cached, with their upstream sessions."""

    def __init__(
        self, store: Store, vault: Vault, pool: ConnectionPool, settings: Settings, auth: UpstreamAuth
    ):
        self._store = store
        self._vault = vault
        self._pool = pool
        self._settings = settings
        self._auth = auth
        auth.on_blocked = self.blocked
        self._namespaces: dict[str, NamespaceRecord] = {}
        self._connections: dict[str, dict[str, ConnectionRecord]] = {}
        self._configs: dict[tuple[str, str], UpstreamConfig] = {}
        self._ns_locks: dict[str, anyio.Lock] = {}
        self._listeners: list[ChangeListener] = []
        pool.on_state_change(self._state_changed)

    # namespaces
    async def namespace(self, name: str) -> NamespaceRecord:
        record = self._namespaces.get(name)
        if record is None:
            # Unknown names are not remembered, so random paths cannot grow the cache.
            record = await self._store.get_namespace(name)
            if record is None:
                raise NotFound(f"namespace {name!r} not found")
            self._namespaces[name] = record
        return record

    async def create_namespace(
        self, name: str | None = None, tool_names: str | None = None
    ) -> tuple[NamespaceRecord, bool]:
        if name is None:
            name = generate_namespace()
        validate_namespace(name)
        if tool_names is not None and tool_names not in ("auto", "dotted", "safe", "bare"):
            raise ValidationFailed("toolNames must be one of auto, dotted, safe, bare")
        record, created = await self._store.create_namespace(name, tool_names or "auto")
        if not created and tool_names is not None and tool_names != record.tool_names:
            await self._store.set_namespace_tool_names(name, tool_names)
            record = replace(record, tool_names=tool_names)
            self._changed(name, None)
        self._namespaces[name] = record
        return record, created

    async def list_namespaces(
        self,
        page: int,
        page_size: int,
        *,
        names: frozenset[str] | None = None,
        visible: Callable[[NamespaceRecord], bool] | None = None,
    ) -> tuple[list[NamespaceRecord], int]:
        """A page of namespaces and the total. `names` bounds the query (a caller's namespace
        scope); `visible` (its policy) filters the rows before paging."""
        if visible is None:
            return await self._store.list_namespaces((page - 1) * page_size, page_size, names)
        rows, _ = await self._store.list_namespaces(0, 1_000_000, names)
        shown = [r for r in rows if visible(r)]
        return shown[(page - 1) * page_size : page * page_size], len(shown)

    async def delete_namespace(self, name: str) -> None:
        await self.namespace(name)
        async with self._lock(name):
            revokes = [await self._auth.forget((name, r.connection_id)) for r in await self.connections(name)]
            await self._store.delete_namespace(name)
            self._namespaces.pop(name, None)
            for cid in list(self._connections.pop(name, {})):
                self._configs.pop((name, cid), None)
        self._changed(name, None)
        await self._pool.remove_namespace(name)
        for revoke in revokes:
            await revoke()

    # connections
    def _lock(self, namespace: str) -> anyio.Lock:
        return self._ns_locks.setdefault(namespace, anyio.Lock())

    async def _loaded(self, namespace: str) -> dict[str, ConnectionRecord]:
        await self.namespace(namespace)
        cached = self._connections.get(namespace)
        if cached is None:
            records = await self._store.list_connections(namespace)
            cached = self._connections.setdefault(
                namespace, {r.connection_id: self._checked(r) for r in records}
            )
        return cached

    def _checked(self, record: ConnectionRecord) -> ConnectionRecord:
        """A loaded record, marked `error` when the vault cannot open its headers (another master
        key sealed them): the row stays listed and writable, and is never contacted."""
        if record.headers_ciphertext and not self._vault.opens(
            record.headers_ciphertext,
            namespace=record.namespace,
            connection_id=record.connection_id,
            field="headers",
        ):
            return replace(record, status={"state": "error", "message": UNDECRYPTABLE})
        if record.status.get("message") == UNDECRYPTABLE:  # stored under another key, opens now
            return replace(record, status={"state": "connected"})
        if stdio_records.stored(record) is not None:  # a stdio connection that must not run says why
            problem = stdio_records.problem(record, self._vault, self._settings)
            if problem:
                return replace(record, status={"state": "error", "message": problem})
            if record.status.get("message") in stdio_records.PROBLEMS:
                return replace(record, status={"state": "connected"})
        return record

    async def connections(self, namespace: str) -> list[ConnectionRecord]:
        """Every connection of a namespace, ordered by id."""
        loaded = await self._loaded(namespace)
        return [loaded[k] for k in sorted(loaded)]

    async def list_connections(
        self,
        namespace: str,
        *,
        limit: int,
        cursor: str | None,
        name: str | None = None,
        mcp_url: str | None = None,
        metadata: Mapping[str, str] | None = None,
        visible: Callable[[ConnectionRecord], bool] | None = None,
    ) -> tuple[list[ConnectionRecord], str | None]:
        """A page of connections; `visible` (the caller's policy) filters before paging."""
        after = _decode_cursor(cursor) if cursor else None
        matches = [
            r
            for r in await self.connections(namespace)
            if (after is None or r.connection_id > after)
            and (name is None or r.name == name)
            and (mcp_url is None or r.mcp_url == mcp_url)
            and _metadata_matches(r.metadata, metadata or {})
            and (visible is None or visible(r))
        ]
        page = matches[:limit]
        more = len(matches) > limit
        return page, (_encode_cursor(page[-1].connection_id) if more and page else None)

    async def connection(self, namespace: str, connection_id: str) -> ConnectionRecord:
        """A connection; a missing namespace answers as a missing connection (the same 404 as a
        connection hidden from a token, so neither tells which namespaces exist)."""
        try:
            record = (await self._loaded(namespace)).get(connection_id)
        except NotFound:
            record = None
        if record is None:
            raise NotFound.connection(namespace, connection_id)
        return record

    async def create_connection(
        self, namespace: str, connection_id: str | None, data: ConnectionInput
    ) -> ConnectionRecord:
        if connection_id is not None:
            validate_connection_id(connection_id)
        await self.namespace(namespace)
        data = await self._resolved(data)
        async with self._lock(namespace):
            record = await self._create_locked(namespace, connection_id, data)
        return await self._connect(record)

    async def _resolved(self, data: ConnectionInput) -> ConnectionInput:
        """A new connection's URL and setup: from the catalog (`server`), with the config schema
        of the catalog or of the upstream's `/.well-known/mcp-config`."""
        if data.stdio is not None:
            if data.stdio.command is None:
                raise ValidationFailed("command is required to create a stdio connection")
            return replace(data, mcp_url=f"stdio:{data.stdio.command}")
        url, setup = data.mcp_url, dict(data.setup or {})
        if data.server is not None:
            entry = self._settings.server(data.server)
            if entry is None:
                known = ", ".join(sorted(s["name"] for s in self._settings.servers)) or "none"
                raise ValidationFailed(
                    f"server {data.server[:128]!r} is not in the gateway's catalog (servers in config.toml: {known})"
                )
            if url is None:
                url = entry["url"]
            elif not server_config.same_target(entry["url"], url):
                raise ValidationFailed(
                    f"mcpUrl must be the URL of server {data.server!r} (its query may add settings)"
                )
            setup["server"] = data.server
            if entry.get("config_schema"):
                server_config.parse_schema(entry["config_schema"])
                setup["schema"] = entry["config_schema"]
        if url is None:
            raise ValidationFailed("mcpUrl (or server) is required to create a connection")
        if data.return_url is not None:
            setup["returnUrl"] = data.return_url
        if "schema" not in setup:
            schema = await server_config.fetch_schema(self._auth.http, url)
            if schema is not None:
                setup["schema"] = schema
        return replace(data, mcp_url=url, setup=setup or None)

    async def _create_locked(
        self, namespace: str, connection_id: str | None, data: ConnectionInput
    ) -> ConnectionRecord:
        if data.mcp_url is None:
            raise ValidationFailed("mcpUrl is required to create a connection")
        loaded = await self._loaded(namespace)
        if connection_id is None:
            connection_id = generate_connection_id()
            while connection_id in loaded:
                connection_id = generate_connection_id()
        elif connection_id in loaded:
            raise Conflict(f"connection {connection_id!r} already exists in namespace {namespace!r}")
        now = datetime.now(UTC)
        record = ConnectionRecord(
            namespace=namespace,
            connection_id=connection_id,
            name=data.name or connection_id,
            mcp_url=data.mcp_url,
            metadata=data.metadata,
            created_at=now,
            updated_at=now,
            timeouts=data.timeouts,
            setup=data.setup,
        )
        record = self._with_headers(record, {k: v for k, v in (data.headers or {}).items() if v is not None})
        if data.stdio is not None:
            record = stdio_records.changed(record, data.stdio, self._vault)
        return await self._save(record)

    async def upsert_connection(
        self, namespace: str, connection_id: str, data: ConnectionInput
    ) -> tuple[ConnectionRecord, bool]:
        validate_connection_id(connection_id)
        if connection_id not in await self._loaded(namespace):
            data = await self._resolved(data)
        async with self._lock(namespace):
            record, created = await self._upsert_locked(namespace, connection_id, data)
        return await self._connect(record), created

    async def _upsert_locked(
        self, namespace: str, connection_id: str, data: ConnectionInput
    ) -> tuple[ConnectionRecord, bool]:
        if connection_id not in await self._loaded(namespace):
            return await self._create_locked(namespace, connection_id, data), True
        current = await self.connection(namespace, connection_id)
        is_stdio = stdio_records.stored(current) is not None
        if (data.stdio is not None) != is_stdio and (data.stdio is not None or data.mcp_url is not None):
            raise Conflict(
                f"connection {connection_id!r} uses transport {'stdio' if is_stdio else 'http'}; "
                "delete it first to change its transport"
            )
        if is_stdio and (data.headers is not None or data.server is not None):
            raise ValidationFailed("a stdio connection has no headers or server; give its program env")
        if data.mcp_url is not None and data.mcp_url != current.mcp_url:
            settling = current.status.get("state") == "input_required"
            if not (settling and server_config.same_target(current.mcp_url, data.mcp_url)):
                raise Conflict(
                    f"connection {connection_id!r} already points at a different mcpUrl; "
                    "delete it first to change the upstream"
                    + (" (while input_required, only its query may change)" if settling else "")
                )
        setup = dict(current.setup or {})
        if data.server is not None and data.server != setup.get("server"):
            raise Conflict(f"connection {connection_id!r} was not created from server {data.server!r}")
        if data.return_url is not None:
            setup["returnUrl"] = data.return_url
        record = replace(
            current,
            mcp_url=data.mcp_url if data.mcp_url is not None else current.mcp_url,
            name=data.name if data.name is not None else current.name,
            metadata=data.metadata if data.metadata_set else current.metadata,
            timeouts=data.timeouts if data.timeouts is not None else current.timeouts,
            setup=setup or None,
            updated_at=datetime.now(UTC),
        )
        if data.headers is not None:
            headers = dict(self._headers(current))
            for key, value in data.headers.items():
                for existing in [k for k in headers if k.lower() == key.lower()]:
                    del headers[existing]
                if value is not None:
                    headers[key] = value
            record = self._with_headers(record, headers)
        if data.stdio is not None:
            record = stdio_records.changed(record, data.stdio, self._vault)
        return await self._save(record), False

    async def delete_connection(self, namespace: str, connection_id: str) -> None:
        async with self._lock(namespace):
            await self.connection(namespace, connection_id)
            revoke = await self._auth.forget((namespace, connection_id))
            await self._store.delete_connection(namespace, connection_id)
            self._connections.get(namespace, {}).pop(connection_id, None)
            self._configs.pop((namespace, connection_id), None)
        self._changed(namespace, connection_id)
        await self._pool.remove((namespace, connection_id))
        await revoke()  # the upstream's tokens, where its authorization server offers revocation

    # upstream sessions
    def upstream_for(self, record: ConnectionRecord) -> UpstreamSession:
        """The shared upstream session of a connection (no I/O; connects on first use)."""
        key = (record.namespace, record.connection_id)
        config = self._configs.get(key)
        if config is None:
            config = self._config(record)
            self._configs[key] = config
        return self._pool.session(key, config)

    async def upstream(self, namespace: str, connection_id: str) -> UpstreamSession:
        return self.upstream_for(await self.connection(namespace, connection_id))

    def _config(self, record: ConnectionRecord) -> UpstreamConfig:
        s = self._settings
        key = (record.namespace, record.connection_id)
        timeouts = record.timeouts or {}
        if stdio_records.stored(record) is not None:
            stdio = stdio_records.spec(record, self._vault)
            LOG_REDACTION.remember(key, Redactor.for_headers(stdio.env))
            return UpstreamConfig(
                url=record.mcp_url,
                connect_timeout=timeouts.get("connect", s.connect_timeout),
                list_timeout=timeouts.get("list", s.list_timeout),
                call_timeout=timeouts.get("call", s.call_timeout),
                unusable=stdio_records.problem(record, self._vault, self._settings),
                incarnation=_incarnation(record),
                stdio=stdio,
            )
        try:
            headers, unusable = self._open_headers(record), ""
        except VaultError:
            headers, unusable = {}, UNDECRYPTABLE
        # Log lines never carry these headers, whoever writes them (an upstream may echo them).
        LOG_REDACTION.remember(key, Redactor.for_headers(headers))
        setup = record.setup or {}
        fields = self._fields(record)
        url, headers = server_config.upstream_request(fields, record.mcp_url, headers)
        return UpstreamConfig(
            url=url,
            headers=headers,
            connect_timeout=timeouts.get("connect", s.connect_timeout),
            list_timeout=timeouts.get("list", s.list_timeout),
            call_timeout=timeouts.get("call", s.call_timeout),
            unusable=unusable,
            input_required=server_config.input_required(
                fields, record.mcp_url, record.header_names, self._auth.setup_url(key, _incarnation(record))
            )
            if fields
            else None,
            catalog_server=setup.get("server"),
            incarnation=_incarnation(record),
        )

    def _fields(self, record: ConnectionRecord) -> tuple[server_config.ConfigField, ...]:
        """The configurable fields of a connection's server (none when it declares no schema)."""
        schema = (record.setup or {}).get("schema")
        if not schema:
            return ()
        try:
            return server_config.parse_schema(schema)
        except ValidationFailed:
            return ()

    def config_fields(self, record: ConnectionRecord) -> tuple[server_config.ConfigField, ...]:
        """What the setup form asks for."""
        return self._fields(record)

    def shown(self, record: ConnectionRecord) -> ConnectionRecord:
        """The record as callers see it: a status that links to a setup page gets a fresh link (a
        stored one may have expired while nobody used it)."""
        status = record.status
        if "setupUrl" not in status:
            return record
        url = self._auth.setup_url((record.namespace, record.connection_id), _incarnation(record))
        fresh = {**status, "setupUrl": url}
        if "authorizationUrl" in status:
            fresh["authorizationUrl"] = url
        return replace(record, status=fresh)

    def setup_link_ok(self, record: ConnectionRecord, token: str) -> None:
        """Raises `SetupFailed` unless `token` is a live setup link of this very connection."""
        self._auth.check_setup_link((record.namespace, record.connection_id), _incarnation(record), token)

    async def authorized(self, namespace: str, connection_id: str) -> ConnectionRecord:
        """Its user authorized the gateway: connect now, and return the connection as it stands."""
        record = await self.connection(namespace, connection_id)
        session = self.upstream_for(record)
        try:
            await session.authorized()
        except JunctionError:
            pass  # the status says what happened
        return await self.connection(namespace, connection_id)

    async def blocked(self, key: tuple[str, str], problem: JunctionError) -> None:
        """Its tokens were refused in the background (a revoked grant): say so in the status."""
        record = self._connections.get(key[0], {}).get(key[1])
        if record is not None:
            await self.upstream_for(record).block(problem)

    def _headers(self, record: ConnectionRecord) -> dict[str, str]:
        """The plaintext headers, or none when the vault cannot open them (new ones replace them)."""
        try:
            return self._open_headers(record)
        except VaultError:
            return {}

    def _open_headers(self, record: ConnectionRecord) -> dict[str, str]:
        if not record.headers_ciphertext:
            return {}
        return self._vault.open(
            record.headers_ciphertext,
            namespace=record.namespace,
            connection_id=record.connection_id,
            field="headers",
        )

    def _with_headers(self, record: ConnectionRecord, headers: dict[str, str]) -> ConnectionRecord:
        sealed = (
            self._vault.seal(
                headers, namespace=record.namespace, connection_id=record.connection_id, field="headers"
            )
            if headers
            else None
        )
        return replace(record, headers_ciphertext=sealed, header_names=tuple(sorted(headers)))

    async def _save(self, record: ConnectionRecord) -> ConnectionRecord:
        """Persist and cache a created or changed connection (no upstream I/O: callers hold the
        namespace lock), and point its key at a session with the new config."""
        key = (record.namespace, record.connection_id)
        self._configs[key] = self._config(record)
        self._pool.session(key, self._configs[key])
        await self._store.put_connection(record)
        self._connections.setdefault(record.namespace, {})[record.connection_id] = record
        self._changed(record.namespace, record.connection_id)
        return record

    async def _connect(self, record: ConnectionRecord) -> ConnectionRecord:
        """Connect to the upstream to learn its status and serverInfo, and record them (outside any
        namespace-wide lock: a slow upstream must not hold up its namespace's other writes)."""
        key = (record.namespace, record.connection_id)
        config = self._configs.get(key) or self._config(record)
        session = self._pool.session(key, config)
        status: dict[str, Any]
        try:
            await session.client()
            status = session.status or {"state": "connected"}
        except Exception as exc:
            # The session's own status, not the caller's error text ("next attempt in N s" is
            # true for a moment, not for as long as the row is stored).
            status = session.status or {
                "state": "error",
                "message": getattr(exc, "message", None) or "the upstream server failed",
            }
        # What the upstream said may quote the credentials it was sent: never store them.
        redactor = session.redactor
        status = redactor.redact_json(status)
        server_info = (
            redactor.redact_json(session.server_info)
            if status["state"] == "connected"
            else record.server_info
        )
        current = self._connections.get(record.namespace, {}).get(record.connection_id)
        if current is None or current.updated_at != record.updated_at:
            return current or record  # deleted or changed again meanwhile: that write wins
        updated = replace(current, status=status, server_info=server_info)
        self._connections[record.namespace][record.connection_id] = updated
        await self._store.set_connection_state(record.namespace, record.connection_id, status, server_info)
        return updated

    # change events: caches subscribe instead of every writer remembering to invalidate them
    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener(namespace, connection_id)` after every change (`None`: the namespace)."""
        self._listeners.append(listener)

    def _changed(self, namespace: str, connection_id: str | None) -> None:
        for listener in self._listeners:
            listener(namespace, connection_id)

    async def _state_changed(
        self, key: tuple[str, str], status: dict[str, Any], server_info: dict[str, Any] | None
    ) -> None:
        namespace, connection_id = key
        record = self._connections.get(namespace, {}).get(connection_id)
        if record is None:
            return
        session = self._pool.get(key)
        redactor = session.redactor if session is not None else Redactor.for_headers(self._headers(record))
        status = redactor.redact_json(status)
        server_info = (
            redactor.redact_json(server_info) if status.get("state") == "connected" else record.server_info
        )
        if record.status == status and record.server_info == server_info:
            return
        updated = replace(record, status=status, server_info=server_info)
        self._connections[namespace][connection_id] = updated
        await self._store.set_connection_state(namespace, connection_id, status, server_info)

    def cached_connections(self, namespace: str) -> list[ConnectionRecord]:
        """The connections of a namespace already in memory (no I/O)."""
        return list(self._connections.get(namespace, {}).values())
