"""Authentication: a chain of authenticators behind one interface, and the tiny ASGI wrapper that
puts the caller (`Principal`) into the scope of every route not marked public in the route table.

The credential is a bearer token. Each authenticator says whether a credential is of its kind
(a service token is a JWT; an API key is anything else); the first that recognizes it decides, so
a bad token is never retried as a key. OAuth access tokens plug in as one more authenticator.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.auth.policy import Principal
from proxy.errors import JunctionError, Unauthorized

PRINCIPAL_KEY = "junction.principal"
MAX_CREDENTIAL = 16 * 1024  # a token carries its policy chain; keys are 47 characters


class Authenticator(Protocol):
    """One kind of credential."""

    def recognizes(self, credential: str) -> bool:
        """Whether `credential` is of this kind (decided from its shape, without I/O)."""
        ...

    async def authenticate(self, credential: str) -> Principal | None:
        """The caller behind a credential of this kind, or None when it is not valid."""
        ...


class Authentication:
    """The chain: the first authenticator that recognizes a credential decides."""

    def __init__(self, *authenticators: Authenticator):
        self._chain = authenticators

    async def authenticate(self, credential: str) -> Principal | None:
        if not credential or len(credential) > MAX_CREDENTIAL:
            return None
        for authenticator in self._chain:
            if authenticator.recognizes(credential):
                return await authenticator.authenticate(credential)
        return None


def is_mcp_path(path: str) -> bool:
    return (
        path.startswith("/mcp/") or path == "/mcp" or (path.startswith("/connect/") and path.endswith("/mcp"))
    )


class Authenticate:
    """Route middleware: a valid bearer credential, or a 401 that says how to get one."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        credential = _bearer(authorization) if authorization is not None else None
        authentication: Authentication = scope["app"].state.gateway.authentication
        principal = await authentication.authenticate(credential) if credential else None
        if principal is None:
            await _reject(scope, send, credential is not None)
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


async def _reject(scope: Scope, send: Send, credential_sent: bool) -> None:
    # RFC 6750 §3.1: a request without credentials gets no error code in the challenge; a bad
    # credential gets error="invalid_token" (clients then drop it and sign in again).
    path: str = scope["path"]
    params = ['realm="mcp-junction"']
    if credential_sent:
        params.append('error="invalid_token"')
    if is_mcp_path(path):
        public_url = scope["app"].state.settings.effective_public_url
        params.append(f'resource_metadata="{public_url}/.well-known/oauth-protected-resource{path}"')
    if credential_sent:
        message = (
            "invalid, expired or revoked credential; send Authorization: Bearer <API key or service token>"
        )
    else:
        message = "missing credential; send Authorization: Bearer <API key or service token>"
    error = Unauthorized(message, headers={"www-authenticate": "Bearer " + ", ".join(params)})
    await send_error(scope, send, error)


def error_body(scope: Scope, error: JunctionError) -> dict[str, Any]:
    """`{error, message}`, or a JSON-RPC error (with the same code in `data`) on the MCP endpoints."""
    if not is_mcp_path(scope["path"]):
        return error.body()
    rpc_error = {"code": error.jsonrpc_code, "message": error.message, "data": {"error": error.code}}
    return {"jsonrpc": "2.0", "id": None, "error": rpc_error}


async def send_error(scope: Scope, send: Send, error: JunctionError) -> None:
    """Answer with `error` from plain ASGI code (before any route's exception handling)."""
    payload = json.dumps(error_body(scope, error)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _bearer(value: bytes) -> str | None:
    text = value.decode("latin-1").strip()
    scheme, _, token = text.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
