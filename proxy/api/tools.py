"""Direct tool calls over REST: `/{ns}/{id}/.tools[/<a>/<b>]` and `/{ns}/.tools`."""

from __future__ import annotations

from typing import Any

import mcp.types as types
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.responses import Response

from proxy.api._http import gateway, json_response, principal, read_json_object
from proxy.api.connections import connection_json
from proxy.auth.policy import ANY, CALL, LIST, TOOLS_LIST_REQUEST, require, tool_call_request
from proxy.errors import NotFound, ToolError
from proxy.gateway.names import find_tool, tools_under
from proxy.store import ConnectionRecord


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


async def _connection(request: Request, operation: str) -> ConnectionRecord:
    """The connection of the path, if the caller may list its tools (or call some of them)."""
    namespace = request.path_params["namespace"]
    record = await gateway(request).directory.connection(namespace, request.path_params["connection"])
    operations, rpc = (CALL, ANY) if operation == "execute" else (LIST, TOOLS_LIST_REQUEST)
    require(
        principal(request),
        operations,
        "connections",
        namespace,
        record.metadata or {},
        rpc,
        record.connection_id,
    )
    return record


async def _tools(request: Request, record: ConnectionRecord) -> list[types.Tool]:
    return await gateway(request).directory.upstream_for(record).list_tools()


def _tool_path(request: Request) -> str:
    # Starlette has already percent-decoded the path, so `%2F` arrives as `/`.
    path = request.path_params.get("tool_path", "").strip("/")
    if not path:
        raise NotFound("tool path is empty")
    return path


def _find(tools: list[types.Tool], path: str) -> types.Tool | None:
    """The rule the CLI relies on too: exact name, then `/` and `.` as one separator (`find_tool`)."""
    name = find_tool((t.name for t in tools), path)
    return next(t for t in tools if t.name == name) if name is not None else None


async def list_tools(request: Request) -> Response:
    record = await _connection(request, "read")
    return json_response({"tools": [_dump(t) for t in await _tools(request, record)]})


async def get_tool(request: Request) -> Response:
    record = await _connection(request, "read")
    path = _tool_path(request)
    tools = await _tools(request, record)
    tool = _find(tools, path)
    if tool is not None:
        return json_response(_dump(tool))
    group = set(tools_under((t.name for t in tools), path))
    if not group:
        raise NotFound(f"no tool {path!r} (and no tools under it) on connection {record.connection_id!r}")
    return json_response({"tools": [_dump(t) for t in tools if t.name in group]})


async def call_tool(request: Request) -> Response:
    record = await _connection(request, "execute")
    path = _tool_path(request)
    arguments = await read_json_object(request)
    session = gateway(request).directory.upstream_for(record)
    cached = session.cached_tools()
    tool = _find(cached, path) if cached is not None else None
    if tool is None:
        tool = _find(await session.list_tools(), path)
    if tool is None:
        raise NotFound(f"no tool {path!r} on connection {record.connection_id!r}")
    # The call as the MCP request it stands for: a token's rpcReqMatch applies here too.
    rpc = tool_call_request(tool.name, arguments)
    require(
        principal(request),
        CALL,
        "connections",
        record.namespace,
        record.metadata or {},
        rpc,
        record.connection_id,
    )
    try:
        result = await session.call_tool(tool.name, arguments)
    except MCPError as exc:
        raise ToolError(f"the upstream rejected the call: {exc.error.message}") from exc
    return json_response(result)


async def namespace_tools(request: Request) -> Response:
    namespace = request.path_params["namespace"]
    caller = principal(request)
    require(caller, LIST, "connections", namespace, ANY, TOOLS_LIST_REQUEST)
    await gateway(request).directory.namespace(namespace)
    envelopes: list[dict[str, Any]] = []
    for item in await gateway(request).catalog.gather(namespace, caller, TOOLS_LIST_REQUEST):
        envelope: dict[str, Any] = {
            "connectionId": item.record.connection_id,
            "name": item.record.name,
            "status": connection_json(gateway(request).directory.shown(item.record))["status"],
        }
        if item.error is not None:
            envelope["error"] = item.error.body()
        else:
            envelope["tools"] = [_dump(t) for t in item.tools or ()]
        envelopes.append(envelope)
    return json_response({"connections": envelopes})
