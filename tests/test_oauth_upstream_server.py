"""The OAuth-protected test upstream (`tests/upstreams/oauth_upstream.py`) is right on its own, before
the gateway is tested against it as an OAuth client.

The official SDK client (`mcp.client.auth.OAuthClientProvider`) logs in to it the four ways a client
can be known (DCR, a client ID metadata document, pre-registration, an issuer with a path), calls
tools, refreshes and steps up; plain HTTP checks what the SDK doesn't show: refresh token rotation
and reuse detection, expiry, the step-up challenge, RFC 9207 ``iss``, revocation, the errors, and
the test-control endpoints. The last test covers the ``config`` kind of `tests/upstreams/server.py`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpx2
import pytest
import trustme
from _browser import serving
from _oauth import hidden_fields, query
from conftest import OAuthUpstream, Upstream
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.types import CallToolResult

LIMIT = 20.0
REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the tests read the redirect themselves
GRANT_TYPES = ["authorization_code", "refresh_token"]
_ACTION = re.compile(r'<form method="post" action="([^"]*)">')
Start = Callable[..., OAuthUpstream]


_HTTP = httpx2.Client(timeout=LIMIT, follow_redirects=False, trust_env=False)


def http() -> contextlib.AbstractContextManager[httpx2.Client]:
    """The module's plain HTTP client (one: setting a client up costs a TLS context each time)."""
    return contextlib.nullcontext(_HTTP)


# --- the SDK's side --------------------------------------------------------------------------------


class MemoryStorage:
    """The SDK's TokenStorage, in memory."""

    def __init__(self, client: OAuthClientInformationFull | None = None) -> None:
        self.tokens: OAuthToken | None = None
        self.client = client

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """The person at the browser: opens the authorization URL, approves on the consent page, and
    hands what the redirect carried (``code``, ``state``, ``iss``) back to the SDK."""

    def __init__(self) -> None:
        self.authorize_urls: list[str] = []
        self.redirects: list[str] = []

    async def redirect_handler(self, url: str) -> None:
        self.authorize_urls.append(url)
        async with httpx2.AsyncClient(timeout=LIMIT, follow_redirects=False, trust_env=False) as client:
            consent = await client.get(url)
            assert consent.status_code == 200, consent.text
            action = _ACTION.search(consent.text)
            assert action is not None, consent.text
            form = hidden_fields(consent.text) | {"decision": "approve"}
            answer = await client.post(urljoin(url, action.group(1)), data=form)
        assert answer.status_code == 302, answer.text
        self.redirects.append(answer.headers["location"])

    async def callback_handler(self) -> AuthorizationCodeResult:
        params = query(self.redirects[-1])
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))


