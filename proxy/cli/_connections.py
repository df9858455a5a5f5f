"""`junction mcp`: connections to upstream MCP servers (`/{namespace}/{id}`)."""

from __future__ import annotations

import json
from typing import Any

import click

from proxy.cli._client import Api, segment
from proxy.cli._config import current_namespace
from proxy.cli._errors import CliError
from proxy.cli._options import FROM_FILE_HELP, json_object, json_option, namespace_option
from proxy.cli._output import clip, delete_each, emit_json, show_connection, status_text, table

PAGE_LIMIT = 100  # the most the gateway returns per page


@click.group()
def mcp() -> None:
    """Manage connections to upstream MCP servers."""


def connections(
    api: Api, path: str, params: dict[str, Any], limit: int | None = None
) -> list[dict[str, Any]]:
    """The connections at `path` matching `params`, following the gateway's pages (to `limit`)."""
    params = dict(params)
    items: list[dict[str, Any]] = []
    while limit is None or len(items) < limit:
        params["limit"] = PAGE_LIMIT if limit is None else min(PAGE_LIMIT, limit - len(items))
        page = api.get(path, params)
        items += page["connections"]
        if not page.get("nextCursor"):
            break
        params["cursor"] = page["nextCursor"]
    return items[:limit]


def _same_connection(api: Api, path: str, url: str, metadata: dict[str, Any] | None) -> str | None:
    """The id of the one connection with this URL (and this metadata, when given), else None."""
    found = [
        c
        for c in connections(api, path, {"mcpUrl": url})
        if c.get("mcpUrl") == url and (metadata is None or (c.get("metadata") or {}) == metadata)
    ]
    if len(found) > 1:
        ids = ", ".join(c["connectionId"] for c in found)
        raise CliError(
            f"{len(found)} connections already use {url} ({ids}): pass --id to update one of them, "
            "--metadata to pick one, or --new to add another"
        )
    return str(found[0]["connectionId"]) if found else None


@mcp.command("add")
@click.argument("url")
@click.option("--id", "connection_id", help="Connection id; creates or updates it.")
@click.option("--new", "always_new", is_flag=True, help="Add a connection even if one has this URL already.")
@click.option("--name", help="Display name.")
@click.option("--metadata", help=f'JSON object, e.g. \'{{"userId": "u1"}}\'; {FROM_FILE_HELP}.')
@click.option(
    "--headers",
    help=f"JSON object of headers sent upstream (stored encrypted, never shown); {FROM_FILE_HELP}.",
)
@namespace_option
@json_option
def add(
    url: str,
    connection_id: str | None,
    always_new: bool,
    name: str | None,
    metadata: str | None,
    headers: str | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Connect the upstream MCP server at URL.

    Without --id, a connection of the namespace that already has this URL (and the same
    --metadata, when given) is updated rather than duplicated; --new always adds one, with a
    generated id. Exits 1, after showing the connection, when it is saved but cannot connect.
    """
    if connection_id and always_new:
        raise click.UsageError("--id and --new exclude each other")
    body: dict[str, Any] = {"mcpUrl": url}
    if name:
        body["name"] = name
    if (meta := json_object(metadata, "--metadata")) is not None:
        body["metadata"] = meta
    if (hdrs := json_object(headers, "--headers")) is not None:
        body["headers"] = hdrs
    path = f"/{segment(current_namespace(namespace))}"
    api = Api.from_env()
    reused = None if connection_id or always_new else _same_connection(api, path, url, meta)
    if connection_id or reused:
        data = api.request("PUT", f"{path}/{segment(connection_id or str(reused))}", json_body=body)
    else:
        data = api.request("POST", path, json_body=body)
    if as_json:
        emit_json(data)
    else:
        if reused:
            click.echo(f"Updated connection {reused}, which has this URL (--new adds another)", err=True)
        show_connection(data)
    status = data.get("status") or {}
    if status.get("state") == "error":
        cid = data.get("connectionId", connection_id or reused)
        raise CliError(
            f"connection {cid} is saved but cannot connect: {status.get('message') or 'no reason given'}"
            f"; fix it with `junction mcp add {url} --id {cid} ...` or remove it with `junction mcp remove {cid}`"
        )


@mcp.command("list")
@click.option("--metadata", help="Only connections whose metadata has these keys and values (JSON object).")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many connections.")
@namespace_option
@json_option
def list_connections(metadata: str | None, limit: int | None, namespace: str | None, as_json: bool) -> None:
    """List connections, following the gateway's pages to the end."""
    params: dict[str, Any] = {
        f"metadata.{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in (json_object(metadata, "--metadata") or {}).items()
    }
    path = f"/{segment(current_namespace(namespace))}"
    items = connections(Api.from_env(), path, params, limit)
    if as_json:
        emit_json({"connections": items})
        return
    table(
        ["id", "name", "status", "url"],
        [[c["connectionId"], c.get("name"), clip(status_text(c), 60), c.get("mcpUrl")] for c in items],
    )


@mcp.command("get")
@click.argument("connection_id")
@namespace_option
@json_option
def get(connection_id: str, namespace: str | None, as_json: bool) -> None:
    """Show one connection."""
    path = f"/{segment(current_namespace(namespace))}/{segment(connection_id)}"
    data = Api.from_env().get(path)
    if as_json:
        emit_json(data)
    else:
        show_connection(data)


@mcp.command("remove")
@click.argument("connection_ids", nargs=-1, required=True)
@namespace_option
@json_option
def remove(connection_ids: tuple[str, ...], namespace: str | None, as_json: bool) -> None:
    """Remove connections (closing their upstream sessions).

    Every id that can be removed is; the others are reported, and the exit status is 1 if any
    could not be removed.
    """
    path = f"/{segment(current_namespace(namespace))}"
    api = Api.from_env()
    delete_each(
        api,
        {cid: f"{path}/{segment(cid)}" for cid in connection_ids},
        done="removed",
        id_field="connectionId",
        as_json=as_json,
    )
