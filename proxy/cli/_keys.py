"""`junction keys`: admin API keys (`/keys`)."""

from __future__ import annotations

import click

from proxy.cli._client import Api, segment
from proxy.cli._options import json_option
from proxy.cli._output import emit_json, table


@click.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """List API keys (never their values)."""
    data = Api.from_env().get("/keys")
    if as_json:
        emit_json(data)
        return
    table(
        ["id", "name", "prefix", "created", "last used"],
        [
            [k["id"], k["name"], k.get("prefix"), k.get("createdAt"), k.get("lastUsedAt")]
            for k in data["keys"]
        ],
    )


@keys.command("create")
@click.option("--name", default="api key", show_default=True, help="A name to recognise the key by.")
@json_option
def create_key(name: str, as_json: bool) -> None:
    """Create an API key; its value is shown only this once."""
    data = Api.from_env().request("POST", "/keys", json_body={"name": name})
    if as_json:
        emit_json(data)
        return
    click.echo(f"Created key {data['id']} ({data['name']}):\n\n    {data['key']}\n")
    click.echo("Copy it now: it is not shown again.", err=True)


@keys.command("revoke")
@click.argument("key_id")
@json_option
def revoke_key(key_id: str, as_json: bool) -> None:
    """Revoke an API key by id."""
    data = Api.from_env().request("DELETE", f"/keys/{segment(key_id)}")
    if as_json:
        emit_json(data)
    else:
        click.echo(f"Revoked {key_id}")
