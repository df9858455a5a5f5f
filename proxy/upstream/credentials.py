"""How upstream credentials reach upstreams: one hook for the SDK path and the fast lane.

A `Credentials` object gives the headers to send now and is told when the upstream refused them
(HTTP 401): it may refresh them (upstream OAuth will) and say whether a retry is worth it. Both
paths retry a refused request once, and only once. Today's connections carry static headers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

import httpx2


class Credentials(Protocol):
    """The headers that authenticate the gateway to one upstream."""

    @property
    def version(self) -> int:
        """Changes whenever `headers()` would return something new (lets callers cache heads)."""
        ...

    def headers(self) -> Mapping[str, str]:
        """The headers to send now (no I/O: called on the hot path)."""
        ...

    async def refresh(self, rejected_version: int | None) -> bool:
        """The upstream answered 401 to headers of `rejected_version`; True when new headers are
        ready to retry with (already newer, or refreshed now)."""
        ...


class StaticCredentials:
    """Headers stored with the connection; a 401 cannot be fixed by retrying them."""

    version = 0

    def __init__(self, headers: Mapping[str, str]):
        self._headers = dict(headers)

    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def refresh(self, rejected_version: int | None) -> bool:
        return False


class CredentialsAuth(httpx2.Auth):
    """The `Credentials` hook for httpx2 clients (the SDK path): sets the headers on every request,
    and on a 401 asks for a refresh and retries once."""

    requires_response_body = False

    def __init__(self, credentials: Credentials):
        self._credentials = credentials

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        version = self._credentials.version
        request.headers.update(self._credentials.headers())
        response = yield request
        if response.status_code == 401 and await self._credentials.refresh(version):
            request.headers.update(self._credentials.headers())
            yield request
