"""The forwarding fast path of `/mcp/{ns}` for `tools/call` and `tools/list`.

These are the hot paths of the gateway. For a well-formed request on a live legacy session (or
a well-formed 2026-07-28 request) we answer with one JSON response built from the upstream's raw
result, or from the cached, pre-serialized tool list, instead of passing the message through the
SDK's typed server loop. Everything else (initialize, GET streams, anything unusual) goes to the
SDK's session manager unchanged, which stays the authority on sessions and errors.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any
from urllib.parse import parse_qs

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import Message, Scope, Send

from proxy import __version__, wirejson
from proxy.auth.policy import Principal
from proxy.directory import Directory
from proxy.gateway.catalog import Catalog
from proxy.gateway.endpoint import call_for_mcp
from proxy.gateway.names import choose_style
from proxy.settings import Settings

SERVER_INFO = {"name": "mcp-junction", "version": __version__}
_SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
_MODERN_LIST_EXTRA = (
    b',"resultType":"complete","ttlMs":0,"cacheScope":"private","_meta":'
    + json.dumps({_SERVER_INFO_KEY: SERVER_INFO}, separators=(",", ":")).encode()
)
_MAX_REMEMBERED_CLIENTS = 10_000


def _decode_header(value: str) -> str:
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2]).decode()
        except ValueError:
            return value
    return value


def parse_request(body: bytes) -> tuple[Any, str, dict[str, Any]] | None:
    """(id, method, params) of a well-formed `tools/call` or `tools/list` request, else None."""
    if b'"tools/' not in body:
        return None
    try:
        message = wirejson.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return None
    method, request_id = message.get("method"), message.get("id")
    params = message.get("params")
    if method == "tools/list" and params is None:
        params = {}
    if method not in ("tools/call", "tools/list") or not isinstance(params, dict):
        return None
    if not isinstance(request_id, str | int) or isinstance(request_id, bool):
        return None
    if method == "tools/call":
        name, arguments = params.get("name"), params.get("arguments")
        if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
            return None
    elif params.get("cursor") is not None:
        return None  # we never hand out cursors; leave odd requests to the SDK
    return request_id, method, params


class ToolCallFastPath:
    """Answers `tools/call` and `tools/list` directly when the SDK would accept the request as is."""

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        catalog: Catalog,
        directory: Directory,
        settings: Settings,
    ):
        self._manager = manager
        self._catalog = catalog
        self._directory = directory
        self._settings = settings
        self._client_names: dict[str, str] = {}

    def watch_initialize(self, body: bytes, send: Send) -> Send:
        """Remember the client name of a new legacy session (it picks the tool-name style)."""
        if b'"initialize"' not in body:
            return send
        try:
            message = json.loads(body)
            name = message["params"]["clientInfo"]["name"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
            return send
        if message.get("method") != "initialize" or not isinstance(name, str):
            return send
        if len(self._client_names) > _MAX_REMEMBERED_CLIENTS:
            live = self._manager._server_instances  # noqa: SLF001
            self._client_names = {k: v for k, v in self._client_names.items() if k in live}

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", ()):
                    if key.lower() == b"mcp-session-id":
                        self._client_names[value.decode("latin-1")] = name
            await send(message)

        return watching

    def _eligible(
        self, scope: Scope, headers: dict[bytes, bytes], method: str, params: dict[str, Any]
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
            name_header = _decode_header(headers.get(b"mcp-name", b"").decode("latin-1"))
            if (
                headers.get(b"mcp-method") != method.encode()
                or (method == "tools/call" and name_header != params["name"])
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
            # Keep the SDK session alive: fast-path requests are activity too. Moving a deadline
            # reschedules a timer, so move it only once it is a second behind.
            deadline = anyio.current_time() + (self._manager.session_idle_timeout or 0)
            if deadline - idle.deadline > 1.0:
                idle.deadline = deadline
        return "legacy"

    async def handle(
        self, scope: Scope, body: bytes, send: Send, namespace: str, principal: Principal
    ) -> bool:
        """Answer the request and return True, or return False to leave it to the SDK."""
        parsed = parse_request(body)
        if parsed is None:
            return False
        request_id, method, params = parsed
        headers = dict(scope["headers"])
        era = self._eligible(scope, headers, method, params)
        if era is None:
            return False
        if method == "tools/list":
            data = await self._list(scope, headers, request_id, params, era, namespace, principal)
        else:
            data = await self._call(request_id, params, era, namespace, principal)
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        if era == "legacy":
            response_headers.append((b"mcp-session-id", headers[b"mcp-session-id"]))
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})
        return True

    async def _call(
        self, request_id: Any, params: dict[str, Any], era: str, namespace: str, principal: Principal
    ) -> bytes:
        try:
            raw = await call_for_mcp(
                self._catalog, namespace, principal, params["name"], params.get("arguments")
            )
            result = dict(raw)
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
        return wirejson.dumps(payload)

    async def _list(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        request_id: Any,
        params: dict[str, Any],
        era: str,
        namespace: str,
        principal: Principal,
    ) -> bytes:
        record = await self._directory.namespace(namespace)
        if era == "modern":
            info = (params.get("_meta") or {}).get("io.modelcontextprotocol/clientInfo")
            client_name = info.get("name") if isinstance(info, dict) else None
        else:
            client_name = self._client_names.get(headers[b"mcp-session-id"].decode("latin-1"))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        requested = query.get("tool_names", [None])[0]
        style = choose_style(requested, record.tool_names, self._settings.tool_names, client_name)
        tools = await self._catalog.tools_json(namespace, principal, style)
        extra = _MODERN_LIST_EXTRA if era == "modern" else b""
        prefix = b'{"jsonrpc":"2.0","id":' + json.dumps(request_id).encode() + b',"result":{"tools":'
        return prefix + tools + extra + b"}}"
