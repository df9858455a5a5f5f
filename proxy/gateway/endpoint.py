"""The namespace MCP endpoint `/mcp/{ns}`: one low-level MCP server over every connection.

The SDK's session manager serves both eras (legacy sessions with a back-channel, and the
stateless 2026-07-28 path). Handlers only translate between MCP and the catalog.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from proxy import __version__, wire
from proxy.auth.policy import Principal
from proxy.directory import Directory
from proxy.errors import JunctionError, NotFound, UpstreamError
from proxy.gateway.budget import META_NAMES, call_meta, limits_for
from proxy.gateway.catalog import Catalog
from proxy.gateway.names import choose_style
from proxy.settings import Settings
from proxy.upstream.fastlane import NotificationSink

log = logging.getLogger("junction.gateway")

NAMESPACE_KEY = "junction.namespace"
PRINCIPAL_KEY = "junction.principal"
RPC_KEY = "junction.rpc"  # the JSON-RPC request as sent, for a service token's rpcReqMatch


def _caller(ctx: ServerRequestContext[Any, Any]) -> tuple[str, Principal, Request]:
    request = ctx.request
    if not isinstance(request, Request) or NAMESPACE_KEY not in request.scope:
        raise MCPError(-32600, "this server is only reachable through /mcp/{namespace}")
    return request.scope[NAMESPACE_KEY], request.scope[PRINCIPAL_KEY], request


def _rpc(request: Request) -> dict[str, Any] | None:
    return request.scope.get(RPC_KEY)  # type: ignore[no-any-return]


def _client_name(ctx: ServerRequestContext[Any, Any]) -> str | None:
    params = ctx.session.client_params
    if params is not None and params.client_info is not None:
        return params.client_info.name
    info = (ctx.meta or {}).get("io.modelcontextprotocol/clientInfo")  # type: ignore[union-attr]
    if isinstance(info, dict):
        return str(info.get("name", "")) or None
    return None


async def call_for_mcp(
    catalog: Catalog,
    namespace: str,
    principal: Principal,
    name: str,
    arguments: dict[str, Any] | None,
    *,
    meta: dict[str, Any] | None = None,
    notify: NotificationSink | None = None,
    rpc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `tools/call` result for MCP clients: upstream failures become readable tool errors."""
    try:
        return await catalog.call(namespace, principal, name, arguments, meta=meta, notify=notify, rpc=rpc)
    except NotFound as exc:
        raise MCPError(-32602, exc.message) from exc
    except UpstreamError as exc:
        # The model sees why the tool failed; the session stays usable.
        return {"content": [{"type": "text", "text": exc.message}], "isError": True}
    except JunctionError as exc:
        raise MCPError(exc.jsonrpc_code, exc.message, exc.data) from exc


def build_namespace_server(directory: Directory, catalog: Catalog, settings: Settings) -> Server[Any]:
    """The MCP server behind every `/mcp/{ns}` (the namespace comes from the request)."""

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        namespace, principal, request = _caller(ctx)
        if params is not None and params.cursor is not None:
            # The namespace's list is always one page: no cursor we did not hand out is valid.
            raise MCPError(-32602, "invalid cursor")
        try:
            record = await directory.namespace(namespace)
        except NotFound as exc:
            raise MCPError(-32602, exc.message) from exc
        style = choose_style(
            request.query_params.get("tool_names"), record.tool_names, settings.tool_names, _client_name(ctx)
        )
        limits = limits_for(settings, record, _client_name(ctx))
        tools = await catalog.tools(namespace, principal, style, _rpc(request), limits=limits)
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        namespace, principal, request = _caller(ctx)
        answered = False
        raw_meta: Any = ctx.meta or {}
        token = raw_meta.get("progressToken", raw_meta.get("progress_token"))
        notify = None
        if token is not None:

            async def notify(note: wire.Notification) -> None:
                # Progress about this call goes back to its caller, on its own request stream
                # (the SDK may run a late progress callback after the answer: drop that one).
                if answered or note.method != "notifications/progress":
                    return
                if note.params.get("progressToken") != token:
                    return
                p = note.params
                await ctx.session.report_progress(p.get("progress", 0), p.get("total"), p.get("message"))

        meta = {"progressToken": token} if token is not None else None
        try:
            if params.name in META_NAMES:  # a tool budget's meta-tool (or a tool of that name)
                record = await directory.namespace(namespace)
                style = choose_style(
                    request.query_params.get("tool_names"),
                    record.tool_names,
                    settings.tool_names,
                    _client_name(ctx),
                )
                result = await call_meta(
                    catalog,
                    namespace,
                    principal,
                    params.name,
                    params.arguments,
                    style=style,
                    limits=limits_for(settings, record, _client_name(ctx)),
                    inner=call_for_mcp,
                    meta=meta,
                    notify=notify,
                    rpc=_rpc(request),
                )
            else:
                result = await call_for_mcp(
                    catalog,
                    namespace,
                    principal,
                    params.name,
                    params.arguments,
                    meta=meta,
                    notify=notify,
                    rpc=_rpc(request),
                )
        finally:
            answered = True
        return types.CallToolResult.model_validate(wire.legacy_result(result))

    return Server(
        "mcp-junction",
        version=__version__,
        instructions="Tools of every connection in this namespace, prefixed with the connection id.",
        get_tool_input_schema=lambda _name: None,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def build_session_manager(server: Server[Any], settings: Settings) -> StreamableHTTPSessionManager:
    return StreamableHTTPSessionManager(
        app=server,
        max_request_body_size=settings.max_body_bytes,
        session_idle_timeout=settings.session_idle_timeout,
        max_sessions=settings.max_legacy_sessions,
    )
