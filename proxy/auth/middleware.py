"""Authentication: a chain of authenticators behind one interface, and the tiny ASGI wrapper that
puts the caller (`Principal`) into the scope of every route not marked public in the route table.

The credential is a bearer token. Each authenticator says whether a credential is of its kind
(a service token is a JWT; an API key is anything else); the first that recognizes it decides, so
a bad token is never retried as a key. OAuth access tokens plug in as one more authenticator.
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        if principal.kind == "oauth":
            # An access token is for the MCP endpoint it was issued for (and below it), and for
            # listing or revoking its own grant; the rest of the API is not what was consented.
            path: str = scope["path"]
            if is_mcp_path(path):
                if not _audience_matches(principal.audience or "", _resource(scope)):
                    message = f"this access token was issued for {principal.audience}, not for this endpoint"
                    await _reject(scope, send, True, message)
                    return
                if set(SCOPES) - set((principal.scope or "").split()):
                    send = _scope_challenge(scope, send)
            elif not path.startswith(GRANTS_PATH):
                message = f"an OAuth access token is only for the MCP endpoint it was issued for ({principal.audience})"
                await _reject(scope, send, True, message)
                return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


# The OAuth scopes of the gateway's authorization server: the operations of the policy model that
# MCP requests need (`proxy/auth/policy.py`: listing needs read, calling needs execute).
SCOPES = ("read", "execute")
GRANTS_PATH = "/oauth/grants"


def _resource(scope: Scope) -> str:
    """This endpoint's URL as the protected-resource metadata names it (RFC 9728)."""
    return scope["app"].state.settings.effective_public_url + scope["path"]


def _audience_matches(audience: str, resource: str) -> bool:
    """A token for a resource is good on it and below it (`/mcp/a` on `/mcp/a/github`), never
    beside it (`/mcp/b`)."""
    return resource == audience or resource.startswith(audience.rstrip("/") + "/")


def challenge(scope: Scope, *params: str) -> str:
    """A `WWW-Authenticate` value for an MCP path: where the metadata is and what scope to ask."""
    path = quote(scope["path"], safe="/")  # a header is latin-1, and a quote would end the value
    public_url = scope["app"].state.settings.effective_public_url
    return "Bearer " + ", ".join(
        [
            'realm="mcp-junction"',
            *params,
            f'resource_metadata="{public_url}/.well-known/oauth-protected-resource{path}"',
            f'scope="{" ".join(SCOPES)}"',
        ]
    )


def _scope_challenge(scope: Scope, send: Send) -> Send:
    """For OAuth access tokens granted less than every scope: a 403 says `insufficient_scope`
    so the client can ask for more (one granted every scope would only ask again in vain)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 403:
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"www-authenticate" for name, _ in headers):
                value = challenge(
                    scope,
                    'error="insufficient_scope"',
                    'error_description="this access token does not allow this request"',
                )
                headers.append((b"www-authenticate", value.encode("latin-1")))
                message = {**message, "headers": headers}
        await send(message)

    return sending


async def _reject(scope: Scope, send: Send, credential_sent: bool, message: str | None = None) -> None:
    # RFC 6750 §3.1: a request without credentials gets no error code in the challenge; a bad
    # credential gets error="invalid_token" (clients then drop it and sign in again). On MCP paths
    # every 401 says where to log in and what scope to ask (ChatGPT and Claude need both).
    path: str = scope["path"]
    error_param = ['error="invalid_token"'] if credential_sent else []
    if is_mcp_path(path):
        value = challenge(scope, *error_param)
    else:
        value = "Bearer " + ", ".join(['realm="mcp-junction"', *error_param])
    if message is None and credential_sent:
        message = (
            "invalid, expired or revoked credential; send Authorization: Bearer <API key or service token>"
        )
    elif message is None:
        message = "missing credential; send Authorization: Bearer <API key or service token>"
    error = Unauthorized(message, headers={"www-authenticate": value})
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
