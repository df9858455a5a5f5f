"""The `junction` command: run the gateway, and use it through its REST API."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from proxy import __version__
from proxy.cli._auth import auth
from proxy.cli._bridge import bridge
from proxy.cli._connections import mcp
from proxy.cli._errors import CliError
from proxy.cli._grants import grants
from proxy.cli._keys import keys
from proxy.cli._namespaces import namespace
from proxy.cli._tokens import mint_token, tokens
from proxy.cli._tools import tool

__all__ = ["cli", "main"]

# click >= 8.2 raises this for a group called without a subcommand; older versions just print the help
NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError", click.UsageError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="junction")
def cli() -> None:
    """mcp-junction: many MCP servers behind one gateway.

    Commands other than `serve` talk to the gateway's REST API with the API key or service token
    stored by `junction auth login`; $JUNCTION_URL and $JUNCTION_API_KEY override it.
    """


@cli.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1 or $JUNCTION_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port, 1-65535 (default 8080 or $JUNCTION_PORT).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A config.toml file.")
def serve(host: str | None, port: int | None, config_file: str | None) -> None:
    """Run the gateway (blocking); it says "listening" once it accepts connections."""
    from proxy.app import run  # the server stack is only imported by the command that needs it
    from proxy.errors import ConfigError
    from proxy.settings import Settings

    try:
        settings = Settings.load(config_file=config_file, host=host, port=port)
    except ConfigError as exc:
        raise CliError(exc.message) from exc
    if not 1 <= settings.port <= 65535:  # from $JUNCTION_PORT or the config file
        raise CliError(f"the port must be between 1 and 65535, got {settings.port}")
    run(settings)


auth.add_command(mint_token)
for group in (auth, keys, tokens, grants, namespace, mcp, tool, bridge):
    cli.add_command(group)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point: every error is one line on stderr; exit 2 for usage errors, else 1."""
    try:
        code = cli.main(args=argv, prog_name="junction", standalone_mode=False)
    except NO_ARGS_IS_HELP as exc:
        exc.show()  # a bare group prints its help, as click does
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        _fail(f"{exc.format_message()}{hint}", exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    except Exception as exc:  # a bug or an unexpected answer: still no traceback for the user
        _fail(f"unexpected {type(exc).__name__}: {exc}", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
