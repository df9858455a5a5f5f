"""The authorization server's HTTP endpoints: plain async functions, routed in `proxy/app.py`.

Until a client and its redirect URI are known to be genuine, every problem is an error page and
never a redirect (no open redirector); after that, errors go back to the client as RFC 6749 says,
with `state` and `iss` (RFC 9207).
"""

from __future__ import annotations

import base64
import functools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from proxy.api._http import gateway, iso, json_response, principal, read_body, read_json_object
from proxy.auth.constraints import compile_policy
from proxy.auth.middleware import SCOPES
from proxy.auth.policy import ANY, LIST, Principal, allows
from proxy.errors import JunctionError, OAuthError
from proxy.oauth_server import AuthorizationServer
from proxy.oauth_server.clients import AuthMethod, Client
from proxy.oauth_server.flow import CSRF_COOKIE, FLOW_SECONDS, Flow, Login, seal, unseal
from proxy.oauth_server.grants import login_of, normalize_scope
from proxy.oauth_server.metadata import authorization_server, protected_resource, resource_namespace
from proxy.store import OAuthGrantRecord
from proxy.web.pages import page

MAX_FORM: Final = 64 * 1024
SCOPE_TEXT: Final = {
    "read": "See the tools, resources and prompts of your connections",
    "execute": "Call those tools and read those resources on your behalf",
}
OIDC_CALLBACK: Final = "/oauth/oidc/callback"
_NO_STORE: Final = {"cache-control": "no-store", "pragma": "no-cache"}


def _server(request: Request) -> AuthorizationServer:
    return gateway(request).oauth


# --- discovery -------------------------------------------------------------------------------
async def protected_resource_metadata(request: Request) -> Response:
    path = "/" + request.path_params.get("resource", "").lstrip("/")
    return json_response(protected_resource(gateway(request).settings, path))


async def authorization_server_metadata(request: Request) -> Response:
    return json_response(authorization_server(gateway(request).settings))


# --- /authorize ------------------------------------------------------------------------------
async def authorize(request: Request) -> Response:
    """Check the request, then show the sign-in page."""
    server = _server(request)
    params = request.query_params
    for name in params:
        if len(params.getlist(name)) > 1:
            return _error_page(f"the parameter {name!r} was sent more than once")
    try:
        client = await server.clients.get(params.get("client_id"))
        redirect_uri = client.check_redirect(params.get("redirect_uri"))
    except OAuthError as exc:
        return _error_page(exc.message)
    state = params.get("state")
    try:
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", 'response_type must be "code"')
        challenge = params.get("code_challenge")
        if params.get("code_challenge_method") != "S256" or not challenge or not 43 <= len(challenge) <= 128:
            raise OAuthError(
                "invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256"
            )
        resource = params.get("resource")
        namespace = resource_namespace(server.settings, resource)
        assert resource is not None
    except OAuthError as exc:
        if client.source != "configured":
            # Anyone may register a client, with any redirect URI: redirecting before the person
            # did anything would make the gateway an open redirector (RFC 9700 §4.11.2).
            return _error_page(exc.message)
        return _redirect(
            server, redirect_uri, {"error": exc.error, "error_description": exc.message, "state": state}
        )
    flow = Flow(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=challenge,
        resource=resource,
        namespace=namespace,
        scope=normalize_scope(params.get("scope")),
    )
    cookie = request.cookies.get(_cookie(server))
    if cookie and 20 <= len(cookie) <= 64:  # one cookie for every sign-in of this browser (tabs)
        flow = replace(flow, csrf=cookie)
    return _login_page(server, client, flow)


