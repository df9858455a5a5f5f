"""The gateway's sign-in and consent pages in a real browser (headless Chromium, tests/_browser.py).

An app registers itself with a redirect URI on a small local server (`App`) and sends the browser
to `/authorize`. Chromium signs in (an API key, or the `oidc` method through a real OpenID Connect
provider), reads the consent page, allows or denies, and lands on the app's page; the test then
exchanges the code the app received and uses the token. Also in the browser: the pages refuse to
be framed, and an unregistered redirect URI keeps the browser on the gateway's error page.

When a step fails, the test says which one, where the browser was, what the gateway answered, and
where the screenshot of that moment is.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import test_oauth_server
from _browser import serving
from conftest import Gateway, OidcProvider, Upstream
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Request, Response
from test_oauth_server import Code, register, rpc, token, tool_names

gw = test_oauth_server.gw  # namespaces `team` (alice's and bob's connections) and `other` (`main`)

CALLBACK = "/oauth/oidc/callback"


# --- the app's side: its redirect URI, and a page of its own ----------------------------------


class App(ThreadingHTTPServer):
    """An app's web server on 127.0.0.1: `/callback` records its query and answers "done";
    `/frame` is a page that embeds ``framed`` (and, for comparison, the app's own `/hello`)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _AppHandler)
        self.queries: list[dict[str, list[str]]] = []
        self.requests: list[str] = []
        self.framed = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def redirect_uri(self) -> str:
        return self.url + "/callback"


class _AppHandler(BaseHTTPRequestHandler):
    server: App
    timeout = 10  # a stuck connection can't hold a handler thread for longer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        path, _, query = self.path.partition("?")
        if path == "/callback":
            self.server.queries.append(parse_qs(query))
            self._send(
                b"<!doctype html><html><head><title>App</title></head><body><p id='done'>done</p></body></html>"
            )
        elif path == "/frame":
            framed = html.escape(self.server.framed, quote=True)
            body = (
                "<!doctype html><html><head><title>Framing</title></head><body>"
                f'<iframe id="gateway" name="gateway" src="{framed}" width="600" height="400"></iframe>'
                '<iframe id="own" name="own" src="/hello"></iframe></body></html>'
            )
            self._send(body.encode())
        elif path == "/hello":
            self._send(b"<!doctype html><html><body><p id='hello'>the app's own page</p></body></html>")
        else:
            self._send(b"not found", 404)

    def _send(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def app() -> Iterator[App]:
    server = App()
    with serving(server):
        yield server


# --- the browser, step by step ------------------------------------------------------------------


class Visit:
    """One person at ``page``: what the browser asked for and was answered, and each step checked."""

    def __init__(self, page: Page, gateway: Gateway, shots: Path):
        self.page, self.gateway, self.shots = page, gateway, shots
        self.requests: list[str] = []  # every URL the browser asked for, in order
        self.answers: list[str] = []  # "METHOD URL -> STATUS" of every response
        self.pages: list[Response] = []  # the gateway's documents (not redirects)
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _response(self, response: Response) -> None:
        self.answers.append(f"{response.request.method} {response.url} -> {response.status}")
        is_document = response.request.resource_type == "document"
        if is_document and response.url.startswith(self.gateway.url) and not 300 <= response.status < 400:
            self.pages.append(response)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Fail with where the browser was, the gateway's answers and a screenshot when ``name`` fails."""
        try:
            yield
            return
        except (AssertionError, PlaywrightError) as exc:
            failure = str(exc)
        shot = self.shots / f"failed-{name.replace(' ', '-')}.png"
        text = ""
        with contextlib.suppress(PlaywrightError):
            self.page.screenshot(path=shot, full_page=True)
            text = self.page.inner_text("body")[:1500]
        answers = "\n  ".join(self.answers[-12:])
        pytest.fail(
            f"step {name!r} failed: {failure}\nthe browser is at {self.page.url}\n"
            f"screenshot: {shot}\nanswers so far:\n  {answers}\npage text:\n{text}"
        )

    def open_sign_in(self, url: str) -> None:
        with self.step("open the sign-in page"):
            response = self.page.goto(url)
            assert response is not None and response.status == 200, response and response.status
            assert self.page.locator("form#login, form#oidc").count() >= 1

    def submit(self, button: str) -> Response:
        """Click a form's ``button``; answers the response of the page the browser lands on."""
        with self.page.expect_navigation() as navigation:
            self.page.click(button)
        response = navigation.value
        assert response is not None
        return response

    def expect_page(self, response: Response, status: int = 200) -> None:
        """The browser was answered ``status``, else what it got instead (status and body)."""
        if response.status != status:
            request = response.request
            sent = request.all_headers()
            raise AssertionError(
                f"{request.method} {response.url} answered {response.status}, not {status}: "
                f"{self.page.inner_text('body')[:400]!r} (the browser sent Origin: {sent.get('origin')!r}, "
                f"Referer: {sent.get('referer')!r})"
            )

    def sign_in_with_key(self, credential: str) -> None:
        with self.step("sign in with a key"):
            self.page.fill("#credential", credential)
            self.expect_page(self.submit("#sign-in"))
            assert self.page.locator("form#consent").is_visible()

    def approve(self, app: App) -> dict[str, str]:
        return self._decide("approve", app)

    def deny(self, app: App) -> dict[str, str]:
        return self._decide("deny", app)

    def _decide(self, button: str, app: App) -> dict[str, str]:
        """Click ``button`` on the consent page; answers the query the app's redirect URI received."""
        with self.step(f"{button} on the consent page"):
            before = len(app.queries)
            self.expect_page(self.submit(f"#{button}"))
            assert self.page.url.startswith(app.redirect_uri + "?"), self.page.url
            assert self.page.inner_text("#done") == "done"
            assert len(app.queries) == before + 1, app.requests
        received = {key: values[0] for key, values in app.queries[-1].items()}
        assert all(len(values) == 1 for values in app.queries[-1].values()), app.queries[-1]
        shown = {key: values[0] for key, values in parse_qs(urlsplit(self.page.url).query).items()}
        assert received == shown
        return received

    def check_gateway_pages(self) -> None:
        """Every page the gateway showed refuses frames and is not cached."""
        assert self.pages, self.answers
        for response in self.pages:
            headers = response.headers
            where = f"{response.request.method} {response.url} -> {response.status}"
            assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), where
            assert headers.get("x-frame-options") == "DENY", where
            assert headers.get("cache-control") == "no-store", where

    def check_csrf_cookie(self) -> None:
        cookies = {c["name"]: c for c in self.page.context.cookies(self.gateway.url)}
        assert "junction_oauth" in cookies, cookies
        cookie = cookies["junction_oauth"]
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax", cookie


@pytest.fixture
def visit(page: Page, tmp_path: Path) -> Callable[[Gateway], Visit]:
    def start(gateway: Gateway) -> Visit:
        return Visit(page, gateway, tmp_path)

    return start


def exchange(gw: Gateway, code: Code, back: dict[str, str], client_id: str, redirect_uri: str) -> str:
    """The app's side after the redirect: the code and the PKCE verifier for an access token."""
    answer = token(
        gw,
        grant_type="authorization_code",
        code=back["code"],
        redirect_uri=redirect_uri,
        client_id=client_id,
        code_verifier=code.verifier,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def echo(gw: Gateway, path: str, access: str, tool: str, text: str) -> Any:
    call = rpc(gw, path, access, "tools/call", {"name": tool, "arguments": {"text": text}})
    assert call.status_code == 200, call.text
    return call.json()


# --- the tests ----------------------------------------------------------------------------------


def test_the_sign_in_pages_own_form_reaches_the_gateway(
    gw: Gateway, app: App, page: Page, visit: Callable[[Gateway], Visit]
) -> None:
    """A wrong key typed into the sign-in page: the gateway answers with the page again and the
    reason. Chromium posts a form from a page sent with `Referrer-Policy: no-referrer` with
    `Origin: null` (the Fetch standard's origin serialization), so the gateway sees that value."""
    client_id = register(gw, redirect_uris=[app.redirect_uri])["client_id"]
    person = visit(gw)
    person.open_sign_in(Code(gw, client_id, gw.mcp_url("team"), redirect_uri=app.redirect_uri).url)
    with person.step("sign in with a wrong key"):
        page.fill("#credential", "not-a-key")
        person.expect_page(person.submit("#sign-in"), 401)
        assert "not a valid API key or service token" in page.inner_text("#error")
        assert page.locator("#credential").is_visible()


def test_a_person_signs_in_and_allows_an_app_in_a_real_browser(
    gw: Gateway, app: App, page: Page, visit: Callable[[Gateway], Visit], tmp_path: Path
) -> None:
    client = register(gw, client_name="Browser app", redirect_uris=[app.redirect_uri])
    client_id = client["client_id"]
    code = Code(gw, client_id, gw.mcp_url("team"), redirect_uri=app.redirect_uri)
    person = visit(gw)

    person.open_sign_in(code.url)
    with person.step("read the sign-in page"):
        assert page.locator("form#login").is_visible() and page.locator("#credential").is_visible()
        assert "Browser app" in page.inner_text("h1")
        person.check_csrf_cookie()
    person.sign_in_with_key(gw.admin_key)

    with person.step("read the consent page"):
        assert page.inner_text("#client-name") == "Browser app"
        assert page.inner_text("#client-id") == client_id
        assert page.inner_text("#redirect-uri") == app.redirect_uri
        assert page.inner_text("#namespace") == "team"
        assert page.locator("select#namespace").count() == 0  # the resource names the namespace
        assert page.locator("#scopes li").count() == 2
        assert page.locator("#approve").is_visible() and page.locator("#deny").is_visible()
        assert page.title().startswith("Allow access?")
        assert page.inner_text("h1") == "Allow Browser app to use your tools?"
    screenshot = tmp_path / "consent.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    back = person.approve(app)
    assert back["state"] == code.state and back["iss"] == gw.url and back["code"]
    assert set(back) == {"code", "state", "iss"}
    person.check_gateway_pages()
    # The key stayed in the gateway's form: the app saw only the redirect.
    assert all(gw.admin_key not in path for path in app.requests)

    access = exchange(gw, code, back, client_id, app.redirect_uri)
    listed = tool_names(rpc(gw, "/mcp/team", access, "tools/list"))
    assert "alice__echo" in listed and "bob__echo" in listed, listed
    result = echo(gw, "/mcp/team", access, "alice__echo", "from the browser")
    assert result["result"]["content"][0]["text"] == "from the browser", result


def test_mcp_itself_serves_the_namespace_picked_in_the_browser(
    gw: Gateway, app: App, page: Page, visit: Callable[[Gateway], Visit]
) -> None:
    client_id = register(gw, redirect_uris=[app.redirect_uri])["client_id"]
    code = Code(gw, client_id, gw.url + "/mcp", redirect_uri=app.redirect_uri)
    person = visit(gw)
    person.open_sign_in(code.url)
    person.sign_in_with_key(gw.admin_key)

    with person.step("pick a namespace"):
        choice = page.locator("select#namespace")
        assert choice.is_visible()
        options = choice.locator("option").all_inner_texts()
        assert sorted(options) == ["other", "team"], options
        assert page.select_option("#namespace", "other") == ["other"]
    back = person.approve(app)
    assert back["state"] == code.state and back["iss"] == gw.url

    access = exchange(gw, code, back, client_id, app.redirect_uri)
    listed = tool_names(rpc(gw, "/mcp", access, "tools/list"))
    assert "main__echo" in listed and all(name.startswith("main__") for name in listed), listed
    result = echo(gw, "/mcp", access, "main__echo", "picked")
    assert result["result"]["content"][0]["text"] == "picked", result


def test_deny_sends_the_browser_back_with_access_denied(
    gw: Gateway, app: App, visit: Callable[[Gateway], Visit]
) -> None:
    client_id = register(gw, redirect_uris=[app.redirect_uri])["client_id"]
    code = Code(gw, client_id, gw.mcp_url("team"), redirect_uri=app.redirect_uri)
    person = visit(gw)
    person.open_sign_in(code.url)
    person.sign_in_with_key(gw.admin_key)

    back = person.deny(app)
    assert back == {"error": "access_denied", "state": code.state, "iss": gw.url}
    with gw.client() as admin:
        assert [g for g in admin.get("/oauth/grants").json()["grants"] if g["clientId"] == client_id] == []


def test_another_site_cannot_frame_the_sign_in_page(
    gw: Gateway, app: App, page: Page, visit: Callable[[Gateway], Visit]
) -> None:
    client_id = register(gw, redirect_uris=[app.redirect_uri])["client_id"]
    app.framed = Code(gw, client_id, gw.mcp_url("team"), redirect_uri=app.redirect_uri).url
    person = visit(gw)

    with page.expect_response(lambda r: r.url == app.framed) as framed:
        page.goto(app.url + "/frame")
    # The gateway answered the frame's request with its sign-in page...
    assert framed.value.status == 200
    assert "frame-ancestors 'none'" in framed.value.headers["content-security-policy"]
    assert framed.value.headers["x-frame-options"] == "DENY"
    # ... and the browser would not show it there, while the app's own page in the next frame shows.
    own = page.frame(name="own")
    assert own is not None
    own.wait_for_selector("#hello")
    gateway_frame = page.frame(name="gateway")
    assert gateway_frame is not None
    assert gateway_frame.url != app.framed, person.answers
    assert page.frame_locator("#gateway").locator("form#login").count() == 0
    assert page.frame_locator("#gateway").locator("#credential").count() == 0
    assert "Sign in" not in gateway_frame.content()


def test_an_unregistered_redirect_uri_keeps_the_browser_on_the_gateway(
    gw: Gateway, app: App, page: Page, visit: Callable[[Gateway], Visit]
) -> None:
    client_id = register(gw, redirect_uris=[app.redirect_uri])["client_id"]
    person = visit(gw)
    evil = Code(gw, client_id, gw.mcp_url("team"), redirect_uri="https://evil.example/cb")

    response = page.goto(evil.url)
    assert response is not None and response.status == 400
    assert page.url == evil.url
    assert "redirect_uri is not one this client registered" in page.inner_text("#error")
    assert page.locator("form").count() == 0
    # Nothing went anywhere but the gateway: not to evil.example, not to the app.
    assert person.requests and all(url.startswith(gw.url + "/") for url in person.requests), person.requests
    assert app.requests == []
    person.check_gateway_pages()


def test_oidc_sign_in_in_a_real_browser_gives_only_the_persons_connections(
    start_oidc_provider: Callable[..., OidcProvider],
    start_gateway: Callable[..., Gateway],
    modern_upstream: Upstream,
    app: App,
    page: Page,
    visit: Callable[[Gateway], Visit],
) -> None:
    provider = start_oidc_provider(client_id="junction-gateway")
    gateway = start_gateway(
        JUNCTION_OAUTH_LOGIN="key,oidc",
        JUNCTION_OIDC_ISSUER=provider.issuer,
        JUNCTION_OIDC_CLIENT_ID=provider.client_id,
        JUNCTION_OIDC_CLIENT_SECRET=provider.client_secret,
        JUNCTION_OIDC_IDENTITY_CLAIM="email",
    )
    provider.set_redirect_uris(gateway.url + CALLBACK)
    with gateway.client() as admin:
        assert admin.put("/namespaces/team").status_code in (200, 201)
        for connection, user in (("alice", "alice@example.test"), ("bob", "bob@example.test")):
            body = {"mcpUrl": modern_upstream.url, "metadata": {"userId": user}}
            made = admin.put(f"/team/{connection}", json=body)
            assert made.status_code == 201, made.text
    client_id = register(gateway, client_name="SSO app", redirect_uris=[app.redirect_uri])["client_id"]
    code = Code(gateway, client_id, gateway.mcp_url("team"), redirect_uri=app.redirect_uri)
    person = visit(gateway)

    person.open_sign_in(code.url)
    with person.step("go to the provider"):
        assert page.locator("form#login").is_visible() and page.locator("form#oidc").is_visible()
        person.expect_page(person.submit("#sign-in-oidc"))
        assert page.url.startswith(provider.issuer + "/authorize?"), page.url
    with person.step("sign in at the provider"):
        page.fill("#username", "alice")
        person.expect_page(person.submit("#sign-in"))
        page.wait_for_url(lambda url: url.startswith(gateway.url + CALLBACK + "?"))
        assert page.locator("form#consent").is_visible()
    with person.step("read the consent page"):
        assert page.inner_text("#client-name") == "SSO app"
        assert page.inner_text("#subject") == "alice@example.test"
        assert page.inner_text("#namespace") == "team"
    back = person.approve(app)
    assert back["state"] == code.state and back["iss"] == gateway.url
    person.check_gateway_pages()

    access = exchange(gateway, code, back, client_id, app.redirect_uri)
    listed = tool_names(rpc(gateway, "/mcp/team", access, "tools/list"))
    assert "alice__echo" in listed and all(name.startswith("alice__") for name in listed), listed
    result = echo(gateway, "/mcp/team", access, "alice__echo", "alice here")
    assert result["result"]["content"][0]["text"] == "alice here", result
    bob = rpc(gateway, "/mcp/team", access, "tools/call", {"name": "bob__echo", "arguments": {"text": "x"}})
    outcome = bob.json() if bob.status_code == 200 else {}
    assert bob.status_code != 200 or "error" in outcome or outcome["result"].get("isError"), bob.text