def sdk_auth(
    url: str, storage: MemoryStorage, browser: Browser, client_metadata_url: str | None = None
) -> OAuthClientProvider:
    metadata = OAuthClientMetadata(
        client_name="sdk test client",
        redirect_uris=[REDIRECT],  # type: ignore[list-item]
        grant_types=GRANT_TYPES,
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    return OAuthClientProvider(
        url,
        metadata,
        storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
        client_metadata_url=client_metadata_url,
    )


def call(
    url: str, *calls: tuple[str, dict[str, Any]], auth: httpx2.Auth | None = None, token: str | None = None
) -> list[CallToolResult]:
    """One MCP session to `url` (as the SDK's OAuth client, or with a fixed bearer `token`) that
    calls each tool in turn."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def run() -> list[CallToolResult]:
        async with httpx2.AsyncClient(auth=auth, headers=headers, timeout=LIMIT, trust_env=False) as client:
            with anyio.fail_after(LIMIT):
                async with Client(streamable_http_client(url, http_client=client)) as session:
                    return [await session.call_tool(name, args) for name, args in calls]

    return anyio.run(run)


def text(result: CallToolResult) -> str:
    assert result.is_error is False, result
    return str(getattr(result.content[0], "text", ""))


def whoami(result: CallToolResult) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(text(result))
    return answer


WHOAMI: tuple[str, dict[str, Any]] = ("whoami", {})
ECHO: tuple[str, dict[str, Any]] = ("echo", {"text": "hi"})


# --- plain HTTP ------------------------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class App:
    """A client of the upstream's authorization server, driven by hand."""

    def __init__(self, up: OAuthUpstream, client_id: str, secret: str | None = None, method: str = "none"):
        self.up, self.client_id, self.secret, self.method = up, client_id, secret, method
        self.verifier = ""  # the PKCE verifier of the last authorization request

    def authorize_params(self, **changes: str | None) -> dict[str, str]:
        """A valid authorization request (PKCE, state, resource), with `changes` (None removes)."""
        self.verifier, challenge = pkce()
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": self.up.url,
            "state": "st-" + secrets.token_urlsafe(8),
        }
        params.update(changes)
        return {key: value for key, value in params.items() if value is not None}

    def open(self, **changes: str | None) -> httpx2.Response:
        with http() as client:
            return client.get(self.up.issuer + "/authorize", params=self.authorize_params(**changes))

    def authorize(
        self, decision: str = "approve", username: str | None = None, **changes: str | None
    ) -> dict[str, str]:
        """Open the consent page and answer it: the parameters of the redirect."""
        consent = self.open(**changes)
        assert consent.status_code == 200, consent.text
        form = hidden_fields(consent.text) | {"decision": decision}
        if username is not None:
            form["username"] = username
        with http() as client:
            answer = client.post(self.up.issuer + "/authorize", data=form)
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(REDIRECT + "?"), location
        return query(location)

    def token(self, **data: str) -> httpx2.Response:
        headers = {}
        if self.method == "client_secret_basic":
            credentials = f"{self.client_id}:{self.secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        elif self.method == "client_secret_post":
            data |= {"client_id": self.client_id, "client_secret": self.secret or ""}
        else:
            data["client_id"] = self.client_id
        with http() as client:
            return client.post(self.up.issuer + "/token", data=data, headers=headers)

    def exchange(self, code: str, **changes: str) -> httpx2.Response:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        return self.token(**(data | {"code_verifier": self.verifier, "resource": self.up.url} | changes))

    def tokens(self, username: str | None = None, **changes: str | None) -> dict[str, Any]:
        """Authorize (as `username`, with `changes`) and exchange the code (for the same resource)."""
        code = self.authorize("approve", username, **changes)["code"]
        resource = changes.get("resource")
        answer = self.exchange(code, **({"resource": resource} if resource else {}))
        assert answer.status_code == 200, answer.text
        tokens: dict[str, Any] = answer.json()
        return tokens

    def refresh(self, refresh_token: str, **extra: str) -> httpx2.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "resource": self.up.url}
        return self.token(**(data | extra))

    def revoke(self, token: str) -> httpx2.Response:
        with http() as client:
            return client.post(self.up.issuer + "/revoke", data={"token": token, "client_id": self.client_id})


def register(up: OAuthUpstream, method: str = "none") -> App:
    body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": method, "grant_types": GRANT_TYPES}
    with http() as client:
        answer = client.post(up.issuer + "/register", json=body | {"client_name": "plain test client"})
    assert answer.status_code == 201, answer.text
    client_info = answer.json()
    return App(up, client_info["client_id"], client_info.get("client_secret"), method)


