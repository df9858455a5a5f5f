"""`/{ns}` and `/{ns}/{id}` (also under `/connect`): connections."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy import stdio_records
from proxy.api._http import gateway, int_param, iso, json_response, principal, read_json_object
from proxy.auth.policy import Principal, allows, require
from proxy.directory import ConnectionInput, parse_connection_input
from proxy.errors import Forbidden, NotFound, ValidationFailed
from proxy.settings import Settings
from proxy.store import ConnectionRecord
from proxy.upstream.stdio import StdioDisabled


def connection_json(record: ConnectionRecord) -> dict[str, Any]:
    """The public shape of a connection: credentials are named, never shown. A stdio connection
    has no URL (`mcpUrl` null, as Smithery's uplink connections) and shows what it runs."""
    stdio = stdio_records.stored(record)
    return {
        "connectionId": record.connection_id,
        "name": record.name,
        "mcpUrl": None if stdio else record.mcp_url,
        "metadata": record.metadata,
        "transport": "stdio" if stdio else "http",
        **(_stdio_json(stdio) if stdio else {}),
        "createdAt": iso(record.created_at),
        "updatedAt": iso(record.updated_at),
        "status": record.status or {"state": "connected"},
        **({"serverInfo": record.server_info} if record.server_info else {}),
        "headerNames": list(record.header_names),
        **({"timeouts": record.timeouts} if record.timeouts else {}),
    }


def _stdio_json(stdio: dict[str, Any]) -> dict[str, Any]:
    """What a stdio connection runs; env values are write-only (names only, like headers)."""
    shown = {
        "command": stdio["command"],
        "args": list(stdio.get("args") or []),
        "envNames": stdio.get("envNames") or [],
    }
    if stdio.get("cwd"):
        shown["cwd"] = stdio["cwd"]
    return shown


def metadata_filters(request: Request) -> dict[str, str]:
    """`metadata.k=v` (the CLI) and `metadata[k]=v` (the SDK) query parameters."""
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if not key.startswith("metadata"):
            continue
        if key.startswith("metadata.") and len(key) > 9:
            out[key[9:]] = value
        elif key.startswith("metadata[") and key.endswith("]") and len(key) > 10:
            out[key[9:-1]] = value
        else:  # metadata, metadata., metadata[], metadata[k, metadataX: not a filter we can apply
            raise ValidationFailed(
                f"query parameter {key[:64]!r} is not a metadata filter; "
                "use metadata.<key>=<value> or metadata[<key>]=<value>"
            )
    return out


async def list_connections(request: Request) -> Response:
    namespace = request.path_params["namespace"]
    caller = principal(request)
    require(caller, "read", "connections", namespace)
    directory = gateway(request).directory
    # Hidden rows are filtered before paging: no count, cursor or page size gives them away.
    records, next_cursor = await directory.list_connections(
        namespace,
        limit=int_param(request, "limit", 100, 1, 100),
        cursor=request.query_params.get("cursor") or None,
        name=request.query_params.get("name"),
        mcp_url=request.query_params.get("mcpUrl"),
        metadata=metadata_filters(request),
        visible=None
        if caller.admin
        else lambda r: allows(caller, "read", "connections", namespace, r.metadata or {}),
    )
    return json_response(
        {"connections": [connection_json(directory.shown(r)) for r in records], "nextCursor": next_cursor}
    )


async def create_connection(request: Request) -> Response:
    namespace = request.path_params["namespace"]
    body = await read_json_object(request)
    data = parse_connection_input(body)
    _require_writable(principal(request), namespace, data.metadata or {})
    _require_stdio_allowed(principal(request), gateway(request).settings, data)
    directory = gateway(request).directory
    await directory.namespace(namespace)
    record = await directory.create_connection(namespace, body.get("connectionId"), data)
    return json_response(connection_json(directory.shown(record)), 201)


async def _visible(request: Request) -> ConnectionRecord:
    namespace = request.path_params["namespace"]
    record = await gateway(request).directory.connection(namespace, request.path_params["connection"])
    require(
        principal(request),
        "read",
        "connections",
        namespace,
        record.metadata or {},
        None,
        record.connection_id,
    )
    return record


async def get_connection(request: Request) -> Response:
    return json_response(connection_json(gateway(request).directory.shown(await _visible(request))))


async def put_connection(request: Request) -> Response:
    namespace = request.path_params["namespace"]
    connection_id = request.path_params["connection"]
    body = await read_json_object(request)
    if body.get("connectionId") not in (None, connection_id):
        raise ValidationFailed("connectionId in the body differs from the one in the path")
    data = parse_connection_input(body)
    directory = gateway(request).directory
    caller = principal(request)
    _require_stdio_allowed(caller, gateway(request).settings, data)
    try:
        current = await directory.connection(namespace, connection_id)
    except NotFound:
        _require_writable(caller, namespace, data.metadata or {})
        await directory.namespace(namespace)
    else:
        require(caller, "write", "connections", namespace, current.metadata or {}, None, connection_id)
        # What the connection's metadata will be: the new one, or the one it keeps.
        _require_writable(caller, namespace, _resulting_metadata(data, current))
    record, created = await directory.upsert_connection(namespace, connection_id, data)
    return json_response(connection_json(directory.shown(record)), 201 if created else 200)


async def delete_connection(request: Request) -> Response:
    namespace = request.path_params["namespace"]
    record = await gateway(request).directory.connection(namespace, request.path_params["connection"])
    require(
        principal(request),
        "write",
        "connections",
        record.namespace,
        record.metadata or {},
        None,
        record.connection_id,
    )
    await gateway(request).directory.delete_connection(record.namespace, record.connection_id)
    return json_response({"success": True})


def _resulting_metadata(data: ConnectionInput, current: ConnectionRecord) -> dict[str, Any]:
    return (data.metadata if data.metadata_set else current.metadata) or {}


def _require_writable(caller: Principal, namespace: str, metadata: dict[str, Any]) -> None:
    """A connection may only be given metadata the caller may write: a token scoped to a user
    creates that user's connections and cannot move one out of its reach."""
    if not allows(caller, "write", "connections", namespace, metadata):
        raise Forbidden(
            f"this credential may not write connections with this metadata in namespace {namespace!r}"
        )


def _require_stdio_allowed(caller: Principal, settings: Settings, data: ConnectionInput) -> None:
    """Only an admin API key may say what program a stdio connection runs (a service token may
    not, whatever its scopes), and only on a gateway that runs them."""
    if data.stdio is None:
        return
    if not settings.allow_stdio_upstreams:
        raise StdioDisabled(
            "this gateway does not run stdio upstreams; an administrator may set allow_stdio_upstreams "
            "(JUNCTION_ALLOW_STDIO_UPSTREAMS=1) to allow them"
        )
    if not caller.admin:
        raise Forbidden("only an admin API key may create or change a stdio connection (it runs a program)")
