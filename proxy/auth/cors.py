"""Pure ASGI CORS, in front of everything: web pages on the allowed origins may call every route with
a bearer key; a request from any other origin is refused (the MCP spec's DNS-rebinding defence).

A request without an `Origin` header (every CLI, SDK and server) costs one scan of its headers and
reaches the app with its own `send`. Preflights are answered here, before authentication, since
browsers send them without credentials. No `Access-Control-Allow-Credentials`: the gateway takes
bearer keys, never cookies, so a page cannot borrow a user's ambient credentials.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import ForbiddenOrigin, JunctionError
from proxy.settings import Settings, normalize_origin

# The request headers a page may send: the MCP transport's, and those of the Smithery (Stainless)
# TypeScript SDK, which also sets User-Agent (Firefox lets it, so it is preflighted). Mcp-Method,
# Mcp-Name and Mcp-Param-* are the 2026-07-28 request envelope.
ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "last-event-id",
        "user-agent",
    }
)
ALLOWED_HEADER_PREFIXES = ("x-stainless-", "mcp-param-")
ALLOWED_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"
# Response headers a page may read: the MCP session, the auth challenge, and the SDK's retry hint.
EXPOSED_HEADERS = b"Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate, X-Should-Retry"
PREFLIGHT_MAX_AGE = b"600"  # seconds; Chromium caps it at 7200, Firefox at 86400

# OAuth discovery and the token, registration and revocation endpoints: browser-based MCP clients
# (the Inspector's web UI) call them from their own origin. They act on no ambient credential, so
# any origin may call them; the MCP endpoints and the REST API keep the allowlist.
OPEN_PATHS = frozenset({"/token", "/register", "/revoke"})

_VERDICT_CACHE_SIZE = 1024


class CorsMiddleware:
    """Answers preflights, refuses disallowed origins, and adds CORS headers to every response
    (errors included) for allowed ones."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._allowlist = settings.origin_allowlist
        self._any = "*" in self._allowlist
        # Origin header value -> allowed; a page sends the same value on every request.
        self._verdicts: dict[bytes, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"origin":
                    await self._cross_origin(scope, receive, send, value)
                    return
        await self.app(scope, receive, send)

    async def _cross_origin(self, scope: Scope, receive: Receive, send: Send, origin: bytes) -> None:
        requested_method: bytes | None = None
        requested_headers: list[bytes] = []
        path: str = scope["path"]
        open_to_all = path in OPEN_PATHS or path.startswith("/.well-known/")
        for name, value in scope["headers"]:
            if name == b"origin" and not open_to_all and not self._allowed(value):
                await _refuse(scope, send, value)
                return
            if name == b"access-control-request-method":
                requested_method = value
            elif name == b"access-control-request-headers":
                requested_headers.append(value)
        if scope["method"] == "OPTIONS" and requested_method is not None:
            await _preflight(send, origin, requested_headers)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": _with_cors(message.get("headers", ()), origin)}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allowed(self, origin: bytes) -> bool:
        if self._any:
            return True
        verdict = self._verdicts.get(origin)
        if verdict is None:
            verdict = normalize_origin(origin.decode("latin-1")) in self._allowlist
            if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[origin] = verdict
        return verdict


def _allowed_request_headers(requested: Iterable[bytes]) -> bytes:
    """The headers of `Access-Control-Request-Headers` values that a page may send, lower case."""
    names = (name.strip().lower() for value in requested for name in value.decode("latin-1").split(","))
    return ", ".join(
        name for name in names if name in ALLOWED_HEADERS or name.startswith(ALLOWED_HEADER_PREFIXES)
    ).encode("latin-1")


async def _preflight(send: Send, origin: bytes, requested_headers: list[bytes]) -> None:
    headers = [
        (b"access-control-allow-origin", origin),
        (b"vary", b"Origin"),
        (b"access-control-allow-methods", ALLOWED_METHODS),
        (b"access-control-max-age", PREFLIGHT_MAX_AGE),
    ]
    allowed = _allowed_request_headers(requested_headers)
    if allowed:
        headers.append((b"access-control-allow-headers", allowed))
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(headers: Iterable[tuple[bytes, bytes]], origin: bytes) -> list[tuple[bytes, bytes]]:
    """`headers` with ours added; an endpoint's own `Access-Control-Allow-Origin: *` gives way (a
    browser refuses two), and an existing `Vary` is extended rather than repeated."""
    result = [(b"access-control-allow-origin", origin), (b"access-control-expose-headers", EXPOSED_HEADERS)]
    vary = [b"Origin"]
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"vary":
            vary.insert(-1, value)
        elif lowered not in (b"access-control-allow-origin", b"access-control-expose-headers"):
            result.append((name, value))
    result.append((b"vary", b", ".join(vary)))
    return result


# --- the refusal: the same bodies as every other error of the gateway -------------------------
def _is_mcp_path(path: str) -> bool:
    return (
        path.startswith("/mcp/") or path == "/mcp" or (path.startswith("/connect/") and path.endswith("/mcp"))
    )


async def _refuse(scope: Scope, send: Send, origin: bytes) -> None:
    shown = origin.decode("latin-1")[:200]
    error = ForbiddenOrigin(
        f"requests from origin {shown!r} are not allowed; "
        "add it to the gateway's allowed_origins setting if you trust that site"
    )
    payload = json.dumps(_error_body(scope["path"], error)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _error_body(path: str, error: JunctionError) -> dict[str, Any]:
    """`{error, message}`, or a JSON-RPC error (with the same code in `data`) on the MCP endpoints."""
    if not _is_mcp_path(path):
        return error.body()
    rpc_error = {"code": error.jsonrpc_code, "message": error.message, "data": {"error": error.code}}
    return {"jsonrpc": "2.0", "id": None, "error": rpc_error}