def mcp_post(
    up: OAuthUpstream, token: str | None, message: dict[str, Any] | None = None, session: str | None = None
) -> httpx2.Response:
    """POST one JSON-RPC message (default: initialize) to the MCP endpoint with `token`, in the
    2025-11-25 session `session` if given."""
    message = message or {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "plain", "version": "1"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if session is not None:
        headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    with http() as client:
        return client.post(up.url, json=message, headers=headers)


def challenge(response: httpx2.Response) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer ...`` challenge."""
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def error(response: httpx2.Response, status: int = 400) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    return str(response.json()["error"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthUpstream]:
    """A default upstream for the tests that neither count nor use the test-control endpoints."""
    upstream = OAuthUpstream(tmp_path_factory.mktemp("oauth-upstream-logs"))
    upstream.launch()
    yield upstream
    upstream.stop()


# --- the SDK client ----------------------------------------------------------------------------------


def test_sdk_client_registers_logs_in_calls_refreshes_and_steps_up(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream()
    storage, browser = MemoryStorage(), Browser()
    auth = sdk_auth(up.url, storage, browser)
    who, echo = call(up.url, WHOAMI, ECHO, auth=auth)
    assert storage.client is not None and storage.tokens is not None
    client_id = storage.client.client_id
    assert whoami(who) == {"sub": "user-alice", "scope": "read", "client_id": client_id}
    assert text(echo) == "hi"
    # The SDK found everything from the 401 alone and asked for the challenged scope, for this resource.
    asked = query(browser.authorize_urls[0])
    assert asked["resource"] == up.url and asked["scope"] == "read"
    assert asked["code_challenge_method"] == "S256"
    assert browser.authorize_urls[0].startswith(up.issuer + "/authorize?")
    assert query(browser.redirects[0])["iss"] == up.issuer
    stats = up.stats()
    assert (stats["registrations"], stats["authorizations"], stats["token_codes"]) == (1, 1, 1)
    assert stats["clients"] == [client_id] and stats["resources"] == [up.url]
    assert stats["active_refresh_tokens"] == 1 and stats["refreshes"] == 0

    # Later the access token has expired (the SDK's clock says so): it refreshes, without a login.
    first = storage.tokens
    auth.context.token_expiry_time = time.time() - 1
    (who,) = call(up.url, WHOAMI, auth=auth)
    assert whoami(who)["client_id"] == client_id
    assert storage.tokens.access_token != first.access_token
    assert storage.tokens.refresh_token != first.refresh_token  # rotated
    assert len(browser.authorize_urls) == 1
    assert up.stats()["refreshes"] == 1

    # admin_only needs more: a 403 insufficient_scope, the SDK re-authorizes with the union, retries.
    admin, who = call(up.url, ("admin_only", {}), WHOAMI, auth=auth)
    assert text(admin) == "admin ok"
    assert whoami(who)["scope"] == "read admin"
    assert len(browser.authorize_urls) == 2
    assert query(browser.authorize_urls[1])["scope"] == "read admin"
    assert up.stats()["registrations"] == 1


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    """A test CA, and the PEM file the upstream is told to trust."""
    authority = trustme.CA()
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@contextlib.contextmanager
def client_document(authority: trustme.CA, **changes: Any) -> Iterator[str]:
    """Serve a client ID metadata document over HTTPS on 127.0.0.1; yields its URL (the client_id)."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(tls)
    documents: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = documents.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}/oauth/client.json"
    document = {
        "client_id": url,
        "client_name": "CIMD test client",
        "redirect_uris": [REDIRECT],
        "grant_types": GRANT_TYPES,
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    documents[urlsplit(url).path] = json.dumps(document | changes).encode()
    with serving(server):
        yield url


def test_sdk_client_with_a_client_metadata_document(
    start_oauth_upstream: Start, ca: tuple[trustme.CA, Path]
) -> None:
    authority, ca_file = ca
    up = start_oauth_upstream(dcr=False, ca_file=ca_file)
    with client_document(authority) as document_url:
        storage, browser = MemoryStorage(), Browser()
        auth = sdk_auth(up.url, storage, browser, client_metadata_url=document_url)
        who, echo = call(up.url, WHOAMI, ECHO, auth=auth)
        assert whoami(who) == {"sub": "user-alice", "scope": "read", "client_id": document_url}
        assert text(echo) == "hi"
        assert query(browser.authorize_urls[0])["client_id"] == document_url
        stats = up.stats()
        assert stats["cimd_fetches"] == 1 and stats["registrations"] == 0
        assert stats["clients"] == [document_url] and stats["token_codes"] == 1
        # A public client: it refreshes with its client_id alone.
        auth.context.token_expiry_time = time.time() - 1
        (who,) = call(up.url, WHOAMI, auth=auth)
        assert whoami(who)["client_id"] == document_url and up.stats()["refreshes"] == 1
        # A document that doesn't list the redirect URI, or names another client, is refused (400, no redirect).
        app = App(up, document_url)
        wrong = app.open(redirect_uri="http://127.0.0.1:9/elsewhere")
        assert wrong.status_code == 400 and "location" not in wrong.headers
    with client_document(authority, client_id="https://127.0.0.1:1/other.json") as impostor:
        refused = App(up, impostor).open()
        assert refused.status_code == 400 and "does not name" in refused.text
    assert up.stats()["cimd_fetches"] == 3


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_sdk_client_with_a_pre_registered_client(start_oauth_upstream: Start, method: str) -> None:
    secret = "pre-secret-" + secrets.token_urlsafe(16)
    up = start_oauth_upstream(
        dcr=False, cimd=False, client_id="pre-client", client_secret=secret, redirect_uris=[REDIRECT]
    )
    client = OAuthClientInformationFull(
        client_id="pre-client",
        client_secret=secret,
        redirect_uris=[REDIRECT],  # type: ignore[list-item]
        token_endpoint_auth_method=method,  # type: ignore[arg-type]
        grant_types=GRANT_TYPES,
        response_types=["code"],
    )
    storage, browser = MemoryStorage(client), Browser()
    who, echo = call(up.url, WHOAMI, ECHO, auth=sdk_auth(up.url, storage, browser))
    assert whoami(who) == {"sub": "user-alice", "scope": "read", "client_id": "pre-client"}
    assert text(echo) == "hi"
    stats = up.stats()
    assert stats["registrations"] == 0 and stats["token_codes"] == 1 and stats["clients"] == ["pre-client"]
    # Without its secret, or with a wrong one, the confidential client gets nowhere.
    public, wrong = App(up, "pre-client"), App(up, "pre-client", "wrong", method)
    code = public.authorize()["code"]
    assert error(public.exchange(code), 401) == "invalid_client"
    assert error(wrong.exchange(code, code_verifier=public.verifier), 401) == "invalid_client"


def test_sdk_client_with_an_issuer_path_and_no_metadata_in_the_challenge(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream(issuer_path="/tenant1", www_authenticate_metadata=False)
    assert up.issuer == up.base_url + "/tenant1"
    unauthorized = mcp_post(up, None)
    assert unauthorized.status_code == 401 and challenge(unauthorized) == {"scope": "read"}
    with http() as client:
        for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
            document = client.get(up.base_url + path + "/tenant1")
            assert document.status_code == 200 and document.json()["issuer"] == up.issuer
            assert document.json()["token_endpoint"] == up.issuer + "/token"
            assert client.get(up.base_url + path).status_code == 404
    storage, browser = MemoryStorage(), Browser()
    who, echo = call(up.url, WHOAMI, ECHO, auth=sdk_auth(up.url, storage, browser))
    assert whoami(who)["sub"] == "user-alice" and text(echo) == "hi"
    assert browser.authorize_urls[0].startswith(up.issuer + "/authorize?")
    assert query(browser.redirects[0])["iss"] == up.issuer


# --- discovery and the resource server ----------------------------------------------------------------


def test_discovery_documents_and_challenges(shared: OAuthUpstream) -> None:
    up = shared
    with http() as client:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            prm = client.get(up.base_url + path).json()
            assert prm["resource"] == up.url and prm["authorization_servers"] == [up.issuer]
            assert prm["scopes_supported"] == ["read", "write", "admin"]
            assert prm["bearer_methods_supported"] == ["header"]
        metadata = client.get(up.metadata_url).json()
        assert client.get(up.base_url + "/.well-known/openid-configuration").json() == metadata
    assert metadata["issuer"] == up.issuer == up.base_url
    assert metadata["authorization_endpoint"] == up.issuer + "/authorize"
    assert metadata["registration_endpoint"] == up.issuer + "/register"
    assert metadata["revocation_endpoint"] == up.issuer + "/revoke"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert metadata["token_endpoint_auth_methods_supported"] == [
        "none",
        "client_secret_basic",
        "client_secret_post",
    ]
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["authorization_response_iss_parameter_supported"] is True

    missing = mcp_post(up, None)
    assert missing.status_code == 401
    assert challenge(missing) == {"resource_metadata": up.prm_url, "scope": "read"}
    bogus = mcp_post(up, "not-a-token")
    assert bogus.status_code == 401
    assert challenge(bogus) == {"error": "invalid_token", "resource_metadata": up.prm_url, "scope": "read"}
    # A token of this AS issued for another resource is no good here.
    app = register(up)
    other = app.tokens(resource=up.base_url + "/other")
    assert mcp_post(up, other["access_token"]).status_code == 401
    assert mcp_post(up, app.tokens()["access_token"]).status_code == 200


def test_admin_only_needs_the_admin_scope(shared: OAuthUpstream) -> None:
    app = register(shared)
    reader = app.tokens()["access_token"]
    call_admin = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "admin_only", "arguments": {}},
    }
    forbidden = mcp_post(shared, reader, call_admin)
    assert forbidden.status_code == 403
    assert challenge(forbidden) == {
        "error": "insufficient_scope",
        "scope": "read admin",
        "resource_metadata": shared.prm_url,
        "error_description": "admin scope required",
    }
    # Everything else goes through, the body replayed intact.
    who, echo = call(shared.url, WHOAMI, ECHO, token=reader)
    assert whoami(who) == {"sub": "user-alice", "scope": "read", "client_id": app.client_id}
    assert text(echo) == "hi"
    admin = app.tokens(scope="read admin", username="bob")["access_token"]
    result, who = call(shared.url, ("admin_only", {}), WHOAMI, token=admin)
    assert text(result) == "admin ok"
    assert whoami(who) == {"sub": "user-bob", "scope": "read admin", "client_id": app.client_id}


