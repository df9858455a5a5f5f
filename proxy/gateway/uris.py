"""Resource URIs of a namespace: each upstream URI carries its connection id, reversibly.

Two upstreams may both serve `file:///README`, so the namespace endpoint shows every resource
URI (and resource template) with the connection id as the first label of its authority, keeping
the scheme, so `ui://` resources of MCP Apps stay `ui://` and every URI stays a valid URI:

    test://static-text           ->  test://everything.static-text
    ui://weather/widget.html     ->  ui://weather.weather/widget.html
    file:///README               ->  file://docs./README
    urn:isbn:0451450523          ->  urn:books.isbn:0451450523   (no authority: after the scheme)

Connection ids never contain a dot (`^[A-Za-z0-9_-]{1,64}$`), so the first dot after the marked
position ends the id and the original URI comes back exactly, for URIs a client builds from a
template too. A URI without a scheme cannot be namespaced and is refused.
"""

from __future__ import annotations

import re
from typing import Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CONNECTION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _split(uri: str) -> tuple[str, str] | None:
    """(`scheme:` plus `//` when there is an authority, the rest)."""
    match = _SCHEME.match(uri)
    if match is None:
        return None
    head = match.group(0)
    rest = uri[len(head) :]
    if rest.startswith("//"):
        return head + "//", rest[2:]
    return head, rest


def expose(connection_id: str, uri: str) -> str:
    """The URI a namespace shows for `uri` of `connection_id` (unchanged if it has no scheme)."""
    parts = _split(uri)
    if parts is None:
        return uri
    return f"{parts[0]}{connection_id}.{parts[1]}"


def expose_tool_ui(connection_id: str, tool: dict[str, Any]) -> None:
    """Point an MCP App tool (`_meta.ui.resourceUri`, or the older `_meta["ui/resourceUri"]`) at
    its `ui://` resource as the namespace shows it, so the host reads the app through us."""
    meta = tool.get("_meta")
    if not isinstance(meta, dict):
        return
    meta = dict(meta)
    ui = meta.get("ui")
    if isinstance(ui, dict) and isinstance(ui.get("resourceUri"), str):
        meta["ui"] = {**ui, "resourceUri": expose(connection_id, ui["resourceUri"])}
    if isinstance(meta.get("ui/resourceUri"), str):
        meta["ui/resourceUri"] = expose(connection_id, meta["ui/resourceUri"])
    tool["_meta"] = meta


def resolve(uri: str) -> tuple[str, str] | None:
    """(connection id, upstream URI) for an exposed URI, or None when it names no connection."""
    parts = _split(uri)
    if parts is None:
        return None
    connection_id, dot, rest = parts[1].partition(".")
    if not dot or not _CONNECTION.match(connection_id):
        return None
    return connection_id, parts[0] + rest
