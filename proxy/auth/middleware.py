"""Pure ASGI edge checks: the `Origin` rule on every route, then a bearer key on every route but
`/health` and `/.well-known/*`.

Both read the headers in the one scan authentication already makes; a request without an `Origin`
header (every CLI, SDK and server) costs nothing more.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.auth.keys import ApiKeys
from proxy.errors import ForbiddenOrigin, JunctionError
from proxy.settings import Settings, normalize_origin

PRINCIPAL_KEY = "junction.principal"


def is_mcp_path(path: str) -> bool:
    return (
        path.startswith("/mcp/") or path == "/mcp" or (path.startswith("/connect/") and path.endswith("/mcp"))
    )


class AuthMiddleware:
    def __init__(self, app: ASGIApp, public_url: str):
        self.app = app
        self.public_url = public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"origin" and not _origin_allowed(scope, value):
                await self._refuse_origin(scope, send, value)
                return
        path: str = scope["path"]
        if path == "/health" or path.startswith("/.well-known/"):
            await self.app(scope, receive, send)
            return
        token = _bearer(authorization) if authorization is not None else None
        keys: ApiKeys = scope["app"].state.gateway.keys
        principal = await keys.verify(token) if token else None
        if principal is None:
            await self._reject(scope, send, token is not None)
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)

    async def _reject(self, scope: Scope, send: Send, credential_sent: bool) -> None:
        # RFC 6750 §3.1: a request without credentials gets no error code in the challenge; a
        # bad credential gets error="invalid_token" (clients then drop it and sign in again).
        path: str = scope["path"]
        params = ['realm="mcp-junction"']
        if credential_sent:
            params.append('error="invalid_token"')
        if is_mcp_path(path):
            params.append(f'resource_metadata="{self.public_url}/.well-known/oauth-protected-resource{path}"')
        reason = "invalid API key" if credential_sent else "missing API key"
        body = {"error": "unauthorized", "message": f"{reason}; send Authorization: Bearer <API key>"}
        await _answer(send, 401, body, [(b"www-authenticate", ("Bearer " + ", ".join(params)).encode())])

    async def _refuse_origin(self, scope: Scope, send: Send, origin: bytes) -> None:
        shown = origin.decode("latin-1")[:200]
        error = ForbiddenOrigin(
            f"requests from origin {shown!r} are not allowed; "
            "add it to the gateway's allowed_origins setting if you trust that site"
        )
        await _answer(send, error.status, _error_body(scope, error), [])


def _origin_allowed(scope: Scope, value: bytes) -> bool:
    allowed = _settings(scope).origin_allowlist
    if "*" in allowed:
        return True
    origin = normalize_origin(value.decode("latin-1"))
    return origin is not None and origin in allowed


def _settings(scope: Scope) -> Settings:
    return scope["app"].state.settings  # type: ignore[no-any-return]


def _error_body(scope: Scope, error: JunctionError) -> dict[str, Any]:
    """`{error, message}`, or a JSON-RPC error (with the same code in `data`) on the MCP endpoints."""
    if not is_mcp_path(scope["path"]):
        return error.body()
    rpc_error = {"code": error.jsonrpc_code, "message": error.message, "data": {"error": error.code}}
    return {"jsonrpc": "2.0", "id": None, "error": rpc_error}


async def _answer(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _bearer(value: bytes) -> str | None:
    text = value.decode("latin-1").strip()
    scheme, _, token = text.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
