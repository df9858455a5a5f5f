"""Per-connection MCP endpoint (`/mcp/{ns}/{id}`, `/connect/{ns}/{id}/mcp`): which client gets what.

- A legacy client that sends `initialize` to a Streamable HTTP upstream gets its own upstream
  session, relayed as it is (`proxy.gateway.relay`): sessions, GET streams, subscriptions and
  server-to-client requests work as against the upstream itself. Its later requests carry the
  `Mcp-Session-Id` we minted; one we no longer know gets 404, so the client initializes again.
- A 2026-07-28 request to a 2026-07-28 upstream is relayed as it is, request by request.
- Everything else (calls without `initialize`, such as the Smithery SDK's with
  `mcp-session-id: smithery-stateless`; an HTTP+SSE upstream; a 2026-07-28 client of a legacy
  upstream) is translated here over the connection's shared upstream session: a small stateless
  JSON-RPC forwarder that answers `initialize` itself, 202 to notifications and 405 to GET and
  DELETE, and advertises only what it delivers (tools, resources and prompts to read and list,
  completions; no subscriptions and no `listChanged`). Every rule comes from `proxy.wire`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp.types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proxy import __version__, wire
from proxy.auth.policy import Principal
from proxy.errors import JunctionError, MethodNotAllowed, NotFound, UpstreamError
from proxy.gateway.relay import Relay
from proxy.upstream.pool import UpstreamSession

_FORWARDED: dict[str, type[BaseModel]] = {
    "resources/list": types.ListResourcesResult,
    "resources/templates/list": types.ListResourceTemplatesResult,
    "resources/read": types.ReadResourceResult,
    "prompts/list": types.ListPromptsResult,
    "prompts/get": types.GetPromptResult,
    "completion/complete": types.CompleteResult,
}
_LISTS = {"tools/list", "resources/list", "resources/templates/list", "prompts/list", "server/discover"}
# What this endpoint serves of each capability an upstream may have (nothing else is copied).
_SERVED_CAPABILITIES = ("tools", "resources", "prompts", "completions")


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def rpc_error(
    id_: Any, code: int, message: str, status: int, data: Any = None, headers: dict[str, str] | None = None
) -> Response:
    return _json(wire.error_body(id_, code, message, data), status, headers)


def error_response(id_: Any, exc: JunctionError) -> Response:
    return rpc_error(id_, exc.jsonrpc_code, exc.message, exc.status, exc.data, headers=exc.headers)


def session_owner(caller: Principal) -> str:
    """Who a relayed session belongs to: the credential, or for OAuth its grant (a session
    outlives the hourly refresh of an access token), as on the namespace endpoint."""
    if caller.kind == "oauth" and len(caller.token_ids) >= 2:
        return caller.token_ids[-2]
    return f"{caller.kind}:{caller.id}"


class Passthrough:
    """Answers one connection's MCP requests: relayed, or translated over the shared session."""

    def __init__(self, relay: Relay | None = None):
        self.relay = relay

    async def handle(
        self, request: Request, body: bytes, session: UpstreamSession, caller: Principal
    ) -> Response:
        """Any request of the endpoint (POST, GET, DELETE), already authorized for `caller`."""
        try:
            return await self._route(request, body, session, caller)
        except JunctionError as exc:
            return error_response(None, exc)

    async def _route(
        self, request: Request, body: bytes, session: UpstreamSession, caller: Principal
    ) -> Response:
        version = request.headers.get("mcp-protocol-version", "")
        modern = version not in ("", *wire.HANDSHAKE_VERSIONS)
        session_id = request.headers.get(wire.SESSION_HEADER)
        relay = self.relay
        if relay is not None and not modern and session_id and relay.owns(session_id):
            relayed = relay.session(session_id, session.key, session_owner(caller))
            if request.method == "POST":
                # One well-formed message, as the policy that let it in read it: the upstream
                # must not act on what that check could not see.
                try:
                    wire.decode(body, strict=True)
                except wire.WireError as exc:
                    return rpc_error(None, exc.code, exc.message, 400)
            return await relay.exchange(request, body, session, relayed)
        if request.method != "POST":
            raise MethodNotAllowed(
                "this endpoint streams only within a session: initialize first (or POST JSON-RPC "
                "messages without a session; then there is no GET stream or DELETE)",
                headers={"allow": "POST"},
            )
        try:
            message = wire.decode(body, strict=True)
        except wire.WireError as exc:
            return rpc_error(None, exc.code, exc.message, 400)
        if relay is not None and isinstance(message, wire.Request):
            if modern and await _modern_upstream(session):
                return await relay.forward(request, body, session)
            if not modern and message.method == "initialize" and await _streamable(session):
                return await relay.initialize(request, body, session, session_owner(caller))
        return await self._translate(request, message, session, version, modern)

    async def _translate(
        self, request: Request, message: wire.Message, session: UpstreamSession, version: str, modern: bool
    ) -> Response:
        """The stateless answer over the connection's shared upstream session."""
        if not isinstance(message, wire.Request):
            return Response(status_code=202)  # a notification or a response: nothing to answer
        if modern:
            problem = wire.check_modern_request(
                message, version, request.headers.get("mcp-method"), request.headers.get("mcp-name")
            )
            if problem is not None:
                return rpc_error(message.id, problem.code, problem.message, 400, problem.data)
        meta = message.params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if message.method == "tools/call" and isinstance(token, str | int) and wire.is_request_id(token):
            return self._streamed_call(message, session, token, modern)
        try:
            result = await self._dispatch(message.method, message.params, session)
        except MCPError as exc:  # the upstream's own JSON-RPC error, with the status its code has
            error = exc.error
            status = wire.http_status(error.code) if modern else 200
            return rpc_error(message.id, error.code, error.message, status, error.data)
        except NotFound as exc:
            if exc.data == "method":
                return rpc_error(message.id, wire.METHOD_NOT_FOUND, exc.message, 404 if modern else 200)
            return error_response(message.id, exc)
        except UpstreamError as exc:
            if message.method != "tools/call":
                return error_response(message.id, exc)
            result = {"content": [{"type": "text", "text": exc.message}], "isError": True}
        except JunctionError as exc:
            return error_response(message.id, exc)
        if modern:
            shaped = wire.modern_result(result, self._server_info(session), listing=message.method in _LISTS)
        else:
            shaped = wire.legacy_result(result)
        return _json(wire.result_body(message.id, shaped))

    def _streamed_call(
        self, message: wire.Request, session: UpstreamSession, token: str | int, modern: bool
    ) -> Response:
        """A call that asked for progress: answered as server-sent events, the upstream's progress
        first, then the result. The call runs while the caller reads; a caller that leaves
        cancels it (and the upstream hears of it)."""
        params = message.params
        name, arguments = params.get("name"), params.get("arguments")
        if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
            status = 400 if modern else 200
            return rpc_error(message.id, wire.INVALID_PARAMS, "tools/call needs a string 'name'", status)
        send, receive = anyio.create_memory_object_stream[bytes](16)

        async def relay(note: wire.Notification) -> None:
            if note.method == "notifications/progress" and note.params.get("progressToken") == token:
                await send.send(wire.sse_event(wire.notification_body(note.method, note.params)))

        async def call() -> None:
            async with send:
                try:
                    raw = await session.call_tool(
                        name, arguments, meta={"progressToken": token}, notify=relay
                    )
                    info = self._server_info(session)
                    result = wire.modern_result(raw, info) if modern else wire.legacy_result(raw)
                    body = wire.result_body(message.id, result)
                except MCPError as exc:
                    body = wire.error_body(message.id, exc.error.code, exc.error.message, exc.error.data)
                except UpstreamError as exc:
                    failed = {"content": [{"type": "text", "text": exc.message}], "isError": True}
                    body = wire.result_body(message.id, failed)
                except JunctionError as exc:
                    body = wire.error_body(message.id, exc.jsonrpc_code, exc.message, exc.data)
                await send.send(wire.sse_event(body))

        async def events() -> AsyncIterator[bytes]:
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(call)
                async for event in receive:
                    yield event
                tg.cancel_scope.cancel()

        headers = {"cache-control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _dispatch(
        self, method: str, params: dict[str, Any], session: UpstreamSession
    ) -> dict[str, Any]:
        if method == "tools/call":
            name = params.get("name")
            arguments = params.get("arguments")
            if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
                raise MCPError(
                    wire.INVALID_PARAMS, "tools/call needs a string 'name' and an object 'arguments'"
                )
            return await session.call_tool(name, arguments)
        if method == "tools/list":
            if params.get("cursor") is not None:
                raise MCPError(wire.INVALID_PARAMS, "invalid cursor")  # the list is one page
            return {"tools": [_dump(t) for t in await session.list_tools()]}
        if method == "ping":
            return {}
        if method == "initialize":
            return await self._initialize(params, session)
        if method == "server/discover":
            return await self._discover(session)
        if method in _FORWARDED:
            result = await session.request(method, params, _FORWARDED[method])
            return _dump(result)
        raise NotFound(f"method {method!r} is not supported on this endpoint", data="method")

    async def _capabilities(self, session: UpstreamSession) -> dict[str, Any]:
        client = await session.client()
        caps = _dump(client.server_capabilities)
        # Served as plain request/response: no subscriptions, no list-changed announcements.
        return {name: {} for name in _SERVED_CAPABILITIES if name in caps}

    def _server_info(self, session: UpstreamSession) -> dict[str, Any]:
        return session.server_info or {"name": "mcp-junction", "version": __version__}

    async def _initialize(self, params: dict[str, Any], session: UpstreamSession) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        version = asked if asked in wire.HANDSHAKE_VERSIONS else wire.HANDSHAKE_VERSIONS[-1]
        return {
            "protocolVersion": version,
            "capabilities": await self._capabilities(session),
            "serverInfo": self._server_info(session),
        }

    async def _discover(self, session: UpstreamSession) -> dict[str, Any]:
        return {
            "supportedVersions": list(wire.MODERN_VERSIONS),
            "capabilities": await self._capabilities(session),
            "serverInfo": self._server_info(session),
        }


async def _modern_upstream(session: UpstreamSession) -> bool:
    """Does the upstream speak 2026-07-28 (connecting first, when needed, to find out)?"""
    await session.client()
    return session.protocol_version in wire.MODERN_VERSIONS


async def _streamable(session: UpstreamSession) -> bool:
    """Is the upstream reached over Streamable HTTP (HTTP+SSE sessions are not relayed)?"""
    await session.client()
    return session.transport == "streamable"
