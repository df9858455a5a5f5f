"""One connection's credentials: its stored headers plus, for OAuth upstreams, a bearer token.

The token lives here, outside the connection's configuration, so a refresh changes the headers
the session sends (its `version` goes up) without replacing the upstream session. Every decision
that needs I/O (loading, refreshing, discovering) is `UpstreamAuth`'s.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from proxy.errors import AuthRequired, JunctionError
from proxy.redact import LOG_REDACTION, Redactor
from proxy.upstream.credentials import Challenge

Key = tuple[str, str]


class Authority(Protocol):
    """What decides for the credentials (`UpstreamAuth`): every step that needs I/O."""

    def status(self, key: Key, incarnation: str) -> dict[str, Any]: ...
    async def prepare(self, creds: ConnectionCredentials) -> None: ...
    async def rejected(self, creds: ConnectionCredentials, version: int, challenge: Challenge) -> bool: ...


class ConnectionCredentials:
    """The `Credentials` of one connection (see `proxy.upstream.credentials`)."""

    def __init__(self, auth: Authority, key: Key, headers: Mapping[str, str]):
        self._auth = auth
        self.key = key
        self._static = dict(headers)
        self._headers: dict[str, str] = dict(headers)
        self.version = 0
        self.needs_authorization = False  # a person must authorize (again) before anything works
        self.failure: str | None = None  # why authorizing failed last time (not sticky)
        self.discovery_failed: tuple[float, str] | None = None  # when discovery last failed, why
        self.loaded = False
        self.stored_version: int | None = None  # the token row's version these headers are from
        self.token: str | None = None
        self.expires_at: float | None = None
        self.refresh_at: float | None = None
        self.catalog_server: str | None = None  # the catalog entry the connection was made from
        self.url = ""  # the upstream's MCP URL (where discovery starts)
        self.incarnation = ""  # tells this connection from an earlier one with the same id

    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def problem(self) -> JunctionError | None:
        """`AuthRequired` (a new one each time: raised by many tasks, with a fresh setupUrl)."""
        if not self.needs_authorization:
            return None
        return AuthRequired(self._auth.status(self.key, self.incarnation))

    def set_static(self, headers: Mapping[str, str]) -> None:
        """The connection's own headers changed (a PUT): send them, and try again."""
        if dict(headers) != self._static:
            self._static = dict(headers)
            self.needs_authorization = False
            self._rebuild()

    def adopt(self, stored_version: int | None, tokens: Mapping[str, Any] | None) -> None:
        """Use the tokens of the stored row's `stored_version` (None: there are none)."""
        self.loaded = True
        self.stored_version = stored_version
        self.token = tokens.get("access_token") if tokens else None
        self.expires_at = tokens.get("expires_at") if tokens else None
        self.refresh_at = tokens.get("refresh_at") if tokens else None
        if self.token:
            self.needs_authorization = False
            self.failure = None
            # Log lines never carry the token, whoever writes them (an upstream may echo it).
            LOG_REDACTION.remember((*self.key, "oauth"), Redactor.for_headers({"authorization": self.token}))
        self._rebuild()

    def _rebuild(self) -> None:
        headers = dict(self._static)
        if self.token:
            for name in [k for k in headers if k.lower() == "authorization"]:
                del headers[name]
            headers["Authorization"] = f"Bearer {self.token}"
        self._headers = headers
        self.version += 1

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= time.time() + 5

    async def prepare(self) -> None:
        self.failure = None
        await self._auth.prepare(self)

    async def rejected(self, version: int, challenge: Challenge) -> bool:
        return await self._auth.rejected(self, version, challenge)
