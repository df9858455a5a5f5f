"""The `junction` command: run the gateway, and use it through its REST API."""

from __future__ import annotations

import click

from proxy import __version__
from proxy.cli._client import CliError
from proxy.cli._commands import auth, keys, mcp, namespace, tool


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="junction")
def cli() -> None:
    """mcp-junction: many MCP servers behind one gateway."""


@cli.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1 or $JUNCTION_HOST).")
@click.option("--port", type=int, help="Port (default 8080 or $JUNCTION_PORT).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A config.toml file.")
def serve(host: str | None, port: int | None, config_file: str | None) -> None:
    """Run the gateway (blocking)."""
    from proxy.app import run
    from proxy.errors import ConfigError
    from proxy.settings import Settings

    try:
        settings = Settings.load(config_file=config_file, host=host, port=port)
    except ConfigError as exc:
        raise CliError(exc.message) from exc
    run(settings)


for group in (auth, keys, namespace, mcp, tool):
    cli.add_command(group)


def main() -> None:
    """Console entry point."""
    cli(prog_name="junction")
