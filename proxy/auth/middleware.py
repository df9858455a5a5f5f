"""Pure ASGI authentication: every route but `/health` and `/.well-known/*` needs a bearer key."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.auth.keys import ApiKeys

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
        path: str = scope["path"]
        if path == "/health" or path.startswith("/.well-known/"):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        keys: ApiKeys = scope["app"].state.gateway.keys
        principal = await keys.verify(token) if token else None
        if principal is None:
            await self._reject(scope, send, "missing API key" if not token else "invalid API key")
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)

    async def _reject(self, scope: Scope, send: Send, reason: str) -> None:
        path: str = scope["path"]
        headers = [(b"content-type", b"application/json")]
        if is_mcp_path(path):
            metadata = f"{self.public_url}/.well-known/oauth-protected-resource{path}"
            challenge = f'Bearer realm="mcp-junction", error="invalid_token", resource_metadata="{metadata}"'
            headers.append((b"www-authenticate", challenge.encode()))
        else:
            headers.append((b"www-authenticate", b'Bearer realm="mcp-junction"'))
        body = {"error": "unauthorized", "message": f"{reason}; send Authorization: Bearer <API key>"}
        payload = json.dumps(body).encode()
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
