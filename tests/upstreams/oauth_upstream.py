"""A real OAuth 2.1 authorization server in front of a protected MCP server, in one process: the
upstream the gateway is tested against as an OAuth *client* (MCP authorization, 2025-11-25/2026-07-28).

    python -m tests.upstreams.oauth_upstream --port PORT [--issuer-path /tenant1] [--resource-path /mcp]
        [--cimd on|off] [--dcr on|off] [--client-id ID --client-secret SECRET --redirect-uri URI ...]
        [--access-ttl SECONDS] [--refresh-ttl SECONDS] [--scopes "read write admin"]
        [--iss on|off|wrong] [--www-authenticate-metadata on|off] [--revocation on|off] [--ca-file PEM]

run from the repository root; it serves on 127.0.0.1:PORT until SIGTERM. All state is in memory.
The MCP URL is ``http://127.0.0.1:PORT`` + ``--resource-path`` (default ``/mcp``); the issuer is
``http://127.0.0.1:PORT`` + ``--issuer-path`` (default ``""``, no trailing slash) and the AS endpoints
below live under that prefix (``{I}``). Options:

- ``--cimd`` (on): client ID metadata documents. An http(s) ``client_id`` is fetched on ``/authorize``
  (5 s, no redirects, http allowed: tests run on 127.0.0.1; ``--ca-file`` adds a CA for https); the
  JSON must name itself as ``client_id``, list the ``redirect_uri`` in ``redirect_uris`` and be a public
  client. Every fetch is counted.
- ``--dcr`` (on): RFC 7591 registration at ``{I}/register``.
- ``--client-id``/``--client-secret``/``--redirect-uri`` (repeatable): one pre-registered confidential
  client (client_secret_basic or client_secret_post).
- ``--access-ttl`` (3600, a float, enforced exactly; ``expires_in`` is its ceiling), ``--refresh-ttl``
  (86400; every rotation starts a new one).
- ``--scopes`` ("read write admin"): ``scopes_supported``; a request without ``scope`` is granted
  ``read``, one with a scope not listed is refused (``invalid_scope``).
- ``--iss`` (on): RFC 9207 ``iss`` on every authorization redirect; ``wrong`` sends another issuer's
  value (clients must reject it); ``off`` sends none. Metadata advertises
  ``authorization_response_iss_parameter_supported`` unless off.
- ``--www-authenticate-metadata`` (on): ``resource_metadata="..."`` in the MCP endpoint's challenges;
  off, clients must find the PRM at the well-known URL.
- ``--revocation`` (on): RFC 7009 at ``{I}/revoke``.

Endpoints:

- ``/mcp`` (``--resource-path``): Streamable HTTP MCP server (SDK low-level ``Server``, stateful
  session manager, both protocol eras). Every request needs ``Authorization: Bearer`` with an access
  token of this AS that is unexpired, unrevoked and was issued for exactly this MCP URL (its
  ``resource``); else 401 with ``WWW-Authenticate: Bearer error="invalid_token",
  resource_metadata="<PRM URL>", scope="read"`` (no ``error`` when no token was sent). Sessions are
  bound, like the SDK's, to the token's (client_id, issuer, subject): they survive refreshes, and
  another user's token gets 404.
  Tools: ``whoami`` (JSON ``{"sub", "scope", "client_id"}`` of the token), ``echo`` (``text``) and
  ``admin_only`` ("admin ok"), ``careless`` (an error quoting the caller's access token). A ``tools/call`` of ``admin_only`` with a token lacking ``admin`` gets
  403 ``WWW-Authenticate: Bearer error="insufficient_scope", scope="read admin", resource_metadata=...,
  error_description="admin scope required"`` from the HTTP layer (step-up).
- ``GET /.well-known/oauth-protected-resource/mcp`` (path-inserted ``--resource-path``) and the root
  ``/.well-known/oauth-protected-resource``: RFC 9728 metadata (``resource``, ``authorization_servers``
  = [issuer], ``scopes_supported``, ``bearer_methods_supported``).
- ``GET /.well-known/oauth-authorization-server{I}`` and ``/.well-known/openid-configuration{I}``:
  RFC 8414 metadata, ``issuer`` exactly the issuer.
- ``GET {I}/authorize``: an unknown client or a redirect URI not registered exactly gets a 400 HTML
  page (never a redirect). Other problems are redirected as RFC 6749 errors: no ``response_type``
  or PKCE S256 ``code_challenge`` (``invalid_request``), another response type
  (``unsupported_response_type``), no or a malformed ``resource`` (``invalid_target``, RFC 8707), an
  unknown scope (``invalid_scope``). Otherwise a consent page without JavaScript: a
  ``<form method="post">`` with the request as hidden inputs, a text input ``username`` (value
  ``alice``; the token's ``sub`` is ``user-<username>``), the requested scope (``#scope``), and the
  buttons ``#approve`` / ``#deny`` (``name="decision"``).
- ``POST {I}/authorize``: approve redirects (302) to ``redirect_uri?code=...&state=...&iss=...``; deny to
  ``error=access_denied``. Codes are single use and live 60 s.
- ``POST {I}/token``: ``authorization_code`` (client authentication by client type, the same
  ``redirect_uri``, the PKCE ``code_verifier``, and ``resource`` equal to the authorized one; missing
  is ``invalid_target``) and ``refresh_token`` (rotation: each refresh issues a new refresh token and
  retires the old one; presenting a retired one is ``invalid_grant`` and revokes the whole grant, its
  current refresh token and every access token; ``scope`` may narrow, ``resource`` if sent must
  match). Answers ``access_token``, ``token_type`` Bearer, ``expires_in``, ``refresh_token``,
  ``scope``; errors are RFC 6749 JSON (``invalid_client`` 401). A reused code revokes its grant.
- ``POST {I}/register``: RFC 7591 (client ids ``uc_...``); ``redirect_uris`` required (absolute
  URIs, else ``invalid_redirect_uri``); ``client_secret`` issued unless
  ``token_endpoint_auth_method`` is ``none`` (the default is ``client_secret_basic``).
- ``POST {I}/revoke``: RFC 7009, either token type (a refresh token revokes its whole grant, an
  access token only itself); the client authenticates as at the token endpoint; 200 even for an
  unknown token or another client's (which stays valid).
- Test control, no authentication: ``GET /_test/stats`` (counters ``authorizations`` (codes issued),
  ``denials``, ``token_codes``, ``refreshes``, ``refresh_failures``, ``registrations``, ``cimd_fetches``,
  ``revocations``; ``clients`` (ids), ``active_refresh_tokens``, ``resources`` (every ``resource``
  seen on authorize and token requests)); ``POST /_test/revoke-refresh-tokens`` (every grant revoked,
  as if the user removed the app at the provider); ``POST /_test/expire-access-tokens``;
  ``POST /_test/refresh-delay?seconds=S`` (every later ``refresh_token`` grant waits S seconds before
  it is processed, to widen races).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import html
import json
import math
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit

import anyio
import httpx2
import uvicorn
from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc7591.errors import InvalidClientMetadataError, InvalidRedirectURIError
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken as SdkAccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_SCOPE = "read"
ADMIN_SCOPE = "admin"
ADMIN_TOOL = "admin_only"
CODE_TTL = 60.0
CIMD_TIMEOUT = 5.0
CIMD_MAX_BYTES = 64 * 1024
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url SHA-256, unpadded
USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
AUTHORIZE_PARAMS = (
    *("response_type", "client_id", "redirect_uri", "scope", "state"),
    *("code_challenge", "code_challenge_method", "resource", "prompt"),
)
AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
GRANT_TYPES = ("authorization_code", "refresh_token")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
NO_SECURITY = TransportSecuritySettings(enable_dns_rebinding_protection=False)
COUNTERS = (
    *("authorizations", "denials", "token_codes", "refreshes", "refresh_failures"),
    *("registrations", "cimd_fetches", "revocations"),
)


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    port: int
    issuer_path: str = ""
    resource_path: str = "/mcp"
    cimd: bool = True
    dcr: bool = True
    client_id: str | None = None
    client_secret: str | None = None
    redirect_uris: tuple[str, ...] = ()
    access_ttl: float = 3600.0
    refresh_ttl: float = 86400.0
    scopes: tuple[str, ...] = ("read", "write", "admin")
    iss: str = "on"
    www_authenticate_metadata: bool = True
    revocation: bool = True
    ca_file: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    @property
    def resource(self) -> str:
        """The MCP URL, which every access token must have been issued for."""
        return self.base_url + self.resource_path

    @property
    def prm_url(self) -> str:
        return self.base_url + "/.well-known/oauth-protected-resource" + self.resource_path


@dataclass(frozen=True)
class Client:
    client_id: str
    redirect_uris: tuple[str, ...]
    secret: str | None = None  # None: a public client (token_endpoint_auth_method "none")
    origin: str = "registered"  # "registered" (RFC 7591), "pre-registered" or "cimd"
    name: str = ""


@dataclass(frozen=True)
class Code:
    client_id: str
    redirect_uri: str
    scope: str
    resource: str
    challenge: str
    subject: str
    expires_at: float


@dataclass
class Grant:
    """One approval: the tokens its code started, through every refresh (a token family)."""

    client_id: str
    scope: str  # as approved; a refresh may narrow an access token's scope, never this
    resource: str
    subject: str
    revoked: bool = False


@dataclass
class AccessToken:
    grant: Grant
    scope: str
    expires_at: float  # time.monotonic()
    revoked: bool = False

    def valid(self) -> bool:
        return not (self.revoked or self.grant.revoked) and time.monotonic() < self.expires_at


@dataclass
class RefreshToken:
    grant: Grant
    expires_at: float  # time.monotonic()
    rotated: bool = False

    def valid(self) -> bool:
        return not (self.rotated or self.grant.revoked) and time.monotonic() < self.expires_at


@dataclass
class State:
    clients: dict[str, Client] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    used_codes: dict[str, Grant | None] = field(default_factory=dict)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    resources: dict[str, None] = field(default_factory=dict)  # an ordered set
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    refresh_delay: float = 0.0


# --- small helpers -------------------------------------------------------------------------------


def _single(values: Any) -> dict[str, str]:
    """Query or form parameters as a dict; RFC 6749 allows no parameter twice."""
    if len(set(values.keys())) != len(values.multi_items()):
        raise ValueError("a parameter is repeated")
    return {key: str(value) for key, value in values.items()}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"<!doctype html><html><head><title>{html.escape(title)}</title></head><body>{body}</body></html>"
    return HTMLResponse(doc, status_code=status, headers=NO_STORE)


def _oauth_error(exc: OAuth2Error) -> JSONResponse:
    status = exc.status_code or 400
    headers = dict(NO_STORE) | ({"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else {})
    body = {"error": exc.error} | ({"error_description": exc.description} if exc.description else {})
    return JSONResponse(body, status, headers=headers)


def _invalid_client(description: str) -> InvalidClientError:
    return InvalidClientError(description, status_code=401)


def _invalid_target(description: str) -> OAuth2Error:
    return OAuth2Error(description, error="invalid_target", status_code=400)  # RFC 8707


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _absolute_uri(value: str) -> bool:
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc) and not parts.fragment and "#" not in value


def _on(value: str) -> bool:
    return value == "on"


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the buffered body once, then the real channel (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _calls_tool(body: bytes, name: str) -> bool:
    """Whether a JSON-RPC message (or batch) calls tool `name`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    messages = parsed if isinstance(parsed, list) else [parsed]
    return any(
        isinstance(m, dict)
        and m.get("method") == "tools/call"
        and isinstance(m.get("params"), dict)
        and m["params"].get("name") == name
        for m in messages
    )


