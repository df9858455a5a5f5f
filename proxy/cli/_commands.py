"""`junction` subcommands: everything but `serve` is a REST call to the gateway."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import click

from proxy.cli._client import (
    CALL_TIMEOUT,
    DEFAULT_URL,
    Api,
    CliError,
    current_namespace,
    load_config,
    parse_json_object,
    save_config,
    tool_path,
)
from proxy.cli._output import emit_json, show_connection, show_result, status_text, table

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
namespace_option = click.option("--namespace", "-n", help="Namespace (default: `junction namespace use`).")


# --- auth ----------------------------------------------------------------------------------------
@click.group()
def auth() -> None:
    """Log in to a gateway."""


@auth.command("login")
@click.option("--url", help=f"Gateway URL (default {DEFAULT_URL} or $JUNCTION_URL).")
@click.option("--key", help="API key (prompted when omitted).")
@json_option
def auth_login(url: str | None, key: str | None, as_json: bool) -> None:
    """Check an API key against the gateway and store it (0600) for later commands."""
    url = (url or os.environ.get("JUNCTION_URL") or load_config().get("url") or DEFAULT_URL).rstrip("/")
    key = key or click.prompt("API key", hide_input=True)
    try:
        Api(url, key).request("GET", "/namespaces", params={"pageSize": 1})
    except CliError as exc:
        if "(401" in exc.format_message():
            raise CliError(f"invalid API key for {url}") from exc
        raise
    stored = load_config()
    stored.update({"url": url, "apiKey": key})
    path = save_config(stored)
    if as_json:
        emit_json({"url": url, "configFile": str(path)})
    else:
        click.echo(f"Logged in to {url} (saved to {path})")


@auth.command("logout")
def auth_logout() -> None:
    """Forget the stored API key."""
    stored = load_config()
    stored.pop("apiKey", None)
    save_config(stored)
    click.echo("Logged out")


@auth.command("whoami")
@json_option
def auth_whoami(as_json: bool) -> None:
    """Show the gateway URL and a masked key."""
    api = Api.from_env()
    masked = api.key[:8] + "…" if len(api.key) > 12 else "…"
    if as_json:
        emit_json({"url": api.url, "apiKey": masked, "namespace": load_config().get("namespace")})
    else:
        click.echo(f"{api.url}  key {masked}")


# --- keys ----------------------------------------------------------------------------------------
@click.group()
def keys() -> None:
    """Manage admin API keys."""


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    """List API keys (never their values)."""
    data = Api.from_env().request("GET", "/keys")
    if as_json:
        emit_json(data)
        return
    table(
        ["id", "name", "prefix", "created"],
        [[k["id"], k["name"], k.get("prefix"), k.get("createdAt")] for k in data["keys"]],
    )


@keys.command("create")
@click.option("--name", default="api key", show_default=True)
@json_option
def keys_create(name: str, as_json: bool) -> None:
    """Create an API key; it is shown once."""
    data = Api.from_env().request("POST", "/keys", json_body={"name": name})
    if as_json:
        emit_json(data)
        return
    click.echo(
        f"Created {data['id']} ({data['name']}). The key is shown only this once:\n\n    {data['key']}\n"
    )


@keys.command("revoke")
@click.argument("key_id")
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke an API key by id."""
    data = Api.from_env().request("DELETE", f"/keys/{quote(key_id, safe='')}")
    emit_json(data) if as_json else click.echo(f"Revoked {key_id}")


# --- namespaces ----------------------------------------------------------------------------------
@click.group()
def namespace() -> None:
    """Manage namespaces."""


def _all_namespaces(api: Api) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in range(1, 1000):
        batch = api.request("GET", "/namespaces", params={"page": page, "pageSize": 50})["namespaces"]
        if not batch:
            break
        out += batch
    return out


@namespace.command("list")
@json_option
def namespace_list(as_json: bool) -> None:
    """List namespaces."""
    items = _all_namespaces(Api.from_env())
    current = load_config().get("namespace")
    if as_json:
        emit_json({"namespaces": items})
        return
    table(
        ["name", "created", ""],
        [[n["name"], n.get("createdAt"), "*" if n["name"] == current else ""] for n in items],
    )


@namespace.command("create")
@click.argument("name")
@json_option
def namespace_create(name: str, as_json: bool) -> None:
    """Create a namespace (no error if it exists)."""
    data = Api.from_env().request("PUT", f"/namespaces/{quote(name, safe='')}")
    emit_json(data) if as_json else click.echo(f"Namespace {data['name']} is ready")


@namespace.command("delete")
@click.argument("name")
@json_option
def namespace_delete(name: str, as_json: bool) -> None:
    """Delete a namespace and all its connections."""
    data = Api.from_env().request("DELETE", f"/namespaces/{quote(name, safe='')}")
    emit_json(data) if as_json else click.echo(f"Deleted namespace {name}")


@namespace.command("use")
@click.argument("name")
def namespace_use(name: str) -> None:
    """Make NAME the namespace of later commands."""
    if name not in {n["name"] for n in _all_namespaces(Api.from_env())}:
        raise CliError(
            f"namespace {name!r} does not exist; create it with `junction namespace create {name}`"
        )
    stored = load_config()
    stored["namespace"] = name
    save_config(stored)
    click.echo(f"Using namespace {name}")


@namespace.command("show")
def namespace_show() -> None:
    """Print the current namespace."""
    click.echo(current_namespace(None))


# --- connections ---------------------------------------------------------------------------------
@click.group()
def mcp() -> None:
    """Manage connections to upstream MCP servers."""


