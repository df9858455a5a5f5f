"""Per-connection MCP endpoint (`/mcp/{ns}/{id}`, `POST /connect/{ns}/{id}/mcp`): stateless.

A small JSON-RPC forwarder over the connection's shared upstream session. It accepts calls
without `initialize`, ignores any `mcp-session-id` (the Smithery SDK sends
`smithery-stateless`), answers 202 to notifications and 405 to GET/DELETE.
"""

from __future__ import annotations

import json
from typing import Any

import mcp.types as types
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from proxy import __version__
from proxy.errors import InvalidJSON, JunctionError, NotFound, UpstreamError
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


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def rpc_error(
    id_: Any, code: int, message: str, status: int, data: Any = None, headers: dict[str, str] | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _json({"jsonrpc": "2.0", "id": id_, "error": error}, status, headers)


def error_response(id_: Any, exc: JunctionError) -> Response:
    return rpc_error(id_, exc.jsonrpc_code, exc.message, exc.status, headers=exc.headers)


def parse_message(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidJSON("request body is not valid JSON") from exc
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise InvalidJSON("request body must be one JSON-RPC 2.0 message (batches are not supported)")
    return message


class Passthrough:
    """Answers JSON-RPC requests for one connection's upstream session."""

    async def handle(self, request: Request, body: bytes, session: UpstreamSession) -> Response:
        try:
            message = parse_message(body)
        except InvalidJSON as exc:
            return rpc_error(None, -32700, exc.message, 400)
        method = message.get("method")
        if not isinstance(method, str) or "id" not in message:
            return Response(status_code=202)  # a notification or a response: nothing to answer
        id_ = message["id"]
        params = message.get("params") or {}
        if not isinstance(params, dict):
            return rpc_error(id_, -32602, "params must be an object", 400)
        version = request.headers.get("mcp-protocol-version")
        modern = version in MODERN_PROTOCOL_VERSIONS
        try:
            result = await self._dispatch(method, params, session, modern)
        except MCPError as exc:  # the upstream's own JSON-RPC error, unchanged
            return _json({"jsonrpc": "2.0", "id": id_, "error": _dump(exc.error)})
        except NotFound as exc:
            return rpc_error(
                id_, -32601 if exc.data == "method" else exc.jsonrpc_code, exc.message, exc.status
            )
        except UpstreamError as exc:
            if method == "tools/call":
                result = {"content": [{"type": "text", "text": exc.message}], "isError": True}
            else:
                return error_response(id_, exc)
        except JunctionError as exc:
            return error_response(id_, exc)
        if modern:
            result.setdefault("resultType", "complete")
            if method in _LISTS:
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
        return _json({"jsonrpc": "2.0", "id": id_, "result": result})

    async def _dispatch(
        self, method: str, params: dict[str, Any], session: UpstreamSession, modern: bool
    ) -> dict[str, Any]:
        if method == "tools/call":
            name = params.get("name")
            arguments = params.get("arguments")
            if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
                raise MCPError(-32602, "tools/call needs a string 'name' and an object 'arguments'")
            return await session.call_tool(name, arguments)
        if method == "tools/list":
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
        return {k: v for k, v in caps.items() if k in ("tools", "resources", "prompts", "completions")}

    def _server_info(self, session: UpstreamSession) -> dict[str, Any]:
        return session.server_info or {"name": "mcp-junction", "version": __version__}

    async def _initialize(self, params: dict[str, Any], session: UpstreamSession) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        version = asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        return {
            "protocolVersion": version,
            "capabilities": await self._capabilities(session),
            "serverInfo": self._server_info(session),
        }

    async def _discover(self, session: UpstreamSession) -> dict[str, Any]:
        info = self._server_info(session)
        return {
            "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
            "capabilities": await self._capabilities(session),
            "serverInfo": info,
            "_meta": {"io.modelcontextprotocol/serverInfo": info},
        }