def test_sessions_belong_to_the_tokens_principal_and_survive_a_refresh(shared: OAuthUpstream) -> None:
    app = register(shared)
    alice, bob = app.tokens(), app.tokens(username="bob")
    opened = mcp_post(shared, alice["access_token"])
    assert opened.status_code == 200
    session = opened.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert mcp_post(shared, alice["access_token"], ping, session).status_code == 200
    renewed = app.refresh(alice["refresh_token"]).json()
    assert mcp_post(shared, renewed["access_token"], ping, session).status_code == 200
    assert mcp_post(shared, bob["access_token"], ping, session).status_code == 404


# --- authorization ----------------------------------------------------------------------------------


def test_consent_page(shared: OAuthUpstream) -> None:
    app = register(shared)
    page = app.open(scope="read write")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text
    assert '<form method="post" action="/authorize">' in page.text
    assert '<button type="submit" id="approve" name="decision" value="approve">' in page.text
    assert '<button type="submit" id="deny" name="decision" value="deny">' in page.text
    assert '<code id="scope">read write</code>' in page.text
    fields = hidden_fields(page.text)
    assert fields["resource"] == shared.url and fields["redirect_uri"] == REDIRECT
    assert fields["code_challenge_method"] == "S256" and fields["client_id"] == app.client_id
    # No scope asked: "read" is granted.
    assert '<code id="scope">read</code>' in app.open().text
    assert app.tokens()["scope"] == "read"


