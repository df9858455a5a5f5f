"""Tables and short views for people, JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from proxy.cli._errors import ApiError, CliError

if TYPE_CHECKING:
    from proxy.cli._client import Api


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Left-aligned columns under upper-case headers; `(none)` when there are no rows."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(c) if c is not None else "" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def first_line(text: str | None, width: int = 100) -> str:
    lines = (text or "").strip().splitlines()
    return clip(lines[0], width) if lines else ""


def status_text(connection: dict[str, Any]) -> str:
    """`connected`, `error: <message>`, or `input_required: missing header x, query y`."""
    status = connection.get("status") or {}
    state = status.get("state", "unknown")
    if status.get("message"):
        return f"{state}: {status['message']}"
    fields = missing_fields(status)
    return f"{state}: missing {', '.join(fields)}" if fields else str(state)


def missing_fields(status: dict[str, Any]) -> list[str]:
    """What an `input_required` status lacks, as `header <name>` and `query <name>`."""
    missing = status.get("missing") if status.get("state") == "input_required" else None
    if not isinstance(missing, dict):
        return []
    return [
        f"{kind} {name}"
        for kind, key in (("header", "headers"), ("query", "query"))
        for name in missing.get(key) or []
    ]


def setup_url(connection: dict[str, Any]) -> str | None:
    """Where a person completes a connection's setup (`setupUrl`, or its old alias)."""
    status = connection.get("status") or {}
    url = status.get("setupUrl") or status.get("authorizationUrl")
    return str(url) if url else None


def show_connection(connection: dict[str, Any]) -> None:
    info = connection.get("serverInfo") or {}
    click.echo(f"id:       {connection.get('connectionId', '')}")
    click.echo(f"name:     {connection.get('name', '')}")
    click.echo(f"url:      {connection.get('mcpUrl', '')}")
    click.echo(f"status:   {status_text(connection)}")
    if setup_url(connection):
        click.echo(f"setup:    {setup_url(connection)}")
    if info:
        click.echo(f"server:   {info.get('name', '')} {info.get('version', '')}".rstrip())
    if connection.get("metadata"):
        click.echo(f"metadata: {json.dumps(connection['metadata'], ensure_ascii=False)}")
    if connection.get("headerNames"):
        click.echo(f"headers:  {', '.join(connection['headerNames'])} (values are write-only)")


def show_tool(tool: dict[str, Any]) -> None:
    click.echo(tool.get("name", ""))
    if tool.get("description"):
        click.echo(f"\n{tool['description'].strip()}")
    click.echo("\ninput schema:")
    emit_json(tool.get("inputSchema") or {})


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
            click.echo(f"[{kind} {part.get('mimeType', '')}]".replace(" ]", "]"))
        elif kind == "resource_link":
            click.echo(f"[resource link {part.get('uri', '')}]")
        elif kind == "resource":
            resource = part.get("resource") or {}
            click.echo(resource["text"] if "text" in resource else f"[resource {resource.get('uri', '')}]")
        else:
            click.echo(f"[{kind}]")


def delete_each(api: Api, paths: Mapping[str, str], *, done: str, id_field: str, as_json: bool) -> None:
    """DELETE every path (id -> path, in order), report each, and fail (exit 1) naming the ones
    that could not be deleted. A refused credential stops at once: every other id would fail too."""
    succeeded: list[str] = []
    failed: list[tuple[str, ApiError]] = []
    for item_id, path in paths.items():
        try:
            api.request("DELETE", path)
        except ApiError as exc:
            if exc.status == 401:
                raise
            failed.append((item_id, exc))
            continue
        succeeded.append(item_id)
        if not as_json:
            click.echo(f"{done.capitalize()} {item_id}")
    if as_json:
        emit_json(
            {
                "success": not failed,
                done: succeeded,
                "failed": [
                    {id_field: item_id, "error": exc.code, "status": exc.status, "message": exc.reason}
                    for item_id, exc in failed
                ],
            }
        )
    if failed:
        reasons = "; ".join(f"{item_id}: {exc.message}" for item_id, exc in failed)
        verb = done.removesuffix("d")
        raise CliError(f"could not {verb} {len(failed)} of {len(paths)} ({reasons})")
