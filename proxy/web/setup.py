"""The hosted setup pages a connection's `setupUrl` leads to, and the upstream OAuth callback.

`GET /setup/{ns}/{id}?t=...` (a link only the gateway can make, see `UpstreamAuth.setup_url`):
for an `auth_required` connection, a page naming the server, its sign-in and what is asked,
whose button leads to the upstream's authorization server (never an automatic redirect: a link
sent by someone else must not silently sign the reader in for them); for an `input_required`
one, a form for exactly the missing settings. No JavaScript; a double-submit cookie guards each
POST, and the authorization is bound to the browser that began it (a cookie the callback checks).
`GET /oauth/callback` finishes it. Both end on a result page, or at the app's `returnUrl` when
the connection was created with one.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from proxy.directory import parse_connection_input
from proxy.errors import JunctionError, NotFound
from proxy.state import Gateway
from proxy.store import ConnectionRecord
from proxy.upstream_auth import SetupFailed
from proxy.upstream_auth import flow as upstream_flow
from proxy.upstream_auth.config import ConfigField
from proxy.upstream_auth.service import CALLBACK_PATH, CLIENT_METADATA_PATH
from proxy.web.pages import SECURITY_HEADERS, page

log = logging.getLogger("junction.setup")
CSRF_COOKIE = "junction_setup"
BROWSER_COOKIE = "junction_authorize"
__all__ = ["CALLBACK_PATH", "CLIENT_METADATA_PATH", "callback", "client_metadata", "setup"]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _failed(message: str, status: int = 400) -> Response:
    return page("error.html", status, message=message)


def _https(request: Request) -> bool:
    return _gateway(request).settings.effective_public_url.startswith("https://")


def _cookie_name(request: Request, name: str = CSRF_COOKIE) -> str:
    return ("__Host-" if _https(request) else "") + name


def _csrf_ok(request: Request, form: Any) -> bool:
    cookie = request.cookies.get(_cookie_name(request), "")
    sent = form.get("csrf")
    return bool(cookie) and isinstance(sent, str) and hmac.compare_digest(cookie.encode(), sent.encode())


def _with_cookie(
    request: Request,
    response: Response,
    name: str,
    value: str,
    max_age: int,
    samesite: Literal["lax", "strict"],
) -> Response:
    response.set_cookie(
        _cookie_name(request, name),
        value,
        max_age=max_age,
        httponly=True,
        secure=_https(request),
        samesite=samesite,
        path="/",
    )
    return response


def _with_csrf(request: Request, response: Response, csrf: str) -> Response:
    return _with_cookie(request, response, CSRF_COOKIE, csrf, 3600, "strict")


def _action(request: Request) -> str:
    """This page's URL built from the public URL (never from the request's Host)."""
    return f"{_gateway(request).settings.effective_public_url}{request.url.path}?{request.url.query}"


async def setup(request: Request) -> Response:
    """The page behind a connection's `setupUrl`."""
    namespace = request.path_params["namespace"]
    connection_id = request.path_params["connection"]
    gateway = _gateway(request)
    try:
        record = await gateway.directory.connection(namespace, connection_id)
        gateway.directory.setup_link_ok(record, request.query_params.get("t", ""))
    except (SetupFailed, NotFound) as exc:
        message = str(exc) if isinstance(exc, SetupFailed) else "This connection no longer exists."
        return _failed(message, 404)
    state = record.status.get("state")
    if state == "auth_required":
        if request.method == "POST":
            return await _authorize(request, gateway, record)
        return await _confirm(request, gateway, record)
    if state == "input_required":
        if request.method == "POST":
            return await _submit(request, gateway, record)
        return _form(request, gateway, record)
    return _done(record)


async def _confirm(request: Request, gateway: Gateway, record: ConnectionRecord) -> Response:
    """What the user is about to sign in to, and a button to go on."""
    try:
        server = await upstream_flow.pending(gateway.upstream_auth, (record.namespace, record.connection_id))
    except SetupFailed as exc:
        return _failed(str(exc))
    csrf = request.cookies.get(_cookie_name(request)) or secrets.token_urlsafe(24)
    response = page(
        "setup_authorize.html",
        name=record.name,
        namespace=record.namespace,
        connection_id=record.connection_id,
        upstream_host=urlsplit(record.mcp_url).netloc,
        server_url=urlunsplit(urlsplit(record.mcp_url)._replace(query="", fragment="")),
        issuer=server.issuer,
        scope=server.scope,
        csrf=csrf,
        action=_action(request),
    )
    return _with_csrf(request, response, csrf)


