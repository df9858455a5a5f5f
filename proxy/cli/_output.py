"""Tables for people, JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(c) if c is not None else "" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def status_text(connection: dict[str, Any]) -> str:
    status = connection.get("status") or {}
    state = status.get("state", "unknown")
    return f"{state}: {status['message']}" if status.get("message") else state


def show_connection(connection: dict[str, Any]) -> None:
    info = connection.get("serverInfo") or {}
    click.echo(f"id:       {connection['connectionId']}")
    click.echo(f"name:     {connection.get('name', '')}")
    click.echo(f"url:      {connection.get('mcpUrl', '')}")
    click.echo(f"status:   {status_text(connection)}")
    if info:
        click.echo(f"server:   {info.get('name', '')} {info.get('version', '')}".rstrip())
    if connection.get("metadata"):
        click.echo(f"metadata: {json.dumps(connection['metadata'])}")
    if connection.get("headerNames"):
        click.echo(f"headers:  {', '.join(connection['headerNames'])} (values are write-only)")


def show_result(result: dict[str, Any]) -> None:
    """Structured content as JSON, else the text parts; other content summarized."""
    if result.get("structuredContent") is not None:
        emit_json(result["structuredContent"])
        return
    for part in result.get("content") or []:
        kind = part.get("type")
        if kind == "text":
            click.echo(part.get("text", ""))
        elif kind in ("image", "audio"):
            click.echo(f"[{kind} {part.get('mimeType', '')}]")
        elif kind == "resource_link":
            click.echo(f"[resource {part.get('uri', '')}]")
        else:
            click.echo(f"[{kind}]")
