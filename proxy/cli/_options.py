"""Options shared by several commands, and parsing of JSON given on the command line."""

from __future__ import annotations

import json
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
namespace_option = click.option(
    "--namespace", "-n", help="Namespace (default: $JUNCTION_NAMESPACE, else `junction namespace use`)."
)
EXAMPLE = """give an object like '{"key": "value"}'"""


def json_object(value: str | None, what: str) -> dict[str, Any] | None:
    """Parse a JSON object given on the command line; anything else is a usage error."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.UsageError(
            f"{what} is not valid JSON ({exc.msg} at character {exc.pos}); {EXAMPLE}"
        ) from exc
    if not isinstance(parsed, dict):
        raise click.UsageError(f"{what} must be a JSON object; {EXAMPLE}")
    return parsed