# --- the MCP server ------------------------------------------------------------------------------

TOOLS = [
    Tool(
        name="whoami",
        description="The access token's subject, scope and client (JSON)",
        input_schema={"type": "object", "properties": {}},
    ),
    Tool(
        name="echo",
        description="Echo the text back",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ),
    Tool(
        name=ADMIN_TOOL,
        description="Needs the admin scope; answers 'admin ok'",
        input_schema={"type": "object", "properties": {}},
    ),
    Tool(
        name="careless",
        description="Fails quoting the caller's access token, as careless servers do",
        input_schema={"type": "object", "properties": {}},
    ),
]


def _text(text: str, *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error)


def _token_of(ctx: ServerRequestContext[Any]) -> SdkAccessToken | None:
    user = ctx.request.scope.get("user") if isinstance(ctx.request, Request) else None
    return user.access_token if isinstance(user, AuthenticatedUser) else None


async def _list_tools(
    ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
) -> ListToolsResult:
    return ListToolsResult(tools=TOOLS)


async def _call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
    args = dict(params.arguments or {})
    if params.name == "whoami":
        token = _token_of(ctx)
        if token is None:
            return _text("no access token", is_error=True)
        who = {"sub": token.subject, "scope": " ".join(token.scopes), "client_id": token.client_id}
        return _text(json.dumps(who))
    if params.name == "echo":
        return _text(str(args.get("text", "")))
    if params.name == ADMIN_TOOL:
        return _text("admin ok")
    if params.name == "careless":
        token = _token_of(ctx)
        return _text(f"refused: the token {token.token if token else '-'} may not do that", is_error=True)
    return _text(f"unknown tool {params.name}", is_error=True)


