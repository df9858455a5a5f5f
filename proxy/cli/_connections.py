"""`junction mcp`: connections to upstream MCP servers (`/{namespace}/{id}`)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import click

from proxy.cli._client import Api, segment
from proxy.cli._config import current_namespace
from proxy.cli._errors import CliError
from proxy.cli._options import FROM_FILE_HELP, json_object, json_option, namespace_option
from proxy.cli._output import (
    clip,
    delete_each,
    emit_json,
    missing_fields,
    setup_url,
    status_text,
    table,
)
from proxy.cli._stdio import show, stdio_env, where

PAGE_LIMIT = 100  # the most the gateway returns per page
DEFAULT_WAIT = 300.0  # seconds `mcp add` waits for authorization in the browser
POLL_INTERVAL = 1.0
INPUT_ROUNDS = 3  # times `mcp add` asks for missing settings


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


class Interrupted(CliError):
    """Ctrl-C while asking or waiting: a one-line error, exit code 130 as for SIGINT."""

    exit_code = 130


def is_url(value: str) -> bool:
    """A URL (the gateway checks its scheme), as opposed to the name of a server in the gateway's
    catalog, which never contains `://`."""
    return "://" in value


def with_query(url: str, values: dict[str, str]) -> str:
    """`url` with these query parameters set (replacing any of the same name)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in values]
    return urlunsplit(parts._replace(query=urlencode(query + list(values.items()))))


@dataclass(frozen=True)
class Setup:
    """Completing a connection's setup with the person at the terminal: settings it asks for
    (`input_required`) and authorization in the browser (`auth_required`)."""

    api: Api
    path: str  # /{ns}/{id}
    cid: str
    ns_option: str  # ` -n NS` when the namespace was given, for commands shown to the user

    def settle(self, data: dict[str, Any], *, wait: float | None, browser: bool) -> dict[str, Any]:
        """Ask for settings (at most INPUT_ROUNDS times) and wait for authorization (once, unless
        `wait` is None); the connection as it is then."""
        asked = 0
        waited = wait is None
        while True:
            status = data.get("status") or {}
            state = status.get("state")
            if state == "input_required" and asked < INPUT_ROUNDS and missing_fields(status):
                data = self.ask_for_input(data)
                asked += 1
            elif state == "auth_required" and not waited:
                data = self.await_authorization(data, wait or 0.0, browser)
                waited = True
            else:
                return data

    def ask_for_input(self, data: dict[str, Any]) -> dict[str, Any]:
        """Prompt for what the status says is missing (header values hidden) and PUT it."""
        status = data.get("status") or {}
        spec = status.get("http") or {}
        missing = status.get("missing") or {}
        click.echo(f"Connection {self.cid} needs settings:")
        headers: dict[str, str] = {}
        query: dict[str, str] = {}
        try:
            for key, place, values in (("headers", "header", headers), ("query", "query", query)):
                for field in missing.get(key) or []:
                    about = (spec.get(key) or {}).get(field) or {}
                    if about.get("description"):
                        click.echo(f"  {about['description']}")
                    hidden = place == "header"  # header values are credentials
                    label = f"{about.get('label') or field} ({place} {field}{', hidden' if hidden else ''})"
                    values[field] = str(click.prompt(label, hide_input=hidden)).strip()
        except click.Abort as exc:  # Ctrl-C, or the end of stdin
            error = Interrupted if isinstance(exc.__context__, KeyboardInterrupt) else CliError
            raise error(
                f"stopped; connection {self.cid} is saved but still needs "
                f"{', '.join(missing_fields(status))}; {self.how_to_give(data, one_line=True)}"
            ) from None
        if not headers and not query:
            return data
        body: dict[str, Any] = {}
        if query:
            body["mcpUrl"] = with_query(str(data.get("mcpUrl") or ""), query)
        if headers:
            body["headers"] = headers
        data = self.api.request("PUT", self.path, json_body=body)
        click.echo(f"status:   {status_text(data)}")
        return data

    def await_authorization(self, data: dict[str, Any], wait: float, browser: bool) -> dict[str, Any]:
        """Open the setup URL in a browser and poll the connection until it leaves
        `auth_required`; a one-line error after `wait` seconds or on Ctrl-C."""
        url = setup_url(data)
        if url is None:
            return data  # nothing to open: the status is shown as it is
        click.echo(f"Authorize connection {self.cid} in your browser at:")
        click.echo(url)
        if browser and open_browser(url):
            click.echo("(opening your browser)")
        deadline = time.monotonic() + wait
        try:
            click.echo(f"Waiting up to {wait:g} s for authorization (Ctrl-C to stop)...")
            while (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(POLL_INTERVAL, remaining))
                data = self.api.get(self.path)
                if (data.get("status") or {}).get("state") != "auth_required":
                    click.echo(f"status:   {status_text(data)}")
                    return data
                url = setup_url(data) or url
        except KeyboardInterrupt:
            raise Interrupted(
                f"stopped waiting; connection {self.cid} is saved but not authorized: open {url} to authorize "
                f"it, then check with `junction mcp get {self.cid}{self.ns_option}`"
            ) from None
        raise CliError(
            f"connection {self.cid} was not authorized within {wait:g} s: open {url} to authorize it, "
            f"then check with `junction mcp get {self.cid}{self.ns_option}`"
        )

    def how_to_give(self, data: dict[str, Any], *, one_line: bool = False) -> str:
        """How to supply an `input_required` connection's missing settings: its setup page, or
        `junction mcp add` with the query values in the URL and the headers from a file."""
        status = data.get("status") or {}
        spec = status.get("http") or {}
        missing = status.get("missing") or {}
        url = str(data.get("mcpUrl") or "")
        placeholders = "&".join(f"{quote(name, safe='')}=<value>" for name in missing.get("query") or [])
        if placeholders:  # not percent-encoded: the user replaces them
            url += ("&" if urlsplit(url).query else "?") + placeholders
        command = f"junction mcp add {shlex.quote(url)} --id {self.cid}{self.ns_option}"
        header_names = list(missing.get("headers") or [])
        if header_names:
            command += " --headers @headers.json"
            example = json.dumps(dict.fromkeys(header_names, "<value>"))
        where = (
            f"open {setup_url(data)} in a browser, or run `{command}`"
            if setup_url(data)
            else f"run `{command}`"
        )
        if header_names:
            where += f" with headers.json holding {example} (`--headers -` reads it from stdin)"
        if one_line:
            return f"to give them, {where}"
        labelled = [
            f"{place} {field}"
            + (
                f" ({about['label']})"
                if (about := (spec.get(key) or {}).get(field) or {}).get("label")
                else ""
            )
            for key, place in (("headers", "header"), ("query", "query"))
            for field in missing.get(key) or []
        ]
        return f"Connection {self.cid} needs settings: {', '.join(labelled)}.\nTo give them, {where}."


