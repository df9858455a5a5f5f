"""Plain records the store reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives them back naive)."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class NamespaceRecord:
    name: str
    created_at: datetime
    tool_names: str = "auto"
    # How many tools `tools/list` shows (None: the client's default, 0: never limited), and the
    # exposed or dotted names always shown first when it is limited (proxy/gateway/budget.py).
    tool_budget: int | None = None
    curated_tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectionRecord:
    namespace: str
    connection_id: str
    name: str
    mcp_url: str
    metadata: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    # Encrypted by the vault; never leaves the process in a response.
    headers_ciphertext: str | None = field(default=None, repr=False)
    header_names: tuple[str, ...] = ()
    status: dict[str, Any] = field(default_factory=lambda: {"state": "connected"})
    server_info: dict[str, Any] | None = None
    timeouts: dict[str, float] | None = None
    # How it is configured: `server` (catalog name), `schema` (its config schema), `returnUrl`.
    setup: dict[str, Any] | None = None


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    key_hash: str = field(repr=False)
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class SigningKeyRecord:
    kid: str
    private_sealed: str = field(repr=False)
    public_pem: str
    created_at: datetime
    retired_at: datetime | None = None


@dataclass(frozen=True)
class ServiceTokenRecord:
    """A minted service token, without its secret (the signed token itself is never stored)."""

    id: str
    key_id: str
    parent_id: str | None
    ancestors: tuple[str, ...]
    policy: list[dict[str, Any]]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class OAuthClientRecord:
    """A client registered through RFC 7591 dynamic registration (its secret only as a hash)."""

    client_id: str
    metadata: dict[str, Any]
    created_at: datetime
    secret_hash: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class OAuthGrantRecord:
    """A person's consent for one client to use one namespace; its refresh tokens and access
    tokens live as long as it does. `login` holds who consented and the chain the grant narrows
    (`keyId` is the API key that began it, "" for a federated login)."""

    id: str
    client_id: str
    client_name: str
    redirect_uri: str
    resource: str
    namespace: str
    scope: str
    key_id: str
    login: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class AuthCodeRecord:
    code_hash: str = field(repr=False)
    grant_id: str
    code_challenge: str
    expires_at: datetime
    used_at: datetime | None = None
