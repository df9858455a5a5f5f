"""The CLI's stored login (`config.json`, owner-only) and what the environment overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from proxy.cli._errors import CliError

DEFAULT_URL = "http://127.0.0.1:8080"
CONFIG_FILE = "config.json"
DEFAULT_CONNECT_WAIT = 5.0


def config_dir() -> Path:
    """`$JUNCTION_CONFIG_DIR`, else `$XDG_CONFIG_HOME/junction`, else `~/.config/junction`."""
    if os.environ.get("JUNCTION_CONFIG_DIR"):
        return Path(os.environ["JUNCTION_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "junction"


def load_config() -> dict[str, Any]:
    """The stored settings, or `{}` when there are none yet."""
    path = config_dir() / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}; fix or delete it") from exc
    if not isinstance(data, dict):
        raise CliError(f"{path} is not a JSON object; fix or delete it")
    return data


def save_config(data: dict[str, Any]) -> Path:
    """Replace the stored settings atomically; the directory is 0700 and the file 0600."""
    directory = config_dir()
    path = directory / CONFIG_FILE
    temporary = directory / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    try:
        if not directory.is_dir():
            directory.mkdir(parents=True, mode=0o700)
            directory.chmod(0o700)  # mkdir's mode is subject to the umask
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def gateway_url(explicit: str | None = None) -> str:
    """`--url`, then `$JUNCTION_URL`, then the stored URL, then the default."""
    url = explicit or os.environ.get("JUNCTION_URL") or load_config().get("url") or DEFAULT_URL
    if not str(url).startswith(("http://", "https://")):
        raise CliError(f"the gateway URL must start with http:// or https://, got {url!r}")
    return str(url).rstrip("/")


def connect_wait() -> float:
    """Seconds to keep retrying a refused connection (a gateway still starting): $JUNCTION_CONNECT_WAIT."""
    value = os.environ.get("JUNCTION_CONNECT_WAIT")
    if value is None or value == "":
        return DEFAULT_CONNECT_WAIT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise CliError(f"JUNCTION_CONNECT_WAIT must be a number of seconds (0-3600), got {value!r}")
    return seconds


def credential() -> tuple[str, str]:
    """The bearer to send, `$JUNCTION_API_KEY` then the stored one, and how to name it in errors.

    It is an API key or a service token, sent as given: the gateway alone tells them apart.
    """
    key = os.environ.get("JUNCTION_API_KEY")
    if key:
        return key, "the credential in $JUNCTION_API_KEY"
    key = load_config().get("apiKey")
    if not key:
        raise CliError("no API key: run `junction auth login` or set JUNCTION_API_KEY")
    return str(key), "the stored credential"


def current_namespace(option: str | None) -> str:
    """`--namespace`, then `$JUNCTION_NAMESPACE`, then `junction namespace use`."""
    namespace = option or os.environ.get("JUNCTION_NAMESPACE") or load_config().get("namespace")
    if not namespace:
        raise CliError("no namespace selected: run `junction namespace use <name>` or pass --namespace")
    return str(namespace)
