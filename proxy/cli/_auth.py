"""`junction auth`: store, show and forget the API key (or service token) used by the other commands."""

from __future__ import annotations

import base64
import json
import sys

import click

from proxy.cli._client import Api
from proxy.cli._config import DEFAULT_URL, gateway_url, load_config, save_config
from proxy.cli._errors import CliError, CredentialRejected, PermissionDenied
from proxy.cli._options import json_option
from proxy.cli._output import emit_json


@click.group()
def auth() -> None:
    """Log in to a gateway."""


@auth.command("login")
@click.option("--url", help=f"Gateway URL (default $JUNCTION_URL, the stored one, or {DEFAULT_URL}).")
@click.option(
    "--key",
    help="API key or service token (default: prompted for, or read from stdin when it is not a terminal).",
)
@json_option
def login(url: str | None, key: str | None, as_json: bool) -> None:
    """Check an API key or service token against the gateway and store it (mode 0600) for later commands."""
    url = gateway_url(url)
    key = key or read_key()
    try:
        Api(url, key).get("/namespaces", {"pageSize": 1})
    except CredentialRejected as exc:
        raise CliError(f"invalid API key for {url}") from exc
    except PermissionDenied:
        pass  # a valid credential whose policy does not cover namespaces (a scoped service token)
    stored = load_config()
    if stored.get("url") != url:
        stored.pop("namespace", None)  # it named a namespace of another gateway
    stored.update({"url": url, "apiKey": key})
    path = save_config(stored)
    if as_json:
        emit_json({"url": url, "namespace": stored.get("namespace"), "configFile": str(path)})
    else:
        click.echo(f"Logged in to {url} (saved to {path})")


@auth.command("logout")
@json_option
def logout(as_json: bool) -> None:
    """Forget the stored API key."""
    stored = load_config()
    had_key = stored.pop("apiKey", None) is not None
    if had_key:
        save_config(stored)
    if as_json:
        emit_json({"success": True, "loggedOut": had_key})
    else:
        click.echo("Logged out" if had_key else "Not logged in")


@auth.command("whoami")
@json_option
def whoami(as_json: bool) -> None:
    """Show the gateway URL, a masked key and the current namespace."""
    api = Api.from_env()
    masked = mask(api.key)
    namespace = load_config().get("namespace")
    if as_json:
        emit_json({"url": api.url, "apiKey": masked, "namespace": namespace})
    else:
        click.echo(f"url:       {api.url}\nkey:       {masked}\nnamespace: {namespace or '(none)'}")


def read_key() -> str:
    """Prompt without echo on a terminal; otherwise read one line (`echo $KEY | junction auth login`)."""
    if sys.stdin.isatty():
        key = click.prompt("API key", hide_input=True)
    else:
        key = sys.stdin.readline()
    if not key.strip():
        raise CliError("no API key given: pass --key, type it at the prompt or pipe it to stdin")
    return str(key).strip()


def mask(key: str) -> str:
    """Enough of a credential to recognise it, never enough to use it: a service token by its id
    (every token starts alike), an API key by its first characters."""
    token_id = _token_id(key)
    if token_id is not None:
        return f"service token {token_id}"
    return key[:8] + "…" if len(key) >= 24 else "…"


def _token_id(credential: str) -> str | None:
    """The `jti` of a JWT-shaped credential, read without verifying (display only)."""
    parts = credential.split(".")
    if len(parts) != 3 or not credential.startswith("eyJ"):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    jti = claims.get("jti") if isinstance(claims, dict) else None
    return jti if isinstance(jti, str) and jti.isprintable() and len(jti) <= 64 else None
