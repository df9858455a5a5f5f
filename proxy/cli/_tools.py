"""`junction tool`: the tools of one connection (`/{namespace}/{id}/.tools`)."""

from __future__ import annotations

import click

from proxy.cli._client import CALL_TIMEOUT, Api, segment, tool_path
from proxy.cli._config import current_namespace
from proxy.cli._options import json_object, json_option, namespace_option
from proxy.cli._output import emit_json, first_line, show_result, show_tool, table


@click.group()
def tool() -> None:
    """List, inspect and call the tools of a connection."""


def tools_path(namespace: str | None, connection_id: str) -> str:
    return f"/{segment(current_namespace(namespace))}/{segment(connection_id)}/.tools"


@tool.command("list")
@click.argument("connection_id")
@click.argument("prefix", required=False)
@namespace_option
@json_option
def list_tools(connection_id: str, prefix: str | None, namespace: str | None, as_json: bool) -> None:
    """List the tools of a connection (only those whose name starts with PREFIX, if given)."""
    data = Api.from_env().get(tools_path(namespace, connection_id))
    tools = [t for t in data["tools"] if not prefix or t["name"].startswith(prefix)]
    if as_json:
        emit_json({"tools": tools})
    else:
        table(["name", "description"], [[t["name"], first_line(t.get("description"))] for t in tools])


@tool.command("get")
@click.argument("connection_id")
@click.argument("tool_name")
@namespace_option
@json_option
def get_tool(connection_id: str, tool_name: str, namespace: str | None, as_json: bool) -> None:
    """Show a tool and its input schema, or list the group TOOL_NAME names (`repo` for `repo.*`).

    TOOL_NAME is resolved by the gateway as in REST paths: the exact name first, then `/` and `.`
    as the same separator (`files.read` finds a tool named `files/read`).
    """
    data = Api.from_env().get(f"{tools_path(namespace, connection_id)}/{tool_path(tool_name)}")
    if as_json:
        emit_json(data)
    elif "name" not in data and isinstance(data.get("tools"), list):
        table(["name", "description"], [[t["name"], first_line(t.get("description"))] for t in data["tools"]])
    else:
        show_tool(data)


@tool.command("call")
@click.argument("connection_id")
@click.argument("tool_name")
@click.argument("args_json", required=False)
@namespace_option
@json_option
def call_tool(
    connection_id: str, tool_name: str, args_json: str | None, namespace: str | None, as_json: bool
) -> None:
    """Call a tool with ARGS_JSON (a JSON object, default {}); exit 1 if the tool reports an error.

    ARGS_JSON may also be @FILE (read from a file) or - (read from stdin). TOOL_NAME is resolved
    as by `tool get`.
    """
    arguments = json_object(args_json, "ARGS_JSON") or {}
    path = f"{tools_path(namespace, connection_id)}/{tool_path(tool_name)}"
    result = Api.from_env().request("POST", path, json_body=arguments, timeout=CALL_TIMEOUT)
    if as_json:
        emit_json(result)
    else:
        show_result(result)
    if result.get("isError"):
        raise SystemExit(1)
