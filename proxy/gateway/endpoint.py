"""The namespace MCP endpoint `/mcp/{ns}`: one low-level MCP server over every connection.

The SDK's session manager serves both eras (legacy sessions with a back-channel, and the
stateless 2026-07-28 path). Handlers only translate between MCP and the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
    event_matches,
    event_to_notification,
)
from starlette.requests import Request

from proxy import __version__, wire
from proxy.auth.policy import LIST, Principal, allows
from proxy.directory import Directory
from proxy.errors import JunctionError, NotFound, UpstreamError
from proxy.gateway.budget import META_NAMES, call_meta, limits_for
from proxy.gateway.callers import LogLevels, SessionCaller
from proxy.gateway.catalog import Catalog
from proxy.gateway.events import NamespaceEvents, Sink
from proxy.gateway.mrtr import HeldCalls, modern_capabilities
from proxy.gateway.names import NameStyle, choose_style
from proxy.gateway.offerings import Offerings
from proxy.settings import Settings
from proxy.upstream import relay
from proxy.upstream.fastlane import NotificationSink

log = logging.getLogger("junction.gateway")

NAMESPACE_KEY = "junction.namespace"
MAX_LEGACY_FEEDS = 10_000  # legacy sessions with a change feed, over all namespaces
MAX_LISTENED_RESOURCES = 100  # resource URIs one subscriptions/listen stream may name
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
        result = await catalog.call(namespace, principal, name, arguments, meta=meta, notify=notify, rpc=rpc)
        if result.get("resultType") == "input_required" and relay.forwarded.get() is None:
            # A 2025 caller never sees a bare input_required (one that can be asked is served by
            # the SDK client, which turns the questions into requests to it).
            text = "the tool needs input from the client (sampling or elicitation), which this client cannot give"
            return {"content": [{"type": "text", "text": text}], "isError": True}
        return result
    except NotFound as exc:
        raise MCPError(-32602, exc.message) from exc
    except UpstreamError as exc:
        # The model sees why the tool failed; the session stays usable.
        return {"content": [{"type": "text", "text": exc.message}], "isError": True}
    except JunctionError as exc:
        raise MCPError(exc.jsonrpc_code, exc.message, exc.data) from exc


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


def _notification(event: ServerEvent, meta: dict[str, Any] | None = None) -> types.ServerNotification:
    if meta is not None:
        return event_to_notification(event, meta)
    if isinstance(event, ResourceUpdated):
        return types.ResourceUpdatedNotification(
            params=types.ResourceUpdatedNotificationParams(uri=event.uri)
        )
    return {
        ToolsListChanged: types.ToolListChangedNotification,
        PromptsListChanged: types.PromptListChangedNotification,
        ResourcesListChanged: types.ResourceListChangedNotification,
    }[type(event)]()


def build_namespace_server(
    directory: Directory,
    catalog: Catalog,
    settings: Settings,
    offerings: Offerings | None = None,
    events: NamespaceEvents | None = None,
    held: HeldCalls | None = None,
    levels: LogLevels | None = None,
    session_alive: Callable[[str], bool] | None = None,
) -> Server[Any]:
    """The MCP server behind every `/mcp/{ns}` (the namespace comes from the request)."""
    offer = offerings or Offerings(directory, catalog, settings.fanout_timeout)
    levels = levels or LogLevels()
    legacy_sinks: dict[str, Sink] = {}  # downstream session id -> its sink

    async def style_of(ctx: ServerRequestContext[Any, Any], namespace: str, request: Request) -> NameStyle:
        try:
            record = await directory.namespace(namespace)
        except NotFound as exc:
            raise MCPError(-32602, exc.message) from exc
        return choose_style(
            request.query_params.get("tool_names"), record.tool_names, settings.tool_names, _client_name(ctx)
        )

    def caller_for(ctx: ServerRequestContext[Any, Any], request: Request) -> SessionCaller:
        return SessionCaller(ctx, levels, request.headers.get("mcp-session-id"))

    async def interactive(
        ctx: ServerRequestContext[Any, Any],
        namespace: str,
        principal: Principal,
        request: Request,
        target: str,
        run: Any,
    ) -> dict[str, Any]:
        """Run `run()` with the client reachable by the upstream: on its own stream (legacy), or
        through held calls and `input_required` results (2026-07-28)."""
        if ctx.protocol_version in wire.MODERN_VERSIONS and held is not None:
            return await held.run(
                namespace,
                principal,
                target,
                modern_capabilities(ctx.meta),
                dict(ctx.params or {}),
                run,
            )
        reset = relay.caller.set(caller_for(ctx, request))
        try:
            return await run()  # type: ignore[no-any-return]
        finally:
            relay.caller.reset(reset)

    async def routed(coro: Any) -> dict[str, Any]:
        try:
            return await coro  # type: ignore[no-any-return]
        except JunctionError as exc:
            raise MCPError(exc.jsonrpc_code, exc.message, exc.data) from exc

    def sink(
        ctx: ServerRequestContext[Any, Any],
        namespace: str,
        principal: Principal,
        request: Request,
        deliver: Any,
    ) -> Sink:
        rpc = _rpc(request)

        def may_see(connection_id: str) -> bool | None:
            for record in directory.cached_connections(namespace):
                if record.connection_id == connection_id:
                    if principal.admin:
                        return True
                    return allows(principal, LIST, "connections", namespace, record.metadata or {}, rpc)
            return None  # gone (or not loaded): that lists changed is all anyone learns

        owner = f"{principal.kind}:{principal.id}"
        return Sink(namespace=namespace, may_see=may_see, deliver=deliver, owner=owner)

    def legacy_sink(ctx: ServerRequestContext[Any, Any]) -> Sink | None:
        """The change feed of a legacy session, on its standalone stream (made once per session)."""
        if events is None or ctx.request is None:
            return None
        namespace, principal, request = _caller(ctx)
        session_id = request.headers.get("mcp-session-id")
        if not session_id:
            return None
        current = legacy_sinks.get(session_id)
        if current is None:
            session = ctx.session

            async def deliver(event: ServerEvent) -> None:
                await session.send_notification(_notification(event))

            current = sink(ctx, namespace, principal, request, deliver)
            if session_alive is not None:
                current.alive = lambda: session_alive(session_id)
            if len(legacy_sinks) >= MAX_LEGACY_FEEDS and session_alive is not None:
                for gone in [sid for sid in legacy_sinks if not session_alive(sid)]:
                    del legacy_sinks[gone]
            if len(legacy_sinks) >= MAX_LEGACY_FEEDS or events.add(current) is None:
                return None  # no change feed for this session; its requests still work
            legacy_sinks[session_id] = current
        return current

    # tools
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        namespace, principal, request = _caller(ctx)
        if params is not None and params.cursor is not None:
            # The namespace's list is always one page: no cursor we did not hand out is valid.
            raise MCPError(-32602, "invalid cursor")
        style = await style_of(ctx, namespace, request)
        limits = limits_for(settings, await directory.namespace(namespace), _client_name(ctx))
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

        async def run() -> dict[str, Any]:
            if params.name in META_NAMES:  # a tool budget's meta-tool (or a tool of that name)
                style = await style_of(ctx, namespace, request)
                limits = limits_for(settings, await directory.namespace(namespace), _client_name(ctx))
                return await call_meta(
                    catalog,
                    namespace,
                    principal,
                    params.name,
                    params.arguments,
                    style=style,
                    limits=limits,
                    inner=call_for_mcp,
                    meta=meta,
                    notify=notify,
                    rpc=_rpc(request),
                )
            return await call_for_mcp(
                catalog,
                namespace,
                principal,
                params.name,
                params.arguments,
                meta=meta,
                notify=notify,
                rpc=_rpc(request),
            )

        try:
            result = await interactive(ctx, namespace, principal, request, f"tools/call:{params.name}", run)
        finally:
            answered = True
        if result.get("resultType") == "input_required":
            return types.InputRequiredResult.model_validate(result)  # type: ignore[return-value]
        return types.CallToolResult.model_validate(wire.legacy_result(result))

    # resources and prompts
    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        namespace, principal, request = _caller(ctx)
        style = await style_of(ctx, namespace, request)
        items = await offer.listing("resources/list", namespace, principal, style, _rpc(request))
        return types.ListResourcesResult.model_validate({"resources": items})

    async def list_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        namespace, principal, request = _caller(ctx)
        style = await style_of(ctx, namespace, request)
        items = await offer.listing("resources/templates/list", namespace, principal, style, _rpc(request))
        return types.ListResourceTemplatesResult.model_validate({"resourceTemplates": items})

    async def asked(
        ctx: ServerRequestContext[Any, Any], params: Any, target: str, route: Any, model: type[Any]
    ) -> Any:
        """A `resources/read` or `prompts/get`, routed to its owner with the client reachable by
        the upstream (they may ask it things too); `input_required` for a 2026 client."""
        namespace, principal, request = _caller(ctx)
        fields = {k: v for k, v in _dump(params).items() if k not in ("inputResponses", "requestState")}

        async def run() -> dict[str, Any]:
            return await routed(route(namespace, principal, fields, _rpc(request)))

        result = await interactive(ctx, namespace, principal, request, target, run)
        if result.get("resultType") == "input_required":
            return types.InputRequiredResult.model_validate(result)
        return model.model_validate(result)

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        target = f"resources/read:{params.uri}"
        return await asked(ctx, params, target, offer.read, types.ReadResourceResult)  # type: ignore[no-any-return]

    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        namespace, principal, request = _caller(ctx)
        await routed(
            offer.subscription("resources/subscribe", namespace, principal, params.uri, _rpc(request))
        )
        feed = legacy_sink(ctx)
        if feed is not None:
            feed.resources.add(params.uri)
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        namespace, principal, request = _caller(ctx)
        feed = legacy_sink(ctx)
        if feed is not None:
            feed.resources.discard(params.uri)
        still_wanted = any(params.uri in s.resources for s in legacy_sinks.values())
        if not still_wanted:  # the upstream session is shared: the last one out unsubscribes it
            await routed(
                offer.subscription("resources/unsubscribe", namespace, principal, params.uri, _rpc(request))
            )
        return types.EmptyResult()

    async def list_prompts(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        namespace, principal, request = _caller(ctx)
        style = await style_of(ctx, namespace, request)
        items = await offer.listing("prompts/list", namespace, principal, style, _rpc(request))
        return types.ListPromptsResult.model_validate({"prompts": items})

    async def get_prompt(
        ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        target = f"prompts/get:{params.name}"
        return await asked(ctx, params, target, offer.get_prompt, types.GetPromptResult)  # type: ignore[no-any-return]

    async def complete(
        ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        namespace, principal, request = _caller(ctx)
        result = await routed(offer.complete(namespace, principal, _dump(params), _rpc(request)))
        return types.CompleteResult.model_validate(result)

    # logging and change feeds
    async def set_level(
        ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        _, _, request = _caller(ctx)
        session_id = request.headers.get("mcp-session-id")
        if session_id:
            levels.set(session_id, params.level)
        return types.EmptyResult()

    async def initialized(ctx: ServerRequestContext[Any, Any], params: Any) -> None:
        legacy_sink(ctx)  # list changes reach this session from now on

    async def listen(
        ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """A 2026-07-28 client's change feed: acknowledged first, then what it asked for."""
        namespace, principal, request = _caller(ctx)
        if events is None or ctx.request_id is None:
            raise MCPError(wire.INVALID_REQUEST, "subscriptions/listen needs a request id")
        wanted = params.notifications
        # Only resources of connections the caller may use can be listened to.
        allowed = [
            uri
            for uri in (wanted.resource_subscriptions or ())[:MAX_LISTENED_RESOURCES]
            if await offer.owns(namespace, principal, uri, _rpc(request))
        ]
        honored = types.SubscriptionFilter(
            tools_list_changed=True if wanted.tools_list_changed else None,
            prompts_list_changed=True if wanted.prompts_list_changed else None,
            resources_list_changed=True if wanted.resources_list_changed else None,
            resource_subscriptions=allowed or None,
        )
        honored_uris = frozenset(honored.resource_subscriptions or ())
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: ctx.request_id}
        send, receive = anyio.create_memory_object_stream[ServerEvent](256)

        async def deliver(event: ServerEvent) -> None:
            if event_matches(honored, honored_uris, event):
                send.send_nowait(event)

        feed = sink(ctx, namespace, principal, request, deliver)
        feed.resources.update(honored_uris)
        remove = events.add(feed)
        if remove is None:
            raise MCPError(wire.INTERNAL_ERROR, "too many change feeds are open; close one and listen again")
        try:
            await ctx.session.send_notification(
                types.SubscriptionsAcknowledgedNotification(
                    params=types.SubscriptionsAcknowledgedNotificationParams(
                        notifications=honored, _meta=meta
                    )
                ),
                related_request_id=ctx.request_id,
            )
            async with receive:
                async for event in receive:
                    await ctx.session.send_notification(
                        event_to_notification(event, meta), related_request_id=ctx.request_id
                    )
        finally:
            remove()
            send.close()
        return types.SubscriptionsListenResult(_meta=meta)

    async def capabilities(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        """What the namespace offers is what its visible connections offer (per caller)."""
        result = await call_next(ctx)
        if ctx.method in ("initialize", "server/discover") and isinstance(result, dict):
            if isinstance(ctx.request, Request) and NAMESPACE_KEY in ctx.request.scope:
                namespace, principal, request = _caller(ctx)
                offered = await offer.capabilities(namespace, principal, _rpc(request))
                if events is None:
                    offered = {
                        k: {kk: vv for kk, vv in v.items() if kk not in ("listChanged", "subscribe")}
                        if isinstance(v, dict)
                        else v
                        for k, v in offered.items()
                    }
                result["capabilities"] = offered
        return result

    server: Server[Any] = Server(
        "mcp-junction",
        version=__version__,
        instructions="Tools, resources and prompts of every connection in this namespace, "
        "named with the connection id.",
        get_tool_input_schema=lambda _name: None,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_subscriptions_listen=listen,
    )
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    server.add_notification_handler("notifications/initialized", types.NotificationParams, initialized)
    server.middleware.append(capabilities)
    return server


def build_session_manager(server: Server[Any], settings: Settings) -> StreamableHTTPSessionManager:
    return StreamableHTTPSessionManager(
        app=server,
        max_request_body_size=settings.max_body_bytes,
        session_idle_timeout=settings.session_idle_timeout,
        max_sessions=settings.max_legacy_sessions,
    )