def test_authorization_errors(shared: OAuthUpstream) -> None:
    app = register(shared)
    # Who is asking, and where the answer goes, must be known: else a page, never a redirect.
    for changes in (
        {"client_id": "nobody"},
        {"client_id": "http://127.0.0.1:9/nowhere.json"},  # an unreachable metadata document
        {"redirect_uri": REDIRECT + "/other"},
        {"redirect_uri": None},
    ):
        refused = app.open(**changes)
        assert refused.status_code == 400, changes
        assert "location" not in refused.headers and refused.headers["content-type"].startswith("text/html")
    with http() as client:
        twice = client.get(shared.issuer + "/authorize?" + "client_id=a&client_id=b")
    assert twice.status_code == 400

    def redirected(**changes: str | None) -> dict[str, str]:
        answer = app.open(**changes)
        assert answer.status_code == 302, answer.text
        params = query(answer.headers["location"])
        assert params["iss"] == shared.issuer and params["state"].startswith("st-")
        return params

    assert redirected(code_challenge=None)["error"] == "invalid_request"
    assert redirected(code_challenge_method="plain")["error"] == "invalid_request"
    assert redirected(response_type=None)["error"] == "invalid_request"
    assert redirected(response_type="token")["error"] == "unsupported_response_type"
    assert redirected(resource=None)["error"] == "invalid_target"
    assert redirected(resource="not a uri")["error"] == "invalid_target"
    assert redirected(scope="read everything")["error"] == "invalid_scope"
    denied = app.authorize(decision="deny")
    assert denied["error"] == "access_denied" and "code" not in denied


