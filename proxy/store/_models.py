"""Plain records the store reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class NamespaceRecord:
    name: str
    created_at: datetime
    tool_names: str = "auto"


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
