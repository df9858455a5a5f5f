"""The CLI's view of the gateway: stored login, a small REST client, one-line errors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx2

DEFAULT_URL = "http://127.0.0.1:8080"
CALL_TIMEOUT = 620.0
TIMEOUT = 30.0


class CliError(click.ClickException):
    """A one-line error for the user; exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def config_dir() -> Path:
    if os.environ.get("JUNCTION_CONFIG_DIR"):
        return Path(os.environ["JUNCTION_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "junction"


def load_config() -> dict[str, Any]:
    path = config_dir() / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def save_config(data: dict[str, Any]) -> Path:
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(path, 0o600)
    return path


def tool_path(name: str) -> str:
    """`repo.search` -> `repo/search`, each part URL-encoded (the Smithery CLI's form)."""
    return "/".join(quote(part, safe="") for part in name.split("."))


@dataclass
class Api:
    """REST calls to the gateway with the stored or environment credentials."""

    url: str
    key: str

    @classmethod
    def from_env(cls) -> Api:
        stored = load_config()
        url = os.environ.get("JUNCTION_URL") or stored.get("url") or DEFAULT_URL
        key = os.environ.get("JUNCTION_API_KEY") or stored.get("apiKey") or ""
        if not key:
            raise CliError("no API key: run `junction auth login` or set JUNCTION_API_KEY")
        return cls(url.rstrip("/"), key)

    def request(
        self, method: str, path: str, *, json_body: Any = None, params: Any = None, timeout: float = TIMEOUT
    ) -> Any:
        try:
            response = httpx2.request(
                method,
                self.url + path,
                json=json_body,
                params=params,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=timeout,
            )
        except httpx2.ConnectError as exc:
            raise CliError(f"cannot reach the gateway at {self.url}; is `junction serve` running?") from exc
        except httpx2.TimeoutException as exc:
            raise CliError(f"the gateway at {self.url} did not answer within {timeout:g} s") from exc
        except httpx2.HTTPError as exc:
            raise CliError(f"request to {self.url} failed: {type(exc).__name__}") from exc
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None
        if response.status_code >= 400:
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                raise CliError(f"{body['message']} ({response.status_code} {body.get('error', '')})".rstrip())
            raise CliError(f"the gateway answered HTTP {response.status_code}")
        if body is None:
            raise CliError("the gateway answered with something that is not JSON")
        return body


def parse_json_object(value: str | None, what: str) -> dict[str, Any] | None:
    """Parse a JSON object given on the command line, or raise a usage error."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.UsageError(f'{what} must be a JSON object, e.g. \'{{"key": "value"}}\'') from exc
    if not isinstance(parsed, dict):
        raise click.UsageError(f'{what} must be a JSON object, e.g. \'{{"key": "value"}}\'')
    return parsed


def current_namespace(option: str | None) -> str:
    namespace = option or os.environ.get("JUNCTION_NAMESPACE") or load_config().get("namespace")
    if not namespace:
        raise CliError("no namespace selected: run `junction namespace use <name>` or pass --namespace")
    return str(namespace)