def _page(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A browser page's endpoint: a refused request is an error page, never JSON or a redirect."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except OAuthError as exc:
            return _error_page(exc.message, 403 if exc.error == "access_denied" else 400)

    return answer


async def _resume(request: Request, blob: str | None) -> tuple[AuthorizationServer, Flow, Client]:
    """The sign-in a page belongs to: its sealed flow, checked against this browser's cookie."""
    server = _server(request)
    flow = unseal(server.vault, blob, request.cookies.get(_cookie(server)))
    return server, flow, await server.clients.get(flow.client_id)


@_page
async def login(request: Request) -> Response:
    """The `key` method: an API key or service token pasted into the sign-in page."""
    form = await _form(request)
    server, flow, client = await _resume(request, form.get("flow"))
    if "key" not in server.settings.oauth_login:
        raise OAuthError("invalid_request", "signing in with a key is turned off on this gateway")
    credential = (form.get("credential") or "").strip()
    caller = await server.authentication.authenticate(credential) if credential else None
    if caller is None or caller.kind == "oauth":
        return _login_page(server, client, flow, "That is not a valid API key or service token.", status=401)
    return await _consent_page(request, server, client, flow.logged_in(login_of(caller)))


@_page
async def login_oidc(request: Request) -> Response:
    """The `oidc` method: off to the configured provider, with the flow sealed into `state`."""
    server, flow, _ = await _resume(request, (await _form(request)).get("flow"))
    if server.oidc is None:
        raise OAuthError("invalid_request", "single sign-on is not configured on this gateway")
    nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    # The provider hands `state` back: the flow rides in it, with its nonce and our verifier.
    state = seal(server.vault, replace(flow, nonce=nonce, verifier=verifier))
    callback = server.settings.effective_public_url + OIDC_CALLBACK
    url = await server.oidc.authorization_url(callback, state, nonce, verifier)
    return RedirectResponse(url, status_code=303, headers={"cache-control": "no-store"})


@_page
async def oidc_callback(request: Request) -> Response:
    params = request.query_params
    server, flow, client = await _resume(request, params.get("state"))
    if params.get("error") or not params.get("code"):
        return _redirect(server, flow.redirect_uri, {"error": "access_denied", "state": flow.state})
    if server.oidc is None or not flow.nonce or not flow.verifier:
        raise OAuthError("invalid_request", "this sign-in did not start with single sign-on")
    callback = server.settings.effective_public_url + OIDC_CALLBACK
    who = await server.oidc.finish(params["code"], callback, flow.nonce, flow.verifier)
    return await _consent_page(request, server, client, flow.logged_in(who))


@_page
async def consent(request: Request) -> Response:
    form = await _form(request)
    server, flow, client = await _resume(request, form.get("flow"))
    if flow.login is None:
        raise OAuthError("invalid_request", "sign in first")
    if form.get("decision") != "approve":
        return _redirect(
            server, flow.redirect_uri, {"error": "access_denied", "state": flow.state}, status=303
        )
    choices = await _namespaces(request, flow.login, flow.namespace)
    namespace = form.get("namespace")
    if namespace not in choices:
        raise OAuthError("invalid_request", "choose one of the namespaces this sign-in may use")
    code = await server.grants.approve(flow, client, namespace)
    return _redirect(server, flow.redirect_uri, {"code": code, "state": flow.state}, status=303)


# --- /token, /revoke, /register --------------------------------------------------------------
def _protocol(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint clients call (token, revocation, registration): every error in RFC 6749's
    shape, and a failed client authentication with the challenge RFC 6749 §5.2 asks for."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except OAuthError as exc:
            if exc.error == "invalid_client" and exc.status == 401:
                exc.headers.setdefault("www-authenticate", 'Basic realm="mcp-junction"')
            raise
        except JunctionError as exc:  # a body too large, a token that would be too large, ...
            raise OAuthError("invalid_request", exc.message, status=exc.status) from exc

    return answer


def _cookie(server: AuthorizationServer) -> str:
    """The sign-in cookie's name: `__Host-` over https, so no sibling subdomain can set it."""
    https = server.settings.effective_public_url.startswith("https://")
    return ("__Host-" if https else "") + CSRF_COOKIE


@_protocol
async def token(request: Request) -> Response:
    server = _server(request)
    form = await _form(request)
    client = await _client(request, server, form)
    grant_type = form.get("grant_type")
    resource = form.get("resource")
    if grant_type == "authorization_code":
        tokens = await server.grants.exchange_code(
            client, form.get("code") or "", form.get("redirect_uri"), form.get("code_verifier"), resource
        )
    elif grant_type == "refresh_token":
        tokens = await server.grants.refresh(
            client, form.get("refresh_token") or "", form.get("scope"), resource
        )
    else:
        raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
    return json_response(tokens.json(), headers=_NO_STORE)


@_protocol
async def revoke(request: Request) -> Response:
    """RFC 7009: always 200 for a known client, whether or not the token meant anything."""
    server = _server(request)
    form = await _form(request)
    client = await _client(request, server, form)
    value = form.get("token")
    if not value:
        raise OAuthError("invalid_request", "token is required")
    await server.grants.revoke_token(client, value)
    return json_response({}, headers=_NO_STORE)


@_protocol
async def register(request: Request) -> Response:
    body = await read_json_object(request, empty_ok=False)
    answer = await _server(request).clients.register(body)
    return json_response(answer, 201, headers=_NO_STORE)


# --- the grants people gave (REST, authenticated) --------------------------------------------
def grant_json(record: OAuthGrantRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "clientId": record.client_id,
        "clientName": record.client_name,
        "redirectUri": record.redirect_uri,
        "resource": record.resource,
        "namespace": record.namespace,
        "scope": record.scope,
        "subject": record.login.get("subject"),
        "createdAt": iso(record.created_at),
        "expiresAt": iso(record.expires_at),
    }


async def list_grants(request: Request) -> Response:
    records = await _server(request).grants.list(principal(request))
    return json_response({"grants": [grant_json(r) for r in records]})


async def revoke_grant(request: Request) -> Response:
    await _server(request).grants.revoke(principal(request), request.path_params["grant_id"])
    return Response(status_code=204)


# --- helpers ---------------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form, bounded; a repeated field is refused (RFC 6749 §3.1)."""
    body = await read_body(request, MAX_FORM)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError(
            "invalid_request", "the body must be an application/x-www-form-urlencoded form"
        ) from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise OAuthError("invalid_request", f"the parameter {name!r} was sent more than once")
        fields[name] = value
    return fields


async def _client(request: Request, server: AuthorizationServer, form: dict[str, str]) -> Client:
    """The client calling the token or revocation endpoint, authenticated as it registered."""
    method: AuthMethod = "none"
    client_id = form.get("client_id")
    secret = form.get("client_secret")
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            basic_id, _, basic_secret = decoded.partition(":")
        except ValueError as exc:
            raise OAuthError("invalid_client", "malformed Basic credentials", status=401) from exc
        if (client_id and client_id != unquote(basic_id)) or secret:
            raise OAuthError("invalid_request", "send client credentials one way only")
        client_id, secret, method = unquote(basic_id), unquote(basic_secret), "client_secret_basic"
    elif secret:
        method = "client_secret_post"
    client = await server.clients.get(client_id)
    server.clients.authenticate(client, secret, method)
    return client


def _login_page(
    server: AuthorizationServer, client: Client, flow: Flow, error: str | None = None, status: int = 200
) -> Response:
    methods = server.settings.oauth_login
    secure = server.settings.effective_public_url.startswith("https://")
    response = page(
        "login.html",
        status,
        client_name=client.name,
        resource=flow.resource,
        flow=seal(server.vault, flow),
        error=error,
        key_login="key" in methods,
        oidc_login="oidc" in methods,
        oidc_name=server.settings.oidc_name,
        login_action=server.settings.effective_public_url + "/authorize/login",
        oidc_action=server.settings.effective_public_url + "/authorize/oidc",
    )
    response.set_cookie(
        _cookie(server),
        flow.csrf,
        max_age=FLOW_SECONDS,
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",
    )
    return response


async def _consent_page(
    request: Request, server: AuthorizationServer, client: Client, flow: Flow
) -> Response:
    assert flow.login is not None
    choices = await _namespaces(request, flow.login, flow.namespace)
    if not choices:
        where = f"namespace {flow.namespace!r}" if flow.namespace else "any namespace"
        return _error_page(f"{flow.login.subject} may not use {where} of this gateway", status=403)
    return page(
        "consent.html",
        client_name=client.name,
        client_id=client.client_id,
        redirect_uri=flow.redirect_uri,
        subject=flow.login.subject,
        namespaces=choices,
        scopes=[SCOPE_TEXT[s] for s in flow.scope.split() if s in SCOPES],
        flow=seal(server.vault, flow),
        consent_action=server.settings.effective_public_url + "/authorize/consent",
    )


async def _namespaces(request: Request, who: Login, named: str | None) -> list[str]:
    """The namespaces this sign-in may give a client: the one its resource names, or every one
    it may list tools in (for `/mcp`, where the person picks)."""
    caller = _principal_of(who)
    directory = gateway(request).directory
    if named is not None:
        try:
            await directory.namespace(named)
        except JunctionError:
            return []
        return [named] if allows(caller, LIST, "connections", named, ANY, ANY) else []
    records, _ = await gateway(request).store.list_namespaces(0, 500, caller.namespace_bound())
    return [r.name for r in records if allows(caller, LIST, "connections", r.name, ANY, ANY)]


def _principal_of(who: Login) -> Principal:
    if not who.claims:
        return Principal(kind="api_key", id=who.key_id, name=who.subject, key_id=who.key_id)
    return Principal(
        kind="service_token",
        id=who.token_ids[-1] if who.token_ids else "login",
        name=who.subject,
        key_id=who.key_id,
        policies=tuple(compile_policy(level) for level in who.claims),
        expires_at=who.expires_at,
    )


def _error_page(message: str, status: int = 400) -> Response:
    return page("error.html", status, message=message)


def _with_query(url: str, params: dict[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{url}{'&' if '?' in url else '?'}{query}"


def _redirect(
    server: AuthorizationServer, redirect_uri: str, params: dict[str, str | None], status: int = 302
) -> Response:
    """Back to the client (its redirect URI was checked), with `iss` (RFC 9207)."""
    url = _with_query(redirect_uri, {**params, "iss": server.settings.effective_public_url})
    return RedirectResponse(url, status_code=status, headers={"cache-control": "no-store"})
