"""The forwarding fast path for `tools/call` over Streamable HTTP.

The SDK client costs more CPU per call than the rest of the gateway together (typed messages,
memory streams, a task per POST, and httpx2). A tool call is one JSON-RPC request whose result
we hand on unchanged, so once the SDK has done the handshake we POST it ourselves, in the same
upstream session (its `Mcp-Session-Id` and negotiated version), on a lean keep-alive connection
(`_http1`), and read the answer as raw JSON. Anything unusual (tools using `x-mcp-header`, the
SSE transport) stays on the SDK.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy import __version__, wirejson
from proxy.upstream._http1 import Http1Pool, Response

_ids = itertools.count(1)


class UpstreamRpcError(MCPError):
    """A JSON-RPC error the upstream itself sent in answer to our request."""


_CLIENT_INFO = {"name": "mcp-junction", "version": __version__}


def header_value(value: str) -> str:
    """A header-safe form of `value` (RFC 2047-style base64 when it is not plain ASCII)."""
    if value.isascii() and value.isprintable() and value == value.strip():
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


def uses_mcp_headers(schema: Any) -> bool:
    """True when a tool's input schema asks clients to mirror parameters into `Mcp-Param-*` headers."""
    return "x-mcp-header" in json.dumps(schema) if schema else False


class FastLane:
    """Raw `tools/call` on an upstream session the SDK already initialized."""

    def __init__(self, http: Http1Pool, protocol_version: str, session_id: str | None):
        self.http = http
        self.protocol_version = protocol_version
        self.modern = protocol_version in MODERN_PROTOCOL_VERSIONS
        self.session_id = session_id
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": protocol_version,
        }
        if session_id and not self.modern:
            headers["mcp-session-id"] = session_id
        self._meta = {
            "io.modelcontextprotocol/protocolVersion": protocol_version,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": _CLIENT_INFO,
        }
        self._reply_head = http.head(headers)
        self._call_head = http.head({**headers, "mcp-method": "tools/call"} if self.modern else headers)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None, deadline: float) -> dict[str, Any]:
        """The upstream's raw result object; its JSON-RPC error as `MCPError`; TimeoutError when
        the exchange is not over by `deadline` (event-loop time)."""
        request_id = f"j{next(_ids)}"
        params: dict[str, Any] = {"name": name, "arguments": arguments or {}}
        extra = b""
        if self.modern:
            params["_meta"] = self._meta
            extra = b"mcp-name: " + header_value(name).encode() + b"\r\n"
        body = wirejson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        async with self.http.post(self._call_head, body, extra, deadline) as response:
            content_type = response.headers.get("content-type", "").lower()
            if content_type.startswith("text/event-stream") and response.status == 200:
                async for data in _sse_data(response):
                    message = _loads(data)
                    if not isinstance(message, dict):
                        continue
                    if "method" not in message and message.get("id") == request_id:
                        return _result(message)
                    if "method" in message and "id" in message:
                        await self._decline(message["id"], message["method"], deadline)
                raise MCPError(INTERNAL_ERROR, "the upstream closed the stream without answering")
            raw = await response.read()
            if content_type.startswith("application/json") and raw:
                message = _loads(raw)
                if isinstance(message, dict) and ("result" in message or "error" in message):
                    return _result(message)
            if response.status == 404:
                if self.session_id and not self.modern:
                    raise MCPError(INVALID_REQUEST, "Session terminated")
                raise MCPError(METHOD_NOT_FOUND, "Not Found")
            raise MCPError(INTERNAL_ERROR, f"the upstream answered HTTP {response.status}")

    async def _decline(self, request_id: Any, method: str, deadline: float) -> None:
        # A server-to-client request (sampling, elicitation) on a fast-lane call cannot be relayed:
        # answer it at once so the upstream is not left waiting.
        reply = {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": METHOD_NOT_FOUND, "message": f"{method} is not relayed on this call"},
        }
        async with self.http.post(self._reply_head, wirejson.dumps(reply), deadline=deadline) as response:
            await response.read()


async def _sse_data(response: Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined), in order."""
    buffer = b""
    lines: list[str] = []
    async for chunk in response.iter_chunks():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode().rstrip("\r")
            if not line:
                if lines:
                    yield "\n".join(lines)
                    lines = []
            elif line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
    if buffer.strip().startswith(b"data:"):
        lines.append(buffer.decode().strip()[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def _loads(data: str | bytes) -> Any:
    try:
        return wirejson.loads(data.encode() if isinstance(data, str) else data)
    except (ValueError, RecursionError) as exc:
        raise UpstreamRpcError(INTERNAL_ERROR, "the upstream sent a response that is not valid JSON") from exc


def _result(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        raise MCPError(
            int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")), error.get("data")
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise UpstreamRpcError(INTERNAL_ERROR, "the upstream sent a result that is not an object")
    return result
