"""`junction bridge`: a namespace as a stdio MCP server, for Claude Desktop and other desktop agents."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from proxy.cli._client import Api, segment
from proxy.cli._config import CONFIG_FILE, config_dir, credential, current_namespace, gateway_url, load_config
from proxy.cli._errors import ApiError, CliError, PermissionDenied

AGENTS = ("claude",)
DEFAULT_RETRY_FOR = 20.0  # as proxy.bridge.DEFAULT_RETRY_FOR; that module is imported only to run


@click.command("bridge")
@click.argument("namespace_name", metavar="[NAMESPACE]", required=False)
@click.option(
    "--print-config",
    "agent",
    type=click.Choice(AGENTS),
    help="Print the JSON to paste into the agent's configuration (Claude Desktop's "
    "claude_desktop_config.json) instead of running the bridge.",
)
@click.option(
    "--retry-for",
    type=click.FloatRange(0, 3600),
    default=DEFAULT_RETRY_FOR,
    show_default=True,
    envvar="JUNCTION_BRIDGE_RETRY_FOR",
    help="Seconds to keep reconnecting to an unreachable gateway before a request fails "
    "(also $JUNCTION_BRIDGE_RETRY_FOR).",
)
def bridge(namespace_name: str | None, agent: str | None, retry_for: float) -> None:
    """Serve NAMESPACE (default: the current one) over stdin/stdout for desktop agents.

    Everything the namespace's MCP endpoint offers passes through, authorised with the stored
    credential (`junction auth login`); the bridge reconnects by itself when the gateway restarts.
    Logs go to stderr.
    """
    namespace_name = _namespace(namespace_name)
    if agent is not None:
        _print_config(namespace_name)
        return
    _run(namespace_name, retry_for)


def _namespace(given: str | None) -> str:
    try:
        return current_namespace(given)
    except CliError as exc:
        raise CliError(
            "no namespace: give one (`junction bridge <namespace>`) or run `junction namespace use <name>`"
        ) from exc


def _run(namespace_name: str, retry_for: float) -> None:
    import logging

    import anyio

    from proxy.bridge import run_stdio  # the SDK loads only for the command that needs it

    url = f"{gateway_url()}/mcp/{segment(namespace_name)}"
    key, origin = credential()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="junction bridge: %(message)s")
    for noisy in ("httpx2", "httpcore2", "httpx", "httpcore", "mcp"):  # request lines, expected failures
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    logging.getLogger("junction.bridge").info("serving %s on stdio with %s", url, origin)
    try:
        anyio.run(lambda: run_stdio(url, key, retry_for=retry_for))
    except KeyboardInterrupt:
        pass


def _print_config(namespace_name: str) -> None:
    """The `mcpServers` entry for NAMESPACE; the credential stays in the CLI's config, never here."""
    url = gateway_url()
    key, origin = credential()
    _check_namespace(Api(url, key, origin), namespace_name)
    command, args = _junction_command()
    env = {"JUNCTION_URL": url}
    if os.environ.get("JUNCTION_CONFIG_DIR") or os.environ.get("XDG_CONFIG_HOME"):
        env["JUNCTION_CONFIG_DIR"] = str(config_dir())  # an agent starts with none of the shell's env
    entry: dict[str, Any] = {"command": command, "args": [*args, "bridge", namespace_name], "env": env}
    click.echo(json.dumps({"mcpServers": {namespace_name: entry}}, indent=2))
    stored = config_dir() / CONFIG_FILE
    if load_config().get("apiKey"):
        hint = f"the bridge signs in with the credential stored in {stored} (not in this snippet)"
        if os.environ.get("JUNCTION_API_KEY"):
            hint += "; $JUNCTION_API_KEY, which you use now, will not be set for the agent"
    else:
        hint = (
            f"warning: {origin} is not stored, and the agent will not have it: run "
            "`junction auth login` first, or add JUNCTION_API_KEY to env yourself"
        )
    click.echo(
        f"{hint}. Paste the JSON into claude_desktop_config.json (Claude Desktop: Settings > "
        "Developer > Edit Config) and restart Claude Desktop.",
        err=True,
    )


def _check_namespace(api: Api, namespace_name: str) -> None:
    """A typo fails now rather than in the agent; a gateway that is down or a credential that may
    not read namespaces only leaves it unchecked (the bridge itself waits for the gateway)."""
    try:
        api.get(f"/namespaces/{segment(namespace_name)}")
    except PermissionDenied:
        click.echo(
            f"warning: this credential may not read namespaces; {namespace_name} is not checked", err=True
        )
    except ApiError as exc:
        if exc.status == 404:
            raise CliError(
                f"namespace {namespace_name!r} does not exist; create it with "
                f"`junction namespace create {namespace_name}`"
            ) from exc
        raise
    except CliError as exc:  # unreachable
        click.echo(f"warning: {exc.format_message()}; {namespace_name} is not checked", err=True)


def _junction_command() -> tuple[str, list[str]]:
    """An absolute command that runs this CLI, as the agent will start it (it has no $PATH of ours)."""
    argv0 = Path(sys.argv[0])
    if argv0.name in ("junction", "junction.exe") and argv0.exists():
        return str(argv0.absolute()), []
    beside = Path(sys.executable).parent / ("junction.exe" if os.name == "nt" else "junction")
    if beside.is_file():  # `python -m proxy` from a virtual environment that installed the script
        return str(beside.absolute()), []
    found = shutil.which("junction")
    if found:
        return str(Path(found).absolute()), []
    return str(Path(sys.executable).absolute()), ["-m", "proxy"]
