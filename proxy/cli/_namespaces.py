"""`junction namespace`: namespaces (`/namespaces`) and the one later commands use."""

from __future__ import annotations

from typing import Any

import click

from proxy.cli._client import Api, segment
from proxy.cli._config import current_namespace, load_config, save_config
from proxy.cli._errors import CliError
from proxy.cli._options import json_option
from proxy.cli._output import emit_json, table

PAGE_SIZE = 50
MAX_PAGES = 10_000  # a guard against a gateway that never returns an empty page


@click.group()
def namespace() -> None:
    """Manage namespaces."""


def all_namespaces(api: Api) -> list[dict[str, Any]]:
    """Every namespace, paging until an empty page (as the Smithery clients do)."""
    out: list[dict[str, Any]] = []
    for page in range(1, MAX_PAGES):
        batch = api.get("/namespaces", {"page": page, "pageSize": PAGE_SIZE})["namespaces"]
        if not batch:
            break
        out += batch
    return out


@namespace.command("list")
@json_option
def list_namespaces(as_json: bool) -> None:
    """List namespaces; `*` marks the current one."""
    items = all_namespaces(Api.from_env())
    if as_json:
        emit_json({"namespaces": items})
        return
    current = load_config().get("namespace")
    table(
        ["name", "created", "current"],
        [[n["name"], n.get("createdAt"), "*" if n["name"] == current else ""] for n in items],
    )


@namespace.command("create")
@click.argument("name")
@json_option
def create_namespace(name: str, as_json: bool) -> None:
    """Create a namespace (no error if it exists)."""
    data = Api.from_env().request("PUT", f"/namespaces/{segment(name)}")
    if as_json:
        emit_json(data)
    else:
        click.echo(f"Namespace {data.get('name', name)} is ready")


@namespace.command("delete")
@click.argument("name")
@json_option
def delete_namespace(name: str, as_json: bool) -> None:
    """Delete a namespace and all its connections."""
    data = Api.from_env().request("DELETE", f"/namespaces/{segment(name)}")
    stored = load_config()
    if stored.get("namespace") == name:
        del stored["namespace"]
        save_config(stored)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"Deleted namespace {name}")


@namespace.command("use")
@click.argument("name")
@json_option
def use_namespace(name: str, as_json: bool) -> None:
    """Make NAME the namespace of later commands."""
    if name not in {n["name"] for n in all_namespaces(Api.from_env())}:
        raise CliError(
            f"namespace {name!r} does not exist; create it with `junction namespace create {name}`"
        )
    stored = load_config()
    stored["namespace"] = name
    save_config(stored)
    if as_json:
        emit_json({"namespace": name})
    else:
        click.echo(f"Using namespace {name}")


@namespace.command("show")
@json_option
def show_namespace(as_json: bool) -> None:
    """Print the current namespace."""
    name = current_namespace(None)
    if as_json:
        emit_json({"namespace": name})
    else:
        click.echo(name)
