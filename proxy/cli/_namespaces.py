"""`junction namespace`: namespaces (`/namespaces`) and the one later commands use."""

from __future__ import annotations

import sys
from typing import Any

import click

from proxy.cli._client import Api, segment
from proxy.cli._config import current_namespace, load_config, save_config
from proxy.cli._errors import CliError, PermissionDenied
from proxy.cli._options import json_option
from proxy.cli._output import emit_json, table

PAGE_SIZE = 50
MAX_PAGES = 10_000  # a guard against a gateway that never returns an empty page
TOOL_NAME_STYLES = ("safe", "dotted", "bare", "auto")

tool_names_option = click.option(
    "--tool-names",
    type=click.Choice(TOOL_NAME_STYLES),
    help="Tool names on the namespace's MCP endpoint: safe (<connection>__<tool>, accepted by every "
    "LLM API), dotted (<connection>.<tool>), bare (the server's own names, for a namespace of one "
    "connection), or auto (the gateway's tool_names setting, safe unless changed). A request's "
    "?tool_names= overrides it.",
)


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
        ["name", "tool names", "created", "current"],
        [
            [n["name"], n.get("toolNames"), n.get("createdAt"), "*" if n["name"] == current else ""]
            for n in items
        ],
    )


@namespace.command("create")
@click.argument("name")
@tool_names_option
@json_option
def create_namespace(name: str, tool_names: str | None, as_json: bool) -> None:
    """Create a namespace (no error if it exists; --tool-names then updates it)."""
    body = {"toolNames": tool_names} if tool_names else None
    data = Api.from_env().request("PUT", f"/namespaces/{segment(name)}", json_body=body)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"Namespace {data.get('name', name)} is ready")


def _tool_budget(value: str | None) -> int | None | str:
    """`--tool-budget`: a number, or `default` (the client's default); "" when not given."""
    if value is None:
        return ""
    if value.strip().lower() == "default":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise click.BadParameter(
            "give a number of tools (0: never limit) or default", param_hint="--tool-budget"
        ) from exc


@namespace.command("set")
@click.argument("name")
@tool_names_option
@click.option(
    "--tool-budget",
    metavar="N|default",
    help="At most N tools in the namespace's tools/list, two of them the search_tools and call_tool "
    "meta-tools that reach the rest; 0 never limits; default follows the client (tool_budgets: "
    "Cursor 40, Windsurf 50, VS Code 128).",
)
@click.option(
    "--curated",
    metavar="A,B,...",
    help="Tools always listed first when the list is limited, by the names tools/list shows or "
    "dotted (<connection>.<tool>), comma-separated; an empty value clears them.",
)
@json_option
def set_namespace(
    name: str, tool_names: str | None, tool_budget: str | None, curated: str | None, as_json: bool
) -> None:
    """Change the settings of an existing namespace."""
    body: dict[str, Any] = {}
    if tool_names is not None:
        body["toolNames"] = tool_names
    budget = _tool_budget(tool_budget)
    if budget != "":
        body["toolBudget"] = budget
    if curated is not None:
        body["curatedTools"] = [n.strip() for n in curated.split(",") if n.strip()]
    if not body:
        raise click.UsageError("nothing to set: give --tool-names, --tool-budget or --curated")
    api = Api.from_env()
    path = f"/namespaces/{segment(name)}"
    api.get(path)  # PUT would create a namespace that does not exist: a typo must fail instead
    data = api.request("PUT", path, json_body=body)
    if as_json:
        emit_json(data)
        return
    parts = []
    if "toolNames" in body:
        parts.append(f"tool names {data.get('toolNames')}")
    if "toolBudget" in body:
        limit = data.get("toolBudget")
        parts.append(f"tool budget {'client default' if limit is None else limit or 'unlimited'}")
    if "curatedTools" in body:
        parts.append(f"curated tools {', '.join(data.get('curatedTools') or []) or 'none'}")
    click.echo(f"Namespace {name}: {', '.join(parts)}")


@namespace.command("delete")
@click.argument("name")
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when stdin is not a terminal)."
)
@json_option
def delete_namespace(name: str, yes: bool, as_json: bool) -> None:
    """Delete a namespace and all its connections.

    On a terminal it asks first, saying how many connections go with it. Without a terminal
    (scripts, CI) it refuses unless --yes is given, so a pipeline never deletes by accident.
    """
    api = Api.from_env()
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(
                f"refusing to delete namespace {name} without confirmation: stdin is not a terminal; "
                "pass --yes to delete it"
            )
        api.get(f"/namespaces/{segment(name)}")  # a missing namespace fails before the question
        page = api.get(f"/{segment(name)}", {"limit": 100})
        count = f"{len(page['connections'])}{'+' if page.get('nextCursor') else ''}"
        noun = "connection" if count == "1" else "connections"
        if not click.confirm(f"Delete namespace {name} and its {count} {noun}? This cannot be undone."):
            raise CliError(f"namespace {name} was not deleted")
    data = api.request("DELETE", f"/namespaces/{segment(name)}")
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
    try:
        known: set[str] | None = {n["name"] for n in all_namespaces(Api.from_env())}
    except PermissionDenied:
        known = None  # a service token scoped to connections may use a namespace it cannot list
        click.echo(f"warning: this credential may not list namespaces; {name} is not checked", err=True)
    if known is not None and name not in known:
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