def test_code_exchange(shared: OAuthUpstream) -> None:
    app = register(shared)
    assert error(app.exchange(app.authorize()["code"], code_verifier=pkce()[0])) == "invalid_grant"
    assert error(app.exchange(app.authorize()["code"], redirect_uri=REDIRECT + "/x")) == "invalid_grant"
    code = app.authorize()["code"]
    assert (
        error(
            app.token(
                grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=app.verifier
            )
        )
        == "invalid_target"
    )
    assert error(app.exchange(app.authorize()["code"], resource=shared.base_url + "/x")) == "invalid_target"
    assert error(app.token(grant_type="password")) == "unsupported_grant_type"
    assert error(register(shared).exchange(app.authorize()["code"])) == "invalid_grant"  # another client's
    # A code is single-use; replaying it revokes what it bought.
    code = app.authorize()["code"]
    tokens = app.exchange(code).json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600 and tokens["scope"] == "read"
    assert mcp_post(shared, tokens["access_token"]).status_code == 200
    assert error(app.exchange(code)) == "invalid_grant"
    assert mcp_post(shared, tokens["access_token"]).status_code == 401
    assert error(app.refresh(tokens["refresh_token"])) == "invalid_grant"
    # Confidential registered clients: a secret is issued, and both ways of sending it work.
    for method in ("client_secret_basic", "client_secret_post"):
        confidential = register(shared, method)
        assert confidential.secret
        assert confidential.tokens()["access_token"]
        code = confidential.authorize()["code"]
        without_secret = App(shared, confidential.client_id).exchange(
            code, code_verifier=confidential.verifier
        )
        assert error(without_secret, 401) == "invalid_client"


def test_registration(shared: OAuthUpstream) -> None:
    with http() as client:
        endpoint = shared.issuer + "/register"
        assert error(client.post(endpoint, json={"client_name": "x"})) == "invalid_redirect_uri"
        assert (
            error(client.post(endpoint, json={"redirect_uris": ["relative/path"]})) == "invalid_redirect_uri"
        )
        method = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}
        assert error(client.post(endpoint, json=method)) == "invalid_client_metadata"
        assert error(client.post(endpoint, content=b"{")) == "invalid_client_metadata"
        public = client.post(
            endpoint, json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
        )
        default = client.post(endpoint, json={"redirect_uris": [REDIRECT], "client_name": "d"})
    assert public.status_code == 201 and "client_secret" not in public.json()
    assert public.json()["redirect_uris"] == [REDIRECT]
    assert default.status_code == 201 and default.json()["client_secret"]
    assert default.json()["token_endpoint_auth_method"] == "client_secret_basic"
    assert default.json()["client_name"] == "d"


@pytest.mark.parametrize("iss", ["wrong", "off"])
def test_iss_wrong_or_off(start_oauth_upstream: Start, iss: str) -> None:
    up = start_oauth_upstream(iss=iss)
    with http() as client:
        metadata = client.get(up.metadata_url).json()
    assert metadata["authorization_response_iss_parameter_supported"] is (iss == "wrong")
    app = register(up)
    params = app.authorize()
    assert "code" in params
    if iss == "off":
        assert "iss" not in params
        # Not advertised, not sent: the SDK accepts that.
        (who,) = call(up.url, WHOAMI, auth=sdk_auth(up.url, MemoryStorage(), Browser()))
        assert whoami(who)["sub"] == "user-alice"
        return
    assert params["iss"] != up.issuer and params["iss"].startswith("http")
    # The SDK checks it (RFC 9207) and gives up before it exchanges the code.
    with pytest.raises(ExceptionGroup) as raised:
        call(up.url, WHOAMI, auth=sdk_auth(up.url, MemoryStorage(), Browser()))
    assert raised.group_contains(OAuthFlowError, match="iss mismatch")
    assert up.stats()["token_codes"] == 0