@mcp.command("add")
@click.argument("url")
@click.option("--id", "connection_id", help="Connection id (default: generated).")
@click.option("--name", help="Display name.")
@click.option("--metadata", help='JSON object, e.g. \'{"userId": "u1"}\'.')
@click.option("--headers", help="JSON object of headers sent upstream (stored encrypted, write-only).")
@namespace_option
@json_option
def mcp_add(
    url: str,
    connection_id: str | None,
    name: str | None,
    metadata: str | None,
    headers: str | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Connect an upstream MCP server at URL."""
    body: dict[str, Any] = {"mcpUrl": url}
    if name:
        body["name"] = name
    if (meta := parse_json_object(metadata, "--metadata")) is not None:
        body["metadata"] = meta
    if (hdrs := parse_json_object(headers, "--headers")) is not None:
        body["headers"] = hdrs
    ns = current_namespace(namespace)
    api = Api.from_env()
    if connection_id:
        data = api.request("PUT", f"/{quote(ns, safe='')}/{quote(connection_id, safe='')}", json_body=body)
    else:
        data = api.request("POST", f"/{quote(ns, safe='')}", json_body=body)
    if as_json:
        emit_json(data)
    else:
        show_connection(data)


@mcp.command("list")
@click.option("--metadata", help="Only connections whose metadata has these key/values (JSON object).")
@click.option("--limit", type=click.IntRange(1, 100), default=100, help="Page size used while listing.")
@namespace_option
@json_option
def mcp_list(metadata: str | None, limit: int, namespace: str | None, as_json: bool) -> None:
    """List connections."""
    ns = current_namespace(namespace)
    filters = parse_json_object(metadata, "--metadata") or {}
    params: dict[str, Any] = {"limit": limit}
    for key, value in filters.items():
        params[f"metadata.{key}"] = value if isinstance(value, str) else json.dumps(value)
    api = Api.from_env()
    items: list[dict[str, Any]] = []
    while True:
        page = api.request("GET", f"/{quote(ns, safe='')}", params=params)
        items += page["connections"]
        if not page.get("nextCursor"):
            break
        params["cursor"] = page["nextCursor"]
    if as_json:
        emit_json({"connections": items})
        return
    table(
        ["id", "name", "status", "url"],
        [[c["connectionId"], c["name"], _clip(status_text(c), 60), c["mcpUrl"]] for c in items],
    )


@mcp.command("get")
@click.argument("connection_id")
@namespace_option
@json_option
def mcp_get(connection_id: str, namespace: str | None, as_json: bool) -> None:
    """Show one connection."""
    ns = current_namespace(namespace)
    data = Api.from_env().request("GET", f"/{quote(ns, safe='')}/{quote(connection_id, safe='')}")
    emit_json(data) if as_json else show_connection(data)


@mcp.command("remove")
@click.argument("connection_ids", nargs=-1, required=True)
@namespace_option
@json_option
def mcp_remove(connection_ids: tuple[str, ...], namespace: str | None, as_json: bool) -> None:
    """Remove connections (closing their upstream sessions)."""
    ns = current_namespace(namespace)
    api = Api.from_env()
    for connection_id in connection_ids:
        api.request("DELETE", f"/{quote(ns, safe='')}/{quote(connection_id, safe='')}")
    if as_json:
        emit_json({"success": True, "removed": list(connection_ids)})
    else:
        click.echo(f"Removed {', '.join(connection_ids)}")


# --- tools ---------------------------------------------------------------------------------------
@click.group()
def tool() -> None:
    """List, inspect and call tools of a connection."""


def _tools_url(ns: str, connection_id: str) -> str:
    return f"/{quote(ns, safe='')}/{quote(connection_id, safe='')}/.tools"


@tool.command("list")
@click.argument("connection_id")
@click.argument("prefix", required=False)
@namespace_option
@json_option
def tool_list(connection_id: str, prefix: str | None, namespace: str | None, as_json: bool) -> None:
    """List the tools of a connection (optionally only those starting with PREFIX)."""
    data = Api.from_env().request("GET", _tools_url(current_namespace(namespace), connection_id))
    tools = [t for t in data["tools"] if not prefix or t["name"].startswith(prefix)]
    if as_json:
        emit_json({"tools": tools})
        return
    table(["name", "description"], [[t["name"], _first_line(t.get("description"))] for t in tools])


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:100] if lines else ""


@tool.command("get")
@click.argument("connection_id")
@click.argument("tool_name")
@namespace_option
@json_option
def tool_get(connection_id: str, tool_name: str, namespace: str | None, as_json: bool) -> None:
    """Show a tool and its input schema."""
    url = f"{_tools_url(current_namespace(namespace), connection_id)}/{tool_path(tool_name)}"
    data = Api.from_env().request("GET", url)
    if as_json or "name" not in data:
        emit_json(data)
        return
    click.echo(data["name"])
    if data.get("description"):
        click.echo(data["description"])
    click.echo("input schema:")
    emit_json(data.get("inputSchema", {}))


@tool.command("call")
@click.argument("connection_id")
@click.argument("tool_name")
@click.argument("args_json", required=False)
@namespace_option
@json_option
def tool_call(
    connection_id: str, tool_name: str, args_json: str | None, namespace: str | None, as_json: bool
) -> None:
    """Call a tool with a JSON object of arguments; exit 1 when the tool reports an error."""
    arguments = parse_json_object(args_json, "the arguments") or {}
    url = f"{_tools_url(current_namespace(namespace), connection_id)}/{tool_path(tool_name)}"
    result = Api.from_env().request("POST", url, json_body=arguments, timeout=CALL_TIMEOUT)
    emit_json(result) if as_json else show_result(result)
    if result.get("isError"):
        raise SystemExit(1)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
