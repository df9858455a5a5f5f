"""The forwarding fast path of `/mcp/{ns}` for `tools/call`.

A tool call is the hot path of the gateway. For a well-formed `tools/call` on a live legacy
session (or a well-formed 2026-07-28 request) we answer with one JSON response built from the
upstream's raw result, instead of passing the message through the SDK's typed server loop.
Everything else (initialize, lists, GET streams, anything unusual) goes to the SDK's session
manager unchanged, which stays the authority on sessions and errors.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import Scope, Send

from proxy import __version__
from proxy.auth.policy import Principal
from proxy.gateway.catalog import Catalog
from proxy.gateway.endpoint import call_for_mcp

SERVER_INFO = {"name": "mcp-junction", "version": __version__}
_SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _decode_header(value: str) -> str:
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2]).decode()
        except ValueError:
            return value
    return value


def parse_tool_call(body: bytes) -> tuple[Any, str, dict[str, Any] | None, dict[str, Any]] | None:
    """(id, name, arguments, params) of a well-formed `tools/call` request, else None."""
    if b'"tools/call"' not in body:
        return None
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if (
        not isinstance(message, dict)
        or message.get("jsonrpc") != "2.0"
        or message.get("method") != "tools/call"
    ):
        return None
    request_id = message.get("id")
    params = message.get("params")
    if not isinstance(request_id, str | int) or isinstance(request_id, bool) or not isinstance(params, dict):
        return None
    name, arguments = params.get("name"), params.get("arguments")
    if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
        return None
    return request_id, name, arguments, params


class ToolCallFastPath:
    """Answers `tools/call` directly when the request is one the SDK would accept as is."""

    def __init__(self, manager: StreamableHTTPSessionManager, catalog: Catalog):
        self._manager = manager
        self._catalog = catalog

    def _eligible(
        self, scope: Scope, headers: dict[bytes, bytes], name: str, params: dict[str, Any]
    ) -> str | None:
        """'modern' or 'legacy' when the request may take the fast path, else None."""
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        accept = headers.get(b"accept", b"")
        if content_type != b"application/json" or (
            b"application/json" not in accept and b"*/*" not in accept
        ):
            return None
        version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
        if version in MODERN_PROTOCOL_VERSIONS:
            meta = params.get("_meta")
            if (
                headers.get(b"mcp-method") != b"tools/call"
                or _decode_header(headers.get(b"mcp-name", b"").decode("latin-1")) != name
                or not isinstance(meta, dict)
                or meta.get("io.modelcontextprotocol/protocolVersion") != version
                or not isinstance(meta.get("io.modelcontextprotocol/clientCapabilities"), dict)
            ):
                return None
            return "modern"
        if version and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return None
        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1")
        transport = self._manager._server_instances.get(session_id) if session_id else None  # noqa: SLF001
        if transport is None or transport.is_terminated:
            return None
        user = scope.get("user")
        owner = self._manager._session_owners.get(session_id)  # noqa: SLF001
        if not isinstance(user, AuthenticatedUser) or owner != authorization_context(user):
            return None
        idle = transport.idle_scope
        if idle is not None and idle.deadline != math.inf:
            # Keep the SDK session alive: fast-path calls are activity too.
            idle.deadline = anyio.current_time() + (self._manager.session_idle_timeout or 0)
        return "legacy"

    async def handle(
        self, scope: Scope, body: bytes, send: Send, namespace: str, principal: Principal
    ) -> bool:
        """Answer the request and return True, or return False to leave it to the SDK."""
        parsed = parse_tool_call(body)
        if parsed is None:
            return False
        request_id, name, arguments, params = parsed
        headers = _headers(scope)
        era = self._eligible(scope, headers, name, params)
        if era is None:
            return False
        try:
            result = await call_for_mcp(self._catalog, namespace, principal, name, arguments)
            result = dict(result)
            meta = dict(result.get("_meta") or {})
            if era == "modern":
                result["resultType"] = result.get("resultType", "complete")
                meta[_SERVER_INFO_KEY] = SERVER_INFO
            else:
                result.pop("resultType", None)
                meta.pop(_SERVER_INFO_KEY, None)
            if meta:
                result["_meta"] = meta
            else:
                result.pop("_meta", None)
            payload: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
        except MCPError as exc:
            payload = {"jsonrpc": "2.0", "id": request_id, "error": exc.error.model_dump(exclude_none=True)}
        data = json.dumps(payload, separators=(",", ":")).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        if era == "legacy":
            response_headers.append((b"mcp-session-id", headers[b"mcp-session-id"]))
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})
        return True