def open_browser(url: str) -> bool:
    """Open `url` with `webbrowser` (which honours $BROWSER) in the background, failures ignored.
    False when there is clearly no browser to open: no $BROWSER and no display on Linux, where
    `webbrowser` would otherwise start a text browser on this very terminal."""
    graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if not os.environ.get("BROWSER") and sys.platform.startswith("linux") and not graphical:
        return False

    def run() -> None:
        import webbrowser  # only when a browser is opened: it imports subprocess

        with contextlib.suppress(Exception):
            webbrowser.open(url)

    threading.Thread(target=run, name="junction-browser", daemon=True).start()
    return True


@mcp.command("add")
@click.argument("url")
@click.argument("command_args", nargs=-1, metavar="[-- ARGS...]")
@click.option("--id", "connection_id", help="Connection id; creates or updates it.")
@click.option("--new", "always_new", is_flag=True, help="Add a connection even if one has this URL already.")
@click.option("--name", help="Display name.")
@click.option("--metadata", help=f'JSON object, e.g. \'{{"userId": "u1"}}\'; {FROM_FILE_HELP}.')
@click.option(
    "--headers",
    help=f"JSON object of headers sent upstream (stored encrypted, never shown); {FROM_FILE_HELP}.",
)
@click.option(
    "--stdio",
    is_flag=True,
    help="URL is a command the gateway runs (a stdio MCP server), ARGS its arguments after `--`. "
    "Needs an admin API key and a gateway with allow_stdio_upstreams.",
)
@click.option(
    "--env",
    "env_items",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="With --stdio: an environment variable of the command (stored encrypted, never shown); "
    "NAME alone passes this shell's value. Repeatable.",
)
@click.option(
    "--cwd", help="With --stdio: the command's working directory (an absolute path on the gateway host)."
)
@click.option(
    "--interactive/--no-interactive",
    default=None,
    help="Ask for missing settings and wait for authorization (default: when stdin and stdout "
    "are terminals; never with --json).",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=0),
    default=DEFAULT_WAIT,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for authorization in the browser.",
)
@click.option("--no-wait", is_flag=True, help="Do not wait for authorization; print where to authorize.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser ($BROWSER chooses which one opens).")
@namespace_option
@json_option
def add(
    url: str,
    command_args: tuple[str, ...],
    connection_id: str | None,
    always_new: bool,
    name: str | None,
    metadata: str | None,
    headers: str | None,
    stdio: bool,
    env_items: tuple[str, ...],
    cwd: str | None,
    interactive: bool | None,
    wait_seconds: float,
    no_wait: bool,
    no_browser: bool,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Connect the upstream MCP server at URL, or the server NAME of the gateway's catalog.

    URL is an http(s) URL; anything without `://` is the name of a server listed in the
    gateway's config.toml (`[[servers]]`). Without --id, a connection of the namespace that already has this
    URL (and the same --metadata, when given) is updated rather than duplicated; --new always adds
    one, with a generated id (a catalog NAME always adds one unless --id is given).

    The connection's status is shown. A server that needs settings (input_required) is asked for
    them on a terminal, header values without echo; one that needs authorization (auth_required)
    gets its setup URL opened in the browser, and the command waits until it is connected (up to
    --wait seconds). Without a terminal (or with --no-interactive or --json) it only says what is
    missing and exits 0: the connection is saved. Exits 1, after showing the connection, when it
    is saved but cannot connect.

    With --stdio, the gateway runs a local MCP server instead: `junction mcp add --stdio --env
    API_KEY -- npx -y some-mcp-server --flag` (URL is then the command; everything after `--` goes
    to it). Without --id it always adds a connection.
    """
    if connection_id and always_new:
        raise click.UsageError("--id and --new exclude each other")
    if as_json and interactive:
        raise click.UsageError("--json and --interactive exclude each other")
    if not stdio and (command_args or env_items or cwd):
        raise click.UsageError("arguments after the URL, --env and --cwd are for --stdio")
    if stdio and headers:
        raise click.UsageError("--headers is for URLs; a --stdio command gets --env")
    catalog = not is_url(url) and not stdio
    body: dict[str, Any] = {"server": url} if catalog else {"mcpUrl": url}
    if stdio:
        body = {"transport": "stdio", "command": url, "args": list(command_args)}
        if env_items:
            body["env"] = stdio_env(env_items)
        if cwd:
            body["cwd"] = cwd
    if name:
        body["name"] = name
    if (meta := json_object(metadata, "--metadata")) is not None:
        body["metadata"] = meta
    if (hdrs := json_object(headers, "--headers")) is not None:
        body["headers"] = hdrs
    path = f"/{segment(current_namespace(namespace))}"
    api = Api.from_env()
    reused = (
        None if connection_id or always_new or catalog or stdio else _same_connection(api, path, url, meta)
    )
    if connection_id or reused:
        data = api.request("PUT", f"{path}/{segment(connection_id or str(reused))}", json_body=body)
    else:
        data = api.request("POST", path, json_body=body)
    if not as_json:
        if reused:
            click.echo(f"Updated connection {reused}, which has this URL (--new adds another)", err=True)
        show(data)
    cid = str(data.get("connectionId") or connection_id or reused)
    setup = Setup(api, f"{path}/{segment(cid)}", cid, f" -n {shlex.quote(namespace)}" if namespace else "")
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive and not as_json:
        data = setup.settle(data, wait=None if no_wait else wait_seconds, browser=not no_browser)
    if as_json:
        emit_json(data)
    status = data.get("status") or {}
    state = status.get("state")
    if state == "error":
        raise CliError(
            f"connection {cid} is saved but cannot connect: {status.get('message') or 'no reason given'}"
            f"; fix it with `junction mcp add {url} --id {cid} ...` or remove it with `junction mcp remove {cid}`"
        )
    if state == "input_required":
        if interactive and not as_json:  # asked INPUT_ROUNDS times, and still missing
            raise CliError(
                f"connection {cid} still needs {', '.join(missing_fields(status))}; "
                f"{setup.how_to_give(data, one_line=True)}"
            )
        if not as_json:
            click.echo(setup.how_to_give(data))
    elif state == "auth_required" and not as_json:
        click.echo(
            f"To authorize connection {cid}, open this URL in a browser, "
            f"then check with `junction mcp get {cid}{setup.ns_option}`:"
        )
        click.echo(setup_url(data) or "(the gateway gave no setup URL)")


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
        [[c["connectionId"], c.get("name"), clip(status_text(c), 60), where(c)] for c in items],
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
        show(data)


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
