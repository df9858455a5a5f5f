"""Clients that identify themselves with a client ID metadata document (CIMD): the client id is an
HTTPS URL serving the client's metadata, which the gateway fetches (SSRF-checked, 64 KiB at most)
and trusts only when the document names itself and the client is public.

The documents are served over real TLS on 127.0.0.1, with a certificate from a test CA the gateway
is told to trust (`JUNCTION_OAUTH_CA_FILE`); loopback is reachable only with
`JUNCTION_ALLOW_PRIVATE_CLIENT_METADATA=1`."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx2
import pytest
import trustme
from _oauth import query
from conftest import Gateway, Upstream
from test_oauth_sdk import REDIRECT, Login, MemoryStorage, provider, use

CLIENT_NAME = "Junction CIMD test app"
_ERROR = re.compile(r'<p class="error" id="error">(.*?)</p>', re.S)


class DocumentServer:
    """HTTPS on 127.0.0.1 serving JSON documents by path; records every connection and request.

    Each connection is wrapped in TLS in its own thread (a stalled handshake cannot block the
    accept loop) and carries one request (HTTP/1.0), with a 5 s socket timeout."""

    def __init__(self, ca: trustme.CA):
        self.documents: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.connections = 0
        self.errors: list[str] = []
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(tls)
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with lock:
                    owner.requests.append(("GET", self.path))
                body = owner.documents.get(self.path)
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

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                with lock:
                    owner.connections += 1
                request.settimeout(5.0)
                wrapped = tls.wrap_socket(request, server_side=True)
                try:
                    Handler(wrapped, client_address, self)
                finally:
                    wrapped.close()

            def handle_error(self, request: Any, client_address: Any) -> None:
                with lock:
                    owner.errors.append(repr(sys.exc_info()[1]))

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, document: dict[str, Any]) -> str:
        """Serve `document` at `path`; its URL."""
        self.documents[path] = json.dumps(document).encode()
        return self.url(path)

    def serve_client(self, path: str, **changes: Any) -> str:
        """A client's document at `path` (naming itself, public, with REDIRECT), with `changes`."""
        url = self.url(path)
        document = {
            "client_id": url,
            "client_name": CLIENT_NAME,
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **changes,
        }
        return self.serve(path, document)

    def gets(self, path: str) -> int:
        return self.requests.count(("GET", path))

    def start(self) -> DocumentServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cimd-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def documents(ca: trustme.CA) -> Iterator[DocumentServer]:
    server = DocumentServer(ca).start()
    yield server
    server.stop()


@pytest.fixture
def cimd_gateway(start_gateway: Callable[..., Gateway], ca_file: str) -> Gateway:
    """A gateway that trusts the test CA and may fetch client documents from loopback."""
    return start_gateway(JUNCTION_OAUTH_CA_FILE=ca_file, JUNCTION_ALLOW_PRIVATE_CLIENT_METADATA="1")


def add_namespace(gateway: Gateway, upstream: Upstream) -> str:
    with gateway.client() as admin:
        assert admin.put("/namespaces/team").status_code in (200, 201)
        assert admin.put("/team/main", json={"mcpUrl": upstream.url}).status_code == 201
    return "team"


def open_authorize(gateway: Gateway, client_id: str, redirect_uri: str = REDIRECT) -> httpx2.Response:
    """A browser opening the authorization URL a client built: valid PKCE, resource and state."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": gateway.mcp_url("team"),
        "state": "state-" + secrets.token_urlsafe(8),
    }
    with httpx2.Client(timeout=30.0, follow_redirects=False, trust_env=False) as browser:
        return browser.get(gateway.url + "/authorize", params=params)


def error_page(response: httpx2.Response) -> str:
    """The message of the gateway's error page; fails unless the answer is one (and no redirect)."""
    assert response.status_code == 400, (response.status_code, response.headers, response.text)
    assert "location" not in response.headers, response.headers
    assert response.headers["content-type"].startswith("text/html"), response.headers
    found = _ERROR.search(response.text)
    assert found is not None, response.text
    return html.unescape(found.group(1))


def sign_in_page(response: httpx2.Response) -> None:
    assert response.status_code == 200, (response.status_code, response.text)
    assert "location" not in response.headers
    assert html.escape(CLIENT_NAME) in response.text


# --- the official SDK client ------------------------------------------------------------------


def test_sdk_client_logs_in_with_a_metadata_document_lists_calls_and_refreshes(
    cimd_gateway: Gateway, documents: DocumentServer, modern_upstream: Upstream
) -> None:
    gateway = cimd_gateway
    url = gateway.mcp_url(add_namespace(gateway, modern_upstream))
    client_id = documents.serve_client("/oauth/client.json")
    storage = MemoryStorage()
    login = Login(gateway, gateway.admin_key)
    auth = provider(url, storage, login, client_metadata_url=client_id)
    names, result = anyio.run(use, url, auth)
    assert "main__echo" in names
    assert result.is_error is False and "hi" in str(result.content)
    # No registration: the SDK used its URL as the client id, and the gateway fetched the document
    # (once: the sign-in, consent and token steps all read the cached copy).
    assert storage.client is not None and storage.client.client_id == client_id
    assert len(login.authorize_urls) == 1
    sent = query(login.authorize_urls[0])
    assert sent["client_id"] == client_id and sent["resource"] == url
    assert documents.requests == [("GET", "/oauth/client.json")], documents.requests
    assert documents.connections == 1 and documents.errors == [], documents.errors
    # The person's grant is to that client, under the name its document gives.
    with gateway.client() as admin:
        grants = admin.get("/oauth/grants")
    assert grants.status_code == 200, grants.text
    [grant] = grants.json()["grants"]
    assert grant["clientId"] == client_id
    assert grant["clientName"] == CLIENT_NAME
    assert grant["redirectUri"] == REDIRECT and grant["resource"] == url and grant["namespace"] == "team"
    # Its access token expires: it refreshes as the same public client, with no second login.
    assert storage.tokens is not None and storage.tokens.refresh_token
    first_access = storage.tokens.access_token
    auth.context.token_expiry_time = time.time() - 1
    names, _ = anyio.run(use, url, auth)
    assert "main__echo" in names
    assert len(login.authorize_urls) == 1
    assert storage.tokens.access_token != first_access