async def _authorize(request: Request, gateway: Gateway, record: ConnectionRecord) -> Response:
    """The user chose to go on: to the upstream's authorization server, this browser marked."""
    if not _csrf_ok(request, await request.form()):
        return _failed("This page expired or was not sent from this gateway; open the setup link again.", 403)
    browser = secrets.token_urlsafe(24)
    try:
        url = await upstream_flow.start(
            gateway.upstream_auth, (record.namespace, record.connection_id), browser
        )
    except SetupFailed as exc:
        return _failed(str(exc))
    response = RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)
    # Lax: the authorization server sends the browser back with a top-level GET.
    return _with_cookie(request, response, BROWSER_COOKIE, browser, 600, "lax")


def _missing_fields(gateway: Gateway, record: ConnectionRecord) -> list[ConfigField]:
    """The fields the form asks for: the missing ones only (what is set stays as it is)."""
    missing = record.status.get("missing", {})
    wanted = {("header", k.lower()) for k in missing.get("headers", [])} | {
        ("query", k) for k in missing.get("query", [])
    }
    return [
        f
        for f in gateway.directory.config_fields(record)
        if (f.place, f.key.lower() if f.place == "header" else f.key) in wanted
    ]


def _form(
    request: Request, gateway: Gateway, record: ConnectionRecord, error: str | None = None, status: int = 200
) -> Response:
    csrf = request.cookies.get(_cookie_name(request)) or secrets.token_urlsafe(24)
    response = page(
        "setup_form.html",
        status,
        name=record.name,
        server_url=urlunsplit(urlsplit(record.mcp_url)._replace(query="", fragment="")),
        fields=_missing_fields(gateway, record),
        csrf=csrf,
        action=_action(request),
        error=error,
    )
    return _with_csrf(request, response, csrf)


async def _submit(request: Request, gateway: Gateway, record: ConnectionRecord) -> Response:
    form = await request.form()
    if not _csrf_ok(request, form):
        return _failed("This form expired or was not sent from this page; open the setup link again.", 403)
    headers: dict[str, str | None] = {}
    query = dict(parse_qsl(urlsplit(record.mcp_url).query, keep_blank_values=True))
    for field in _missing_fields(gateway, record):
        value = form.get(field.name)
        if not isinstance(value, str) or not value.strip():
            continue
        value = value.strip()
        if field.choices and value not in field.choices:
            return _form(request, gateway, record, f"{field.label}: choose one of the listed values.", 400)
        if field.place == "header":
            headers[field.key] = value
        else:
            query[field.key] = value
    url = urlunsplit(urlsplit(record.mcp_url)._replace(query=urlencode(query)))
    try:
        # The same checks as the REST API (printable ASCII header values, sizes, names).
        data = parse_connection_input({"mcpUrl": url, **({"headers": headers} if headers else {})})
        updated, _ = await gateway.directory.upsert_connection(record.namespace, record.connection_id, data)
    except JunctionError as exc:
        return _form(request, gateway, record, exc.message, exc.status)
    if updated.status.get("state") == "input_required":
        return _form(request, gateway, updated, "Some required settings are still missing.", 400)
    return _finished(updated)


def _done(record: ConnectionRecord) -> Response:
    state = record.status.get("state", "connected")
    titles = {
        "connected": "Connected",
        "auth_required": "Authorization needed",
        "input_required": "Settings needed",
    }
    return page(
        "setup_done.html",
        title=titles.get(state, "Could not connect"),
        namespace=record.namespace,
        connection_id=record.connection_id,
        state=state,
        message=record.status.get("message"),
    )


def _finished(record: ConnectionRecord) -> Response:
    """After setup: back to the app when it said where, else the result page."""
    return_url = (record.setup or {}).get("returnUrl")
    if return_url:
        parts = urlsplit(return_url)
        extra = urlencode(
            {
                "connectionId": record.connection_id,
                "namespace": record.namespace,
                "state": record.status.get("state", "connected"),
            }
        )
        query = f"{parts.query}&{extra}" if parts.query else extra
        return RedirectResponse(
            urlunsplit(parts._replace(query=query)), status_code=303, headers=SECURITY_HEADERS
        )
    return _done(record)


async def callback(request: Request) -> Response:
    """Where the upstream's authorization server sends the user back."""
    gateway = _gateway(request)
    params: dict[str, Any] = dict(request.query_params)
    browser = request.cookies.get(_cookie_name(request, BROWSER_COOKIE))
    try:
        namespace, connection_id = await upstream_flow.finish(gateway.upstream_auth, params, browser)
    except SetupFailed as exc:
        return _failed(str(exc))
    try:
        record = await gateway.directory.authorized(namespace, connection_id)
    except NotFound:
        return _failed("This connection was deleted meanwhile.", 404)
    response = _finished(record)
    response.delete_cookie(_cookie_name(request, BROWSER_COOKIE), path="/", secure=_https(request))
    return response


async def client_metadata(request: Request) -> Response:
    """Our OAuth client ID metadata document, for authorization servers that support CIMD."""
    return JSONResponse(
        _gateway(request).upstream_auth.client_metadata(),
        headers={"cache-control": "public, max-age=3600"},
    )
