"""`junction mcp add --stdio`: what a stdio connection runs, given and shown on the command line."""

from __future__ import annotations

import os
import shlex
from typing import Any

import click

from proxy.cli._output import clip, show_connection


def stdio_env(values: tuple[str, ...]) -> dict[str, str]:
    """`--env NAME=VALUE`, or `--env NAME` for this shell's value of NAME (kept off the command
    line, where other users of the host and the shell history would see it)."""
    env: dict[str, str] = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not name:
            raise click.UsageError(
                f"--env {item[:40]!r}: give NAME=VALUE, or NAME to pass this shell's value"
            )
        if not eq:
            if name not in os.environ:
                raise click.UsageError(
                    f"--env {name}: {name} is not set in this shell (or give {name}=VALUE)"
                )
            value = os.environ[name]
        env[name] = value
    return env


def show(data: dict[str, Any]) -> None:
    """`show_connection`, with what a stdio connection runs where its URL would be."""
    if data.get("transport") != "stdio":
        show_connection(data)
        return
    command = shlex.join([str(data.get("command", "")), *(str(a) for a in data.get("args") or [])])
    show_connection({**data, "mcpUrl": f"stdio: {command}"})
    if data.get("envNames"):
        click.echo(f"env:      {', '.join(data['envNames'])} (values are write-only)")


def where(connection: dict[str, Any]) -> str:
    """A connection's URL, or the command a stdio connection runs."""
    if connection.get("transport") == "stdio":
        args = [str(a) for a in connection.get("args") or []]
        return clip("stdio: " + shlex.join([str(connection.get("command", "")), *args]), 80)
    return str(connection.get("mcpUrl") or "")
