"""A small REST client for the gateway that turns every failure into a one-line `CliError`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from proxy.cli._config import connect_wait, credential, gateway_url
from proxy.cli._errors import ApiError, CliError, CredentialRejected, PermissionDenied

TIMEOUT = 30.0
CALL_TIMEOUT = 620.0  # tool calls may legitimately run for minutes
CONNECT_TIMEOUT = 10.0
RETRY_INTERVAL = 0.2


def segment(value: str) -> str:
    """One URL path segment (a namespace, connection or key id)."""
    return quote(value, safe="")


def tool_path(name: str) -> str:
    """A tool name as one path segment (`files/read` -> `files%2Fread`, `.` kept as it is).

    The gateway resolves it by the same rule as any REST path (`find_tool`): the exact name first,
    then `/` and `.` as one separator, so `repo/search` and `repo.search` both work, and the
    CLI never turns one tool's name into another's (`a.b` into `a/b` when both exist).
    """
    encoded = segment(name)
    return encoded.replace(".", "%2E") if set(encoded) == {"."} else encoded  # `.`/`..` are dot-segments


def _refused(exc: BaseException) -> bool:
    """Whether nothing listens at the address (yet): the one connect failure worth retrying."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class Api:
    """REST calls to the gateway at `url`, authorised with `key` (an API key or a service token)."""

    url: str
    key: str
    key_origin: str | None = None  # how a refused key is named to the user

    @classmethod
    def from_env(cls) -> Api:
        """The stored login, with `$JUNCTION_URL` and `$JUNCTION_API_KEY` taking precedence."""
        key, origin = credential()
        return cls(gateway_url(), key, origin)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float = TIMEOUT,
    ) -> Any:
        """Send one request and return the decoded JSON body of a 2xx answer."""
        import httpx2  # imported here so `--help` and usage errors stay fast

        deadline = time.monotonic() + connect_wait()
        while True:
            try:
                response = httpx2.request(
                    method,
                    self.url + path,
                    json=json_body,
                    params=params,
                    headers={"Authorization": f"Bearer {self.key}", "Accept": "application/json"},
                    timeout=httpx2.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
                )
                break
            except httpx2.ConnectError as exc:
                # A refused connection is retried for a few seconds: `junction serve &` followed at
                # once by a command must not fail because the socket is not bound yet.
                if _refused(exc) and time.monotonic() + RETRY_INTERVAL < deadline:
                    time.sleep(RETRY_INTERVAL)
                    continue
                raise CliError(
                    f"cannot reach the gateway at {self.url}; is `junction serve` running?"
                ) from exc
            except httpx2.TimeoutException as exc:
                raise CliError(f"the gateway at {self.url} did not answer within {timeout:g} s") from exc
            except httpx2.HTTPError as exc:
                raise CliError(f"request to {self.url} failed: {exc or type(exc).__name__}") from exc
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise _api_error(response.status_code, body, self.key_origin)
        if not isinstance(body, dict):
            raise CliError(f"the gateway at {self.url} answered {method} {path} with something unexpected")
        return body


def _api_error(status: int, body: Any, key_origin: str | None) -> ApiError:
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    code = code if isinstance(code, str) else None
    if not isinstance(message, str) or not message:
        message = code.replace("_", " ") if code else "the gateway refused the request"
    if status == 401:
        return CredentialRejected(message, status, code, key_origin)
    if status == 403:
        return PermissionDenied(message, status, code)
    return ApiError(message, status, code)
