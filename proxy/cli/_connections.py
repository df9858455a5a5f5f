"""`junction mcp`: connections to upstream MCP servers (`/{namespace}/{id}`)."""

from __future__ import annotations

import json
from typing import Any

import click

from proxy.cli._client import Api, segment
from proxy.cli._config import current_namespace
from proxy.cli._options import json_object, json_option, namespace_option
from proxy.cli._output import clip, emit_json, show_connection, status_text, table

PAGE_LIMIT = 100  # the most the gateway returns per page


@click.group()
def mcp() -> None:
    """Manage connections to upstream MCP servers."""


@mcp.command("add")
@click.argument("url")
@click.option("--id", "connection_id", help="Connection id; creates or replaces it (default: generated).")
@click.option("--name", help="Display name.")
@click.option("--metadata", help='JSON object, e.g. \'{"userId": "u1"}\'.')
@click.option("--headers", help="JSON object of headers sent upstream (stored encrypted, never shown).")
@namespace_option
@json_option
def add(
    url: str,
    connection_id: str | None,
    name: str | None,
    metadata: str | None,
    headers: str | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Connect the upstream MCP server at URL."""
    body: dict[str, Any] = {"mcpUrl": url}
    if name:
        body["name"] = name
    if (meta := json_object(metadata, "--metadata")) is not None:
        body["metadata"] = meta
    if (hdrs := json_object(headers, "--headers")) is not None:
        body["headers"] = hdrs
    path = f"/{segment(current_namespace(namespace))}"
    api = Api.from_env()
    if connection_id:
        data = api.request("PUT", f"{path}/{segment(connection_id)}", json_body=body)
    else:
        data = api.request("POST", path, json_body=body)
    if as_json:
        emit_json(data)
    else:
        show_connection(data)


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
    api = Api.from_env()
    items: list[dict[str, Any]] = []
    while limit is None or len(items) < limit:
        params["limit"] = PAGE_LIMIT if limit is None else min(PAGE_LIMIT, limit - len(items))
        page = api.get(path, params)
        items += page["connections"]
        if not page.get("nextCursor"):
            break
        params["cursor"] = page["nextCursor"]
    items = items[:limit]
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
    """Remove connections (closing their upstream sessions)."""
    path = f"/{segment(current_namespace(namespace))}"
    api = Api.from_env()
    for connection_id in connection_ids:
        api.request("DELETE", f"{path}/{segment(connection_id)}")
        if not as_json:
            click.echo(f"Removed {connection_id}")
    if as_json:
        emit_json({"success": True, "removed": list(connection_ids)})