def build_mcp_server() -> Server[Any]:
    return Server("test-oauth-upstream", version="1.0.0", on_list_tools=_list_tools, on_call_tool=_call_tool)


class Protected:
    """The resource server's guard around the MCP endpoint (pure ASGI).

    Checks the bearer token, hands the SDK an `AuthenticatedUser` (which binds sessions to the
    token's principal), and answers a ``tools/call`` of ``admin_only`` without the ``admin`` scope
    with 403 ``insufficient_scope``; the POST body it read is replayed to the inner app."""

    def __init__(self, app: ASGIApp, provider: Provider) -> None:
        self.app = app
        self.provider = provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self.provider.unauthorized(None)(scope, receive, send)
            return
        access = self.provider.access_token(token.strip())
        if access is None:
            await self.provider.unauthorized("invalid_token")(scope, receive, send)
            return
        scopes = access.scope.split()
        scope["user"] = AuthenticatedUser(
            SdkAccessToken(
                token=token.strip(),
                client_id=access.grant.client_id,
                scopes=scopes,
                resource=access.grant.resource,
                subject=access.grant.subject,
                claims={"iss": self.provider.options.issuer},
            )
        )
        scope["auth"] = AuthCredentials(scopes)
        if scope["method"] == "POST":
            body = await _read_body(receive)
            if ADMIN_SCOPE not in scopes and _calls_tool(body, ADMIN_TOOL):
                await self.provider.insufficient_scope()(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


# --- the authorization server --------------------------------------------------------------------


class Provider:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.state = State()
        if options.client_id is not None:
            self.state.clients[options.client_id] = Client(
                options.client_id, options.redirect_uris, options.client_secret, "pre-registered"
            )
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=options.ca_file) if options.ca_file else True
        )

    def app(self) -> Starlette:
        o, i = self.options, self.options.issuer_path
        manager = StreamableHTTPSessionManager(app=build_mcp_server(), security_settings=NO_SECURITY)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with manager.run():
                yield

        routes = [
            Route(o.resource_path, endpoint=Protected(StreamableHTTPASGIApp(manager), self)),
            Route("/.well-known/oauth-protected-resource" + o.resource_path, self.prm, methods=["GET"]),
            Route("/.well-known/oauth-protected-resource", self.prm, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server" + i, self.metadata, methods=["GET"]),
            Route("/.well-known/openid-configuration" + i, self.metadata, methods=["GET"]),
            Route(i + "/authorize", self.authorize, methods=["GET", "POST"]),
            Route(i + "/token", self.token, methods=["POST"]),
            Route("/_test/stats", self.stats, methods=["GET"]),
            Route("/_test/revoke-refresh-tokens", self.revoke_everything, methods=["POST"]),
            Route("/_test/expire-access-tokens", self.expire_access_tokens, methods=["POST"]),
            Route("/_test/refresh-delay", self.set_refresh_delay, methods=["POST"]),
        ]
        if o.dcr:
            routes.append(Route(i + "/register", self.register, methods=["POST"]))
        if o.revocation:
            routes.append(Route(i + "/revoke", self.revoke, methods=["POST"]))
        return Starlette(routes=routes, lifespan=lifespan)

    # --- discovery

    async def prm(self, request: Request) -> Response:
        return JSONResponse(
            {
                "resource": self.options.resource,
                "authorization_servers": [self.options.issuer],
                "scopes_supported": list(self.options.scopes),
                "bearer_methods_supported": ["header"],
                "resource_name": "OAuth test MCP server",
            }
        )

    async def metadata(self, request: Request) -> Response:
        o = self.options
        document: dict[str, Any] = {
            "issuer": o.issuer,
            "authorization_endpoint": o.issuer + "/authorize",
            "token_endpoint": o.issuer + "/token",
        }
        if o.dcr:
            document["registration_endpoint"] = o.issuer + "/register"
        if o.revocation:
            document["revocation_endpoint"] = o.issuer + "/revoke"
            document["revocation_endpoint_auth_methods_supported"] = list(AUTH_METHODS)
        return JSONResponse(
            document
            | {
                "response_types_supported": ["code"],
                "grant_types_supported": list(GRANT_TYPES),
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
                "scopes_supported": list(o.scopes),
                "client_id_metadata_document_supported": o.cimd,
                "authorization_response_iss_parameter_supported": o.iss != "off",
            }
        )

    # --- the resource server's answers

    def access_token(self, token: str) -> AccessToken | None:
        """The access token if it is valid for this MCP server now."""
        access = self.state.access_tokens.get(token)
        if access is None or not access.valid() or access.grant.resource != self.options.resource:
            return None
        return access

    def _metadata_param(self) -> list[str]:
        return (
            [f'resource_metadata="{self.options.prm_url}"'] if self.options.www_authenticate_metadata else []
        )

    def unauthorized(self, error: str | None) -> Response:
        params = (
            ([f'error="{error}"'] if error else []) + self._metadata_param() + [f'scope="{DEFAULT_SCOPE}"']
        )
        body = {"error": error or "unauthorized", "error_description": "a valid bearer token is required"}
        return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer " + ", ".join(params)})

    def insufficient_scope(self) -> Response:
        description = "admin scope required"
        params = ['error="insufficient_scope"', f'scope="{DEFAULT_SCOPE} {ADMIN_SCOPE}"']
        params += self._metadata_param() + [f'error_description="{description}"']
        body = {"error": "insufficient_scope", "error_description": description}
        return JSONResponse(body, 403, headers={"WWW-Authenticate": "Bearer " + ", ".join(params)})

    # --- clients

    async def _authorizing_client(self, client_id: str, refetch: bool) -> Client | str:
        """The client of an authorization request, or why there is none. A CIMD client's document
        is fetched anew when `refetch` (the GET), else the one the GET fetched is used."""
        client = self.state.clients.get(client_id)
        if client is not None and (client.origin != "cimd" or not refetch):
            return client
        if self.options.cimd and _is_url(client_id):
            return await self._fetch_client(client_id)
        return "Unknown client."

    async def _fetch_client(self, url: str) -> Client | str:
        self.state.counts["cimd_fetches"] += 1
        try:
            async with httpx2.AsyncClient(
                timeout=CIMD_TIMEOUT, verify=self.verify, trust_env=False, follow_redirects=False
            ) as http:
                response = await http.get(url, headers={"Accept": "application/json"})
        except httpx2.HTTPError as exc:
            return f"The client metadata document could not be fetched: {exc!r}"
        if response.status_code != 200:
            return f"The client metadata document answered HTTP {response.status_code}."
        if len(response.content) > CIMD_MAX_BYTES:
            return "The client metadata document is too large."
        try:
            document = response.json()
        except ValueError:
            return "The client metadata document is not JSON."
        if not isinstance(document, dict) or document.get("client_id") != url:
            return "The client metadata document does not name its own URL as client_id."
        uris = document.get("redirect_uris")
        if not (isinstance(uris, list) and uris and all(isinstance(u, str) for u in uris)):
            return "The client metadata document lists no redirect_uris."
        if document.get("token_endpoint_auth_method", "none") != "none":
            return "A client metadata document client must be public (token_endpoint_auth_method none)."
        client = Client(url, tuple(uris), None, "cimd", str(document.get("client_name", "")))
        self.state.clients[url] = client
        return client

    def _check_secret(self, client_id: str, secret: str) -> Client:
        client = self.state.clients.get(client_id)
        if client is None or client.secret is None:
            raise _invalid_client("unknown client, or not one with a secret")
        if not hmac.compare_digest(secret.encode(), client.secret.encode()):
            raise _invalid_client("client authentication failed")
        return client

    def _authenticate(self, request: Request, form: Mapping[str, str]) -> Client:
        """The client making a token or revocation request: client_secret_basic, client_secret_post,
        or a public client's bare ``client_id``."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            if "client_secret" in form:
                raise InvalidRequestError("more than one client authentication method")
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except ValueError as exc:
                raise _invalid_client("malformed Basic credentials") from exc
            raw_id, _, raw_secret = decoded.partition(":")  # each form-encoded (RFC 6749 2.3.1)
            client = self._check_secret(unquote_plus(raw_id), unquote_plus(raw_secret))
            if form.get("client_id", client.client_id) != client.client_id:
                raise InvalidRequestError("client_id differs from the authenticated client")
            return client
        if scheme:
            raise _invalid_client(f"unsupported client authentication scheme {scheme}")
        if "client_secret" in form:
            return self._check_secret(form.get("client_id", ""), form["client_secret"])
        public = self.state.clients.get(form.get("client_id", ""))
        if public is None:
            raise _invalid_client("unknown client")
        if public.secret is not None:
            raise _invalid_client("this client must authenticate with its secret")
        return public

    async def register(self, request: Request) -> Response:
        try:
            body = await request.json()
            client, answer = self._register(body)
        except ValueError:
            return _oauth_error(InvalidClientMetadataError("the body is not JSON"))
        except OAuth2Error as exc:
            return _oauth_error(exc)
        self.state.clients[client.client_id] = client
        self.state.counts["registrations"] += 1
        return JSONResponse(answer, 201, headers=NO_STORE)

    def _register(self, body: Any) -> tuple[Client, dict[str, Any]]:
        if not isinstance(body, dict):
            raise InvalidClientMetadataError("the body must be a JSON object")
        uris = body.get("redirect_uris")
        if not (
            isinstance(uris, list) and uris and all(isinstance(u, str) and _absolute_uri(u) for u in uris)
        ):
            raise InvalidRedirectURIError("redirect_uris must be a non-empty list of absolute URIs")
        method = body.get("token_endpoint_auth_method", "client_secret_basic")
        if method not in AUTH_METHODS:
            raise InvalidClientMetadataError(f"token_endpoint_auth_method must be one of {AUTH_METHODS}")
        grant_types = body.get("grant_types", ["authorization_code"])
        if not (isinstance(grant_types, list) and set(grant_types) <= set(GRANT_TYPES)):
            raise InvalidClientMetadataError(f"grant_types must be among {GRANT_TYPES}")
        client_id = "uc_" + secrets.token_urlsafe(16)
        secret = None if method == "none" else secrets.token_urlsafe(32)
        client = Client(client_id, tuple(uris), secret, "registered", str(body.get("client_name", "")))
        answer = {k: v for k, v in body.items() if k not in ("client_id", "client_secret")} | {
            "client_id": client_id,
            "client_id_issued_at": int(time.time()),
            "redirect_uris": uris,
            "token_endpoint_auth_method": method,
            "grant_types": grant_types,
            "response_types": ["code"],
        }
        if secret is not None:
            answer |= {"client_secret": secret, "client_secret_expires_at": 0}
        return client, answer

    # --- authorization

    async def authorize(self, request: Request) -> Response:
        try:
            params = _single(request.query_params if request.method == "GET" else await request.form())
        except ValueError as exc:
            return _page("Invalid request", f"<p>{html.escape(str(exc))}</p>", 400)
        client = await self._authorizing_client(params.get("client_id", ""), request.method == "GET")
        if isinstance(client, str):
            return _page("Invalid request", f"<p>{html.escape(client)}</p>", 400)
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return _page("Invalid request", "<p>The redirect URI is not registered for this client.</p>", 400)

        def back(**answer: str) -> Response:
            return self._redirect(redirect_uri, params, answer)

        problem = self._authorization_problem(params)
        if problem is not None:
            return back(error=problem[0], error_description=problem[1])
        self.state.resources[params["resource"]] = None
        scope = params.get("scope") or DEFAULT_SCOPE
        if request.method == "GET":
            return self._consent_page(client, params, scope)
        if params.get("decision") != "approve":
            self.state.counts["denials"] += 1
            return back(error="access_denied", error_description="the user denied access")
        username = params.get("username", "alice")
        if not USERNAME.fullmatch(username):
            return self._consent_page(client, params, scope, "A username is 1 to 64 of A-Z a-z 0-9 . _ -")
        code = secrets.token_urlsafe(32)
        self.state.codes[code] = Code(
            client.client_id,
            redirect_uri,
            scope,
            params["resource"],
            params["code_challenge"],
            "user-" + username,
            time.monotonic() + CODE_TTL,
        )
        self.state.counts["authorizations"] += 1
        return back(code=code)

    def _authorization_problem(self, params: Mapping[str, str]) -> tuple[str, str] | None:
        """The RFC 6749 error (and description) to redirect with, if any."""
        if "response_type" not in params:
            return "invalid_request", "response_type is required"
        if params["response_type"] != "code":
            return "unsupported_response_type", "only response_type=code"
        if params.get("code_challenge_method") != "S256" or not CHALLENGE.fullmatch(
            params.get("code_challenge", "")
        ):
            return "invalid_request", "PKCE with an S256 code_challenge is required"
        resource = params.get("resource")
        if resource is None:
            return "invalid_target", "the resource parameter (RFC 8707) is required"
        if not _absolute_uri(resource):
            return "invalid_target", "resource must be an absolute URI without a fragment"
        unknown = set(params.get("scope", "").split()) - set(self.options.scopes)
        if unknown:
            return "invalid_scope", "unknown scope: " + " ".join(sorted(unknown))
        return None

    def _redirect(self, redirect_uri: str, params: Mapping[str, str], answer: dict[str, str]) -> Response:
        state = {"state": params["state"]} if "state" in params else {}
        iss = {"on": self.options.issuer, "wrong": self.options.base_url + "/wrong-issuer"}.get(
            self.options.iss
        )
        issuer = {"iss": iss} if iss is not None else {}
        sep = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(
            redirect_uri + sep + urlencode(answer | state | issuer), 302, headers=NO_STORE
        )

    def _consent_page(
        self, client: Client, params: Mapping[str, str], scope: str, problem: str = ""
    ) -> Response:
        esc = html.escape
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{esc(params[name])}">'
            for name in AUTHORIZE_PARAMS
            if name in params
        )
        body = (
            (f'<p role="alert">{esc(problem)}</p>' if problem else "")
            + f"<h1>Authorize {esc(client.name or client.client_id)}</h1>"
            + f'<p>Client <code id="client">{esc(client.client_id)}</code> asks for'
            + f' <code id="scope">{esc(scope)}</code> on <code id="resource">{esc(params["resource"])}</code>'
            + f' and will get the answer at <code id="redirect-uri">{esc(params["redirect_uri"])}</code>.</p>'
            + f'<form method="post" action="{esc(self.options.issuer_path)}/authorize">'
            + hidden
            + '<label for="username">Username</label> <input type="text" id="username" name="username"'
            + f' value="{esc(params.get("username", "alice"))}">'
            + '<button type="submit" id="approve" name="decision" value="approve">Approve</button>'
            + '<button type="submit" id="deny" name="decision" value="deny">Deny</button></form>'
        )
        return _page("Authorize", body, 400 if problem else 200)

    # --- tokens

    async def token(self, request: Request) -> Response:
        try:
            form = _single(await request.form())
        except ValueError as exc:
            return _oauth_error(InvalidRequestError(str(exc)))
        if "resource" in form:
            self.state.resources[form["resource"]] = None
        grant_type = form.get("grant_type")
        try:
            if grant_type == "authorization_code":
                answer = self._exchange_code(request, form)
            elif grant_type == "refresh_token":
                answer = await self._refresh(request, form)
            else:
                raise UnsupportedGrantTypeError(f"grant_type must be one of {GRANT_TYPES}")
        except OAuth2Error as exc:
            return _oauth_error(exc)
        return JSONResponse(answer, headers=NO_STORE)

    def _exchange_code(self, request: Request, form: Mapping[str, str]) -> dict[str, Any]:
        client = self._authenticate(request, form)
        code = form.get("code", "")
        found = self.state.codes.pop(code, None)
        if found is None:
            used = self.state.used_codes.get(code)
            if used is not None:
                used.revoked = True  # a replayed code: whatever it bought is revoked
            raise InvalidGrantError("unknown, used or expired code")
        self.state.used_codes[code] = None
        if found.client_id != client.client_id:
            raise InvalidGrantError("the code was issued to another client")
        if found.expires_at <= time.monotonic():
            raise InvalidGrantError("the code has expired")
        if form.get("redirect_uri") != found.redirect_uri:
            raise InvalidGrantError("redirect_uri differs from the authorization request")
        verifier = form.get("code_verifier", "")
        if not VERIFIER.fullmatch(verifier) or not hmac.compare_digest(
            create_s256_code_challenge(verifier), found.challenge
        ):
            raise InvalidGrantError("PKCE verification failed")
        if "resource" not in form:
            raise _invalid_target("the resource parameter (RFC 8707) is required")
        if form["resource"] != found.resource:
            raise _invalid_target("resource differs from the authorization request")
        grant = Grant(client.client_id, found.scope, found.resource, found.subject)
        self.state.grants.append(grant)
        self.state.used_codes[code] = grant
        self.state.counts["token_codes"] += 1
        return self._issue(grant, found.scope)

    async def _refresh(self, request: Request, form: Mapping[str, str]) -> dict[str, Any]:
        if self.state.refresh_delay > 0:
            await anyio.sleep(self.state.refresh_delay)
        try:
            answer = self._rotate(request, form)
        except OAuth2Error:
            self.state.counts["refresh_failures"] += 1
            raise
        self.state.counts["refreshes"] += 1
        return answer

    def _rotate(self, request: Request, form: Mapping[str, str]) -> dict[str, Any]:
        client = self._authenticate(request, form)
        record = self.state.refresh_tokens.get(form.get("refresh_token", ""))
        if record is None or record.grant.client_id != client.client_id:
            raise InvalidGrantError("unknown refresh token")
        grant = record.grant
        if record.rotated:
            grant.revoked = True  # reuse of a retired token: the family may be stolen
            raise InvalidGrantError("the refresh token was already used; its grant is revoked")
        if grant.revoked:
            raise InvalidGrantError("the refresh token was revoked")
        if record.expires_at <= time.monotonic():
            raise InvalidGrantError("the refresh token has expired")
        if "resource" in form and form["resource"] != grant.resource:
            raise _invalid_target("resource differs from the one authorized")
        scope = grant.scope
        if "scope" in form:
            requested = form["scope"].split()
            if not requested or not set(requested) <= set(grant.scope.split()):
                raise InvalidScopeError("a refresh may only narrow the scope")
            scope = " ".join(requested)
        record.rotated = True
        return self._issue(grant, scope)

    def _issue(self, grant: Grant, scope: str) -> dict[str, Any]:
        now, o = time.monotonic(), self.options
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.state.access_tokens[access] = AccessToken(grant, scope, now + o.access_ttl)
        self.state.refresh_tokens[refresh] = RefreshToken(grant, now + o.refresh_ttl)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": math.ceil(o.access_ttl),
            "refresh_token": refresh,
            "scope": scope,
        }

    async def revoke(self, request: Request) -> Response:
        try:
            form = _single(await request.form())
            client = self._authenticate(request, form)
            if "token" not in form:
                raise InvalidRequestError("token is required")
        except ValueError as exc:
            return _oauth_error(InvalidRequestError(str(exc)))
        except OAuth2Error as exc:
            return _oauth_error(exc)
        access = self.state.access_tokens.get(form["token"])
        refresh = self.state.refresh_tokens.get(form["token"])
        if access is not None and access.grant.client_id == client.client_id:
            access.revoked = True
        elif refresh is not None and refresh.grant.client_id == client.client_id:
            refresh.grant.revoked = True
        self.state.counts["revocations"] += 1
        return Response(status_code=200, headers=NO_STORE)

    # --- test control

    async def stats(self, request: Request) -> Response:
        active = sum(1 for record in self.state.refresh_tokens.values() if record.valid())
        return JSONResponse(
            self.state.counts
            | {
                "clients": list(self.state.clients),
                "active_refresh_tokens": active,
                "resources": list(self.state.resources),
            }
        )

    async def revoke_everything(self, request: Request) -> Response:
        for grant in self.state.grants:
            grant.revoked = True
        return JSONResponse({"revoked_grants": len(self.state.grants)})

    async def expire_access_tokens(self, request: Request) -> Response:
        now = time.monotonic()
        for access in self.state.access_tokens.values():
            access.expires_at = min(access.expires_at, now)
        return JSONResponse({"expired": len(self.state.access_tokens)})

    async def set_refresh_delay(self, request: Request) -> Response:
        try:
            seconds = float(request.query_params.get("seconds", ""))
        except ValueError:
            return JSONResponse({"error": "seconds must be a number"}, 400)
        if not 0 <= seconds <= 600:
            return JSONResponse({"error": "seconds must be between 0 and 600"}, 400)
        self.state.refresh_delay = seconds
        return JSONResponse({"refresh_delay": seconds})


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstreams.oauth_upstream",
        description="Run an OAuth 2.1 authorization server in front of a protected MCP server.",
    )
    on_off = ("on", "off")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--issuer-path", default="", help="e.g. /tenant1 (default: none)")
    parser.add_argument("--resource-path", default="/mcp")
    parser.add_argument("--cimd", choices=on_off, default="on", help="client ID metadata documents")
    parser.add_argument("--dcr", choices=on_off, default="on", help="RFC 7591 dynamic registration")
    parser.add_argument("--client-id", default=None, help="a pre-registered confidential client")
    parser.add_argument("--client-secret", default=None)
    parser.add_argument("--redirect-uri", action="append", default=[], help="repeat for several")
    parser.add_argument("--access-ttl", type=float, default=3600.0, help="seconds (float)")
    parser.add_argument("--refresh-ttl", type=float, default=86400.0, help="seconds (float)")
    parser.add_argument("--scopes", default="read write admin", help="scopes_supported, space-separated")
    parser.add_argument("--iss", choices=("on", "off", "wrong"), default="on", help="RFC 9207 iss")
    parser.add_argument("--www-authenticate-metadata", choices=on_off, default="on")
    parser.add_argument("--revocation", choices=on_off, default="on", help="RFC 7009 revocation")
    parser.add_argument("--ca-file", default=None, help="a CA bundle trusted for https CIMD fetches")
    args = parser.parse_args(argv)
    for name in ("issuer_path", "resource_path"):
        path = getattr(args, name)
        if path and (not path.startswith("/") or path.endswith("/")):
            parser.error(f"--{name.replace('_', '-')} must start with / and not end with /")
    if not args.resource_path:
        parser.error("--resource-path must not be empty")
    if (args.client_id is None) != (args.client_secret is None):
        parser.error("--client-id and --client-secret go together")
    return Options(
        port=args.port,
        issuer_path=args.issuer_path,
        resource_path=args.resource_path,
        cimd=_on(args.cimd),
        dcr=_on(args.dcr),
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=tuple(args.redirect_uri),
        access_ttl=args.access_ttl,
        refresh_ttl=args.refresh_ttl,
        scopes=tuple(args.scopes.split()),
        iss=args.iss,
        www_authenticate_metadata=_on(args.www_authenticate_metadata),
        revocation=_on(args.revocation),
        ca_file=args.ca_file,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(argv)
    config = uvicorn.Config(
        Provider(options).app(),
        host="127.0.0.1",
        port=options.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,  # open SSE/GET streams must not hold up a test's stop()
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