# --- refusals: an error page, never a redirect ------------------------------------------------


def test_loopback_document_is_refused_before_connecting_unless_allowed(
    start_gateway: Callable[..., Gateway], ca_file: str, documents: DocumentServer
) -> None:
    """SSRF: without JUNCTION_ALLOW_PRIVATE_CLIENT_METADATA the gateway will not connect to
    127.0.0.1 for a client id, though it trusts the certificate (and may reach private upstreams:
    the test gateways set JUNCTION_ALLOW_PRIVATE_UPSTREAMS=1)."""
    gateway = start_gateway(JUNCTION_OAUTH_CA_FILE=ca_file)
    client_id = documents.serve_client("/oauth/client.json")
    message = error_page(open_authorize(gateway, client_id))
    assert "does not fetch from" in message and "loopback and private addresses" in message, message
    assert "127.0.0.1" in message, message
    assert documents.connections == 0 and documents.requests == [], documents.requests


def test_loopback_refusal_names_the_setting_that_allows_client_documents(
    start_gateway: Callable[..., Gateway], ca_file: str, documents: DocumentServer
) -> None:
    """The refusal tells the operator what to set; for a client document that is
    JUNCTION_ALLOW_PRIVATE_CLIENT_METADATA, not the upstream setting (already on here)."""
    gateway = start_gateway(JUNCTION_OAUTH_CA_FILE=ca_file)
    client_id = documents.serve_client("/oauth/client.json")
    message = error_page(open_authorize(gateway, client_id))
    assert "JUNCTION_ALLOW_PRIVATE_UPSTREAMS" not in message, (
        "the page tells the operator to set JUNCTION_ALLOW_PRIVATE_UPSTREAMS, which is already on "
        f"and does not govern client metadata documents: {message!r}"
    )
    assert "JUNCTION_ALLOW_PRIVATE_CLIENT_METADATA" in message, message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {"client_id": "https://other.example/oauth/client.json"},
            "must name itself as client_id",
            id="client_id-is-another-url",
        ),
        pytest.param({"padding": "x" * (64 * 1024)}, "over 64 KiB", id="over-64-KiB"),
        pytest.param(
            {"token_endpoint_auth_method": "client_secret_basic"},
            "must be public",
            id="client_secret_basic",
        ),
    ],
)
def test_a_bad_document_is_refused_with_an_error_page(
    cimd_gateway: Gateway, documents: DocumentServer, changes: dict[str, Any], expected: str
) -> None:
    good = documents.serve_client("/oauth/good.json")
    bad = documents.serve_client("/oauth/bad.json", **changes)
    # The same request with a good document opens the sign-in page: only the document differs.
    sign_in_page(open_authorize(cimd_gateway, good))
    response = open_authorize(cimd_gateway, bad)
    message = error_page(response)
    assert expected in message, message
    assert documents.gets("/oauth/bad.json") == 1  # fetched, then refused for what it says
    assert 'name="flow"' not in response.text  # no sign-in form


def test_a_redirect_uri_the_document_does_not_list_is_refused_without_redirecting(
    cimd_gateway: Gateway, documents: DocumentServer
) -> None:
    client_id = documents.serve_client("/oauth/client.json")
    sign_in_page(open_authorize(cimd_gateway, client_id))
    for attempt in ("https://evil.example/cb", REDIRECT + "/x", REDIRECT + "?next=https://evil.example/"):
        response = open_authorize(cimd_gateway, client_id, redirect_uri=attempt)
        message = error_page(response)
        assert "redirect_uri is not one this client registered" in message, message
        assert "evil.example" not in response.headers.get("location", "")
        assert 'name="flow"' not in response.text
    assert documents.gets("/oauth/client.json") == 1  # the cached document judged every attempt


def test_the_document_server_presents_a_certificate_only_the_test_ca_vouches_for(
    start_gateway: Callable[..., Gateway], documents: DocumentServer
) -> None:
    """Without the CA file the gateway cannot verify the document server: refused, no redirect."""
    gateway = start_gateway(JUNCTION_ALLOW_PRIVATE_CLIENT_METADATA="1")
    client_id = documents.serve_client("/oauth/client.json")
    message = error_page(open_authorize(gateway, client_id))
    assert "could not be fetched" in message, message
    # It connected, and the TLS handshake failed before any request.
    assert documents.connections == 1 and documents.requests == [], documents.requests
