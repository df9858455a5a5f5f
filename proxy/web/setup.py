"""The hosted setup pages a connection's `setupUrl` leads to, and the upstream OAuth callback.

`GET /setup/{ns}/{id}?t=...` (a link only the gateway can make, see `UpstreamAuth.setup_url`):
for an `auth_required` connection, a redirect to the upstream's authorization server; for an
`input_required` one, a form for exactly the missing settings (no JavaScript; a double-submit
cookie guards the POST). `GET /oauth/callback` finishes the authorization. Both end on a result
page, or at the app's `returnUrl` when the connection was created with one.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from proxy.directory import ConnectionInput
from proxy.errors import JunctionError, NotFound
from proxy.state import Gateway
from proxy.store import ConnectionRecord
from proxy.upstream_auth import SetupFailed
from proxy.upstream_auth.config import ConfigField
from proxy.upstream_auth.service import CALLBACK_PATH, CLIENT_METADATA_PATH
from proxy.web.pages import SECURITY_HEADERS, page

log = logging.getLogger("junction.setup")
CSRF_COOKIE = "junction_setup"
MAX_VALUE = 8192
__all__ = ["CALLBACK_PATH", "CLIENT_METADATA_PATH", "callback", "client_metadata", "setup"]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _failed(message: str, status: int = 400) -> Response:
    return page("error.html", status, message=message)


def _cookie_name(request: Request) -> str:
    https = _gateway(request).settings.effective_public_url.startswith("https://")
    return ("__Host-" if https else "") + CSRF_COOKIE


async def setup(request: Request) -> Response:
    """The page behind a connection's `setupUrl`."""
    namespace = request.path_params["namespace"]
    connection_id = request.path_params["connection"]
    gateway = _gateway(request)
    try:
        gateway.directory.setup_link_ok(namespace, connection_id, request.query_params.get("t", ""))
        record = await gateway.directory.connection(namespace, connection_id)
    except SetupFailed as exc:
        return _failed(str(exc), 404)
    except NotFound:
        return _failed("This connection no longer exists.", 404)
    state = record.status.get("state")
    if state == "auth_required":
        try:
            url = await gateway.upstream_auth.start((namespace, connection_id))
        except SetupFailed as exc:
            return _failed(str(exc))
        return RedirectResponse(url, status_code=302, headers=SECURITY_HEADERS)
    if state == "input_required":
        if request.method == "POST":
            return await _submit(request, gateway, record)
        return _form(request, gateway, record)
    return _done(record)


def _form(
    request: Request, gateway: Gateway, record: ConnectionRecord, error: str | None = None, status: int = 200
) -> Response:
    missing = record.status.get("missing", {})
    wanted = {("header", k.lower()) for k in missing.get("headers", [])} | {
        ("query", k) for k in missing.get("query", [])
    }
    fields = [
        f
        for f in gateway.directory.config_fields(record)
        if (f.place, f.key.lower() if f.place == "header" else f.key) in wanted
    ]
    csrf = request.cookies.get(_cookie_name(request)) or secrets.token_urlsafe(24)
    response = page(
        "setup_form.html",
        status,
        name=record.name,
        server_url=urlunsplit(urlsplit(record.mcp_url)._replace(query="", fragment="")),
        fields=fields,
        csrf=csrf,
        action=f"{gateway.settings.effective_public_url}{request.url.path}?{request.url.query}",
        error=error,
    )
    https = gateway.settings.effective_public_url.startswith("https://")
    response.set_cookie(
        _cookie_name(request), csrf, max_age=3600, httponly=True, secure=https, samesite="strict", path="/"
    )
    return response


async def _submit(request: Request, gateway: Gateway, record: ConnectionRecord) -> Response:
    form = await request.form()
    cookie = request.cookies.get(_cookie_name(request), "")
    sent = form.get("csrf")
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return _failed("This form expired or was not sent from this page; open the setup link again.", 403)
    headers: dict[str, str | None] = {}
    query = dict(parse_qsl(urlsplit(record.mcp_url).query, keep_blank_values=True))
    fields: list[ConfigField] = list(gateway.directory.config_fields(record))
    for field in fields:
        value = form.get(field.name)
        if not isinstance(value, str) or not value.strip():
            continue
        value = value.strip()
        if len(value) > MAX_VALUE or any(c < " " and c != "\t" or c == "\x7f" for c in value):
            return _form(
                request,
                gateway,
                record,
                f"{field.label}: the value is too long or has control characters.",
                400,
            )
        if field.choices and value not in field.choices:
            return _form(request, gateway, record, f"{field.label}: choose one of the listed values.", 400)
        if field.place == "header":
            headers[field.key] = value
        else:
            query[field.key] = value
    url = urlunsplit(urlsplit(record.mcp_url)._replace(query=urlencode(query)))
    try:
        updated, _ = await gateway.directory.upsert_connection(
            record.namespace,
            record.connection_id,
            ConnectionInput(mcp_url=url, headers=headers or None),
        )
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
    try:
        namespace, connection_id = await gateway.upstream_auth.finish(params)
    except SetupFailed as exc:
        return _failed(str(exc))
    try:
        record = await gateway.directory.authorized(namespace, connection_id)
    except NotFound:
        return _failed("This connection was deleted meanwhile.", 404)
    return _finished(record)


async def client_metadata(request: Request) -> Response:
    """Our OAuth client ID metadata document, for authorization servers that support CIMD."""
    return JSONResponse(
        _gateway(request).upstream_auth.client_metadata(),
        headers={"cache-control": "public, max-age=3600"},
    )
