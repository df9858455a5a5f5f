"""Options shared by several commands, and parsing of JSON given on the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
namespace_option = click.option(
    "--namespace", "-n", help="Namespace (default: $JUNCTION_NAMESPACE, else `junction namespace use`)."
)
EXAMPLE = """give an object like '{"key": "value"}'"""
FROM_FILE_HELP = "@FILE reads it from a file and - from stdin, keeping secrets off the command line"
_STDIN_READ = "junction.stdin_read"  # key in click's context meta: stdin can be read only once


def json_object(value: str | None, what: str) -> dict[str, Any] | None:
    """Parse a JSON object given on the command line, in a file (`@path`) or on stdin (`-`).

    A JSON object never starts with `@` and is never `-`, so both forms are unambiguous.
    Anything that is not a JSON object is a usage error.
    """
    if value is None:
        return None
    parsed, source = json_value(value, what, EXAMPLE)
    if not isinstance(parsed, dict):
        raise click.UsageError(f"{what}{source} must be a JSON object; {EXAMPLE}")
    return parsed


def json_value(value: str, what: str, example: str) -> tuple[Any, str]:
    """Any JSON value given as `json_object` takes it, and where it came from (for messages)."""
    source = ""
    if value == "-" or value.startswith("@"):
        source = " (from stdin)" if value in ("-", "@-") else f" (from {value[1:]})"
        value = _read_source(value, what)
    try:
        return json.loads(value), source
    except json.JSONDecodeError as exc:
        raise click.UsageError(
            f"{what}{source} is not valid JSON ({exc.msg} at character {exc.pos}); {example}"
        ) from exc


def _read_source(value: str, what: str) -> str:
    if value in ("-", "@-"):
        meta = click.get_current_context().meta
        if meta.get(_STDIN_READ):
            raise click.UsageError(f"{what} and {meta[_STDIN_READ]} cannot both be read from stdin")
        meta[_STDIN_READ] = what
        return sys.stdin.read()
    path = Path(value[1:]).expanduser()
    if not value[1:]:
        raise click.UsageError(f"{what} @FILE needs a file name after the @")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise click.UsageError(f"cannot read {what} from {path}: {reason}") from exc
