"""How upstream credentials reach upstreams: one hook for the SDK path and the fast lane.

A `Credentials` object gives the headers to send now and is told when the upstream refused them
(HTTP 401, or 403 `insufficient_scope`): it may refresh them (upstream OAuth does) and say whether
a retry is worth it. Both paths retry a refused request once, and only once. When nothing can
help until a person acts (authorize the gateway again), `problem` says so, and the session
reports it instead of retrying.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx2

from proxy.errors import JunctionError

_AUTH_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    """What an upstream said when it refused a request (`WWW-Authenticate: Bearer ...`)."""

    status: int
    resource_metadata: str | None = None
    scope: str | None = None
    error: str | None = None

    @classmethod
    def parse(cls, status: int, header: str | None) -> Challenge:
        params: dict[str, str] = {}
        if header and header.strip().lower().startswith("bearer"):
            for name, quoted, bare in _AUTH_PARAM.findall(header.strip()[6:]):
                params.setdefault(name.lower(), quoted.replace('\\"', '"') if quoted else bare)
        return cls(status, params.get("resource_metadata"), params.get("scope"), params.get("error"))

    @property
    def insufficient_scope(self) -> bool:
        return self.status == 403 and self.error == "insufficient_scope"

    @property
    def refused(self) -> bool:
        """A refusal credentials may fix: 401, or 403 asking for more scope."""
        return self.status == 401 or self.insufficient_scope


class Credentials(Protocol):
    """The headers that authenticate the gateway to one upstream."""

    @property
    def version(self) -> int:
        """Changes whenever `headers()` would return something new (lets callers cache heads)."""
        ...

    @property
    def problem(self) -> JunctionError | None:
        """Why no request can succeed until someone acts (e.g. `AuthRequired`), else None."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the last attempt to fix a refusal failed (for the status), else None."""
        ...

    def headers(self) -> Mapping[str, str]:
        """The headers to send now (no I/O: called on the hot path)."""
        ...

    async def prepare(self) -> None:
        """Before connecting: load stored tokens, refresh expired ones."""
        ...

    async def rejected(self, version: int, challenge: Challenge) -> bool:
        """The upstream refused headers of `version`; True when new headers are ready to retry
        with (already newer, or refreshed now)."""
        ...


class StaticCredentials:
    """Headers stored with the connection; a 401 cannot be fixed by retrying them."""

    version = 0
    problem = None
    failure = None

    def __init__(self, headers: Mapping[str, str]):
        self._headers = dict(headers)

    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def prepare(self) -> None:
        return None

    async def rejected(self, version: int, challenge: Challenge) -> bool:
        return False


class CredentialsAuth(httpx2.Auth):
    """The `Credentials` hook for httpx2 clients (the SDK path): sets the headers on every request,
    and on a refusal asks for new credentials and retries once."""

    requires_response_body = False

    def __init__(self, credentials: Credentials):
        self._credentials = credentials

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        version = self._credentials.version
        request.headers.update(self._credentials.headers())
        response = yield request
        if response.status_code in (401, 403):
            challenge = Challenge.parse(response.status_code, response.headers.get("www-authenticate"))
            if challenge.refused and await self._credentials.rejected(version, challenge):
                request.headers.update(self._credentials.headers())
                yield request
