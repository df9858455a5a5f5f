"""A small REST client for the gateway that turns every failure into a one-line `CliError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from proxy.cli._config import api_key, gateway_url
from proxy.cli._errors import ApiError, CliError

TIMEOUT = 30.0
CALL_TIMEOUT = 620.0  # tool calls may legitimately run for minutes
CONNECT_TIMEOUT = 10.0


def segment(value: str) -> str:
    """One URL path segment (a namespace, connection or key id)."""
    return quote(value, safe="")


def tool_path(name: str) -> str:
    """`repo.search` -> `repo/search`, each part URL-encoded (the Smithery CLI's form)."""
    return "/".join(segment(part) for part in name.split("."))


@dataclass(frozen=True)
class Api:
    """REST calls to the gateway at `url`, authorised with `key`."""

    url: str
    key: str

    @classmethod
    def from_env(cls) -> Api:
        """The stored login, with `$JUNCTION_URL` and `$JUNCTION_API_KEY` taking precedence."""
        return cls(gateway_url(), api_key())

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

        try:
            response = httpx2.request(
                method,
                self.url + path,
                json=json_body,
                params=params,
                headers={"Authorization": f"Bearer {self.key}", "Accept": "application/json"},
                timeout=httpx2.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            )
        except httpx2.ConnectError as exc:
            raise CliError(f"cannot reach the gateway at {self.url}; is `junction serve` running?") from exc
        except httpx2.TimeoutException as exc:
            raise CliError(f"the gateway at {self.url} did not answer within {timeout:g} s") from exc
        except httpx2.HTTPError as exc:
            raise CliError(f"request to {self.url} failed: {exc or type(exc).__name__}") from exc
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise _api_error(response.status_code, body)
        if not isinstance(body, dict):
            raise CliError(f"the gateway at {self.url} answered {method} {path} with something unexpected")
        return body


def _api_error(status: int, body: Any) -> ApiError:
    code = body.get("error") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    code = code if isinstance(code, str) else None
    if not isinstance(message, str) or not message:
        message = code.replace("_", " ") if code else "the gateway refused the request"
    return ApiError(message, status, code)