def test_features_off(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream(
        dcr=False, cimd=False, revocation=False, client_id="c", client_secret="s", redirect_uris=[REDIRECT]
    )
    with http() as client:
        metadata = client.get(up.metadata_url).json()
        assert client.post(up.issuer + "/register", json={"redirect_uris": [REDIRECT]}).status_code in (
            404,
            405,
        )
        assert client.post(up.issuer + "/revoke", data={"token": "x"}).status_code in (404, 405)
    assert "registration_endpoint" not in metadata and "revocation_endpoint" not in metadata
    assert metadata["client_id_metadata_document_supported"] is False
    refused = App(up, "http://127.0.0.1:9/client.json").open()
    assert refused.status_code == 400 and up.stats()["cimd_fetches"] == 0


# --- tokens ------------------------------------------------------------------------------------------


def test_refresh_rotation_and_reuse_detection(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream()
    app = register(up)
    first = app.tokens(scope="read write")
    second = app.refresh(first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"] and second["scope"] == "read write"
    assert mcp_post(up, second["access_token"]).status_code == 200
    # A refresh may narrow the scope, never widen it.
    assert error(app.refresh(second["refresh_token"], scope="read admin")) == "invalid_scope"
    assert error(app.refresh(second["refresh_token"], resource=up.base_url + "/x")) == "invalid_target"
    third = app.refresh(second["refresh_token"], scope="read").json()
    assert third["scope"] == "read"
    (who,) = call(up.url, WHOAMI, token=third["access_token"])
    assert whoami(who)["scope"] == "read"
    assert up.stats()["active_refresh_tokens"] == 1
    # The first refresh token comes back: it was stolen, or a client raced itself. The grant is revoked.
    assert error(app.refresh(first["refresh_token"])) == "invalid_grant"
    assert error(app.refresh(third["refresh_token"])) == "invalid_grant"
    for tokens in (first, second, third):
        assert mcp_post(up, tokens["access_token"]).status_code == 401
    stats = up.stats()
    assert stats["refreshes"] == 2 and stats["refresh_failures"] == 4
    assert stats["active_refresh_tokens"] == 0 and stats["token_codes"] == 1
    # Another grant of the same client is untouched.
    assert app.refresh(app.tokens()["refresh_token"]).status_code == 200


def test_access_tokens_expire(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream(access_ttl=1)
    app = register(up)
    before = time.monotonic()  # the token is issued after this, so it expires after before + 1
    tokens = app.tokens()
    assert tokens["expires_in"] == 1
    first = mcp_post(up, tokens["access_token"])
    if time.monotonic() < before + 1:  # checked before it could have expired
        assert first.status_code == 200
    deadline = before + 1 + LIMIT
    while (answer := mcp_post(up, tokens["access_token"])).status_code == 200:
        assert time.monotonic() < deadline, "the access token never expired"
        time.sleep(0.05)
    assert time.monotonic() >= before + 1
    assert answer.status_code == 401 and challenge(answer)["error"] == "invalid_token"
    # The refresh token outlives it.
    before = time.monotonic()
    fresh = app.refresh(tokens["refresh_token"]).json()
    answer = mcp_post(up, fresh["access_token"])
    if time.monotonic() < before + 1:
        assert answer.status_code == 200


def test_revocation(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream()
    app = register(up)
    tokens = app.tokens()
    assert app.revoke(tokens["access_token"]).status_code == 200
    assert mcp_post(up, tokens["access_token"]).status_code == 401
    renewed = app.refresh(tokens["refresh_token"]).json()  # revoking an access token leaves its grant
    assert mcp_post(up, renewed["access_token"]).status_code == 200
    assert app.revoke(renewed["refresh_token"]).status_code == 200  # a refresh token takes its grant along
    assert mcp_post(up, renewed["access_token"]).status_code == 401
    assert error(app.refresh(renewed["refresh_token"])) == "invalid_grant"
    assert app.revoke("unknown-token").status_code == 200
    # Another client can't revoke this one's tokens.
    mine = app.tokens()
    assert register(up).revoke(mine["refresh_token"]).status_code == 200
    assert app.refresh(mine["refresh_token"]).status_code == 200
    assert up.stats()["revocations"] == 4


def test_control_endpoints(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream()
    app = register(up)
    grants = [app.tokens(), app.tokens(username="bob")]
    assert up.stats()["active_refresh_tokens"] == 2
    # Every access token expires now; the grants live on.
    up.expire_access_tokens()
    for tokens in grants:
        assert mcp_post(up, tokens["access_token"]).status_code == 401
        renewed = app.refresh(tokens["refresh_token"]).json()
        assert mcp_post(up, renewed["access_token"]).status_code == 200
        tokens.update(renewed)
    # The user removes the app at the provider: every grant is gone.
    up.revoke_refresh_tokens()
    for tokens in grants:
        assert error(app.refresh(tokens["refresh_token"])) == "invalid_grant"
        assert mcp_post(up, tokens["access_token"]).status_code == 401
    stats = up.stats()
    assert stats["active_refresh_tokens"] == 0 and stats["refresh_failures"] == 2
    # The user can authorize again.
    assert mcp_post(up, app.tokens()["access_token"]).status_code == 200


def test_refresh_delay_widens_a_refresh_race(start_oauth_upstream: Start) -> None:
    up = start_oauth_upstream()
    app = register(up)
    tokens = app.tokens()
    up.set_refresh_delay(0.5)
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: app.refresh(tokens["refresh_token"]), range(2)))
    assert time.monotonic() - started >= 0.5
    # Both used the same refresh token: the second is a reuse, which revokes the winner's tokens too.
    assert sorted(a.status_code for a in answers) == [200, 400]
    winner = next(a for a in answers if a.status_code == 200).json()
    up.set_refresh_delay(0)
    started = time.monotonic()
    assert error(app.refresh(winner["refresh_token"])) == "invalid_grant"
    assert time.monotonic() - started < 0.5
    assert mcp_post(up, winner["access_token"]).status_code == 401
    stats = up.stats()
    assert stats["refreshes"] == 1 and stats["refresh_failures"] == 2


# --- the `config` kind of tests/upstreams/server.py ---------------------------------------------------


def test_config_upstream_serves_its_schema_and_reports_what_it_got(
    start_upstream: Callable[..., Upstream],
) -> None:
    up = start_upstream("config")
    with http() as client:
        schema = client.get(up.base_url + "/.well-known/mcp-config").json()
    assert schema["$id"] == up.base_url + "/.well-known/mcp-config"
    assert schema["title"] == "Config test server" and schema["required"] == ["apiKey", "region"]
    assert schema["properties"]["apiKey"]["x-from"] == {"header": "x-api-key"}
    assert (
        schema["properties"]["region"]["enum"] == ["eu", "us"]
        and "x-from" not in schema["properties"]["region"]
    )
    assert schema["properties"]["verbose"]["type"] == "boolean"
    (who,) = call(up.url, WHOAMI)
    assert whoami(who) == {"apiKey": None, "region": None, "authorization": None}

    async def configured() -> str:
        headers = {"x-api-key": "k-123", "Authorization": "Bearer upstream-token"}
        async with httpx2.AsyncClient(headers=headers, timeout=LIMIT, trust_env=False) as client:
            with anyio.fail_after(LIMIT):
                async with Client(
                    streamable_http_client(up.url + "?region=eu", http_client=client)
                ) as session:
                    return text(await session.call_tool("whoami", {}))

    answer = json.loads(anyio.run(configured))
    assert answer == {"apiKey": "k-123", "region": "eu", "authorization": "Bearer upstream-token"}
