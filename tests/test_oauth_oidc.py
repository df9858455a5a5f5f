"""The `oidc` sign-in: people log in to the gateway's authorization server through a real OpenID
Connect provider (tests/upstreams/oidc_provider.py), and the identity it vouches for (the `email`
claim here) limits them to the connections whose `metadata.userId` is theirs.

The browser is plain HTTP with a cookie jar per person, following every redirect by hand:
the gateway's sign-in page, its `oidc` form, the provider's login form, the gateway's callback,
the consent page, and the redirect back to the app.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import anyio
import httpx2
import pytest
from _oauth import query
from conftest import Gateway, OidcProvider, Upstream
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from test_oauth_sdk import MemoryStorage
from test_oauth_sdk import provider as sdk_provider
from test_tokens import MODERN_META

LIMIT = 60.0  # every wait in this file is bounded by it
CALLBACK = "/oauth/oidc/callback"
REDIRECT = "http://127.0.0.1:9/callback"  # the app's redirect URI: never contacted, read by the test
NAMESPACE = "team"
CONNECTIONS = {
    "alice-gh": {"userId": "alice@example.test"},
    "bob-gh": {"userId": "bob@example.test"},
    "shared": None,
}


# --- a browser ----------------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    id: str | None
    fields: dict[str, str] = field(default_factory=dict)  # inputs with a name, as the page fills them
    buttons: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (name, value)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._open: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._open = Form(a.get("action", ""), a.get("method", "get").lower(), a.get("id"))
            self.forms.append(self._open)
        elif self._open is not None and tag == "input" and a.get("name"):
            if a.get("type", "text") not in ("submit", "button", "checkbox", "radio"):
                self._open.fields[a["name"]] = a.get("value", "")
        elif self._open is not None and tag == "button":
            self._open.buttons[a.get("id", "")] = (a.get("name", ""), a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def forms(page: str) -> list[Form]:
    parser = _Forms()
    parser.feed(page)
    return parser.forms


def describe(response: httpx2.Response) -> str:
    where = response.headers.get("location")
    text = f"{response.request.method} {response.request.url} -> {response.status_code}"
    return text + (f" (Location: {where})" if where else "") + f"\n{response.text[:2000]}"


class Browser:
    """One person's browser: its own cookie jar; redirects followed by hand, each hop checked."""

    def __init__(self, gateway: Gateway, provider: OidcProvider, username: str):
        self.gateway, self.provider, self.username = gateway, provider, username
        self.http = httpx2.Client(timeout=LIMIT, follow_redirects=False, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self, page: httpx2.Response, form_id: str | None = None, button: str | None = None, **fill: str
    ) -> httpx2.Response:
        """Post a form of ``page`` (the one with ``form_id``, else the only one) as a browser would."""
        found = [f for f in forms(page.text) if form_id is None or f.id == form_id]
        assert len(found) == 1, f"no single form {form_id!r} on the page:\n{describe(page)}"
        form = found[0]
        assert form.method == "post", form
        data = form.fields | fill
        if button is not None:
            name, value = form.buttons[button]
            if name:
                data[name] = value
        return self.http.post(urljoin(str(page.url), form.action), data=data)

    def follow(self, response: httpx2.Response) -> httpx2.Response:
        return self.http.get(urljoin(str(response.url), response.headers["location"]))

    # The steps of a sign-in, in order.
    def sign_in_page(self, authorize_url: str) -> httpx2.Response:
        page = self.http.get(authorize_url)
        assert page.status_code == 200 and 'id="oidc"' in page.text, describe(page)
        return page

    def to_provider(self, sign_in_page: httpx2.Response) -> httpx2.Response:
        """The `oidc` form: the gateway sends the browser to the provider's login page."""
        off = self.submit(sign_in_page, "oidc")
        assert off.status_code == 303, describe(off)
        assert off.headers["location"].startswith(self.provider.issuer + "/authorize?"), describe(off)
        login = self.follow(off)
        assert login.status_code == 200 and 'name="username"' in login.text, describe(login)
        return login

    def provider_login(self, provider_page: httpx2.Response) -> str:
        """Sign in at the provider; answers the URL it sends the browser back to (the callback)."""
        back = self.submit(provider_page, button="sign-in", username=self.username)
        assert back.status_code == 302, describe(back)
        location = back.headers["location"]
        assert location.startswith(self.gateway.url + CALLBACK + "?"), describe(back)
        return location

    def callback(self, url: str) -> httpx2.Response:
        return self.http.get(url)

    def consent_page(self, authorize_url: str) -> httpx2.Response:
        """From the app's authorization URL to the gateway's consent page (or its refusal)."""
        return self.callback(self.provider_login(self.to_provider(self.sign_in_page(authorize_url))))

    def approve(self, consent: httpx2.Response) -> httpx2.Response:
        assert consent.status_code == 200 and 'id="consent"' in consent.text, describe(consent)
        return self.submit(consent, "consent", button="approve")

    def authorize(self, authorize_url: str) -> str:
        """The whole sign-in, allowed: the redirect to the app, with `code`, `state` and `iss`."""
        answer = self.approve(self.consent_page(authorize_url))
        assert answer.status_code == 303, describe(answer)
        return answer.headers["location"]


# --- the official SDK client ----------------------------------------------------------------------


class SdkLogin:
    """The SDK's browser step, done by ``browser``."""

    def __init__(self, browser: Browser):
        self.browser = browser
        self.redirects: list[str] = []

    async def redirect_handler(self, url: str) -> None:
        self.redirects.append(await anyio.to_thread.run_sync(self.browser.authorize, url))

    async def callback_handler(self) -> AuthorizationCodeResult:
        params = query(self.redirects[-1])
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))


async def _attempt(client: Client, name: str) -> tuple[Any, ...]:
    """A tool call's outcome, with the tool's name and connection blanked (to compare refusals)."""

    def blank(text: str) -> str:
        return text.replace(name, "<tool>").replace(name.split("__")[0], "<connection>")

    try:
        result = await client.call_tool(name, {"text": "hi"})
    except MCPError as exc:
        return ("json-rpc error", exc.code, blank(exc.message))
    text = " ".join(getattr(c, "text", "") for c in result.content)
    return ("error result" if result.is_error else "result", blank(text))


async def mcp_session(url: str, auth: httpx2.Auth, calls: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Connect with the SDK (logging in when needed), list the tools and try ``calls``."""
    async with httpx2.AsyncClient(auth=auth, timeout=LIMIT, trust_env=False) as http:
        with anyio.fail_after(LIMIT):
            async with Client(streamable_http_client(url, http_client=http)) as client:
                names = sorted(t.name for t in (await client.list_tools()).tools)
                return names, {name: await _attempt(client, name) for name in calls}


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def run_sdk(who: str, url: str, auth: httpx2.Auth, calls: list[str]) -> tuple[list[str], dict[str, Any]]:
    """`mcp_session`, failing with what went wrong rather than a task group's traceback."""
    try:
        return anyio.run(mcp_session, url, auth, calls)
    except Exception as exc:
        problems = "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in _leaves(exc))
        pytest.fail(f"{who}: the SDK client could not log in to and use {url}: {problems}", pytrace=False)


# --- set-up ---------------------------------------------------------------------------------------


@pytest.fixture
def sso(
    start_oidc_provider: Callable[..., OidcProvider], start_gateway: Callable[..., Gateway]
) -> Callable[..., tuple[Gateway, OidcProvider]]:
    """``sso(**env)``: a provider and a gateway signing people in through it (identity: `email`)."""

    def start(**env: str) -> tuple[Gateway, OidcProvider]:
        provider = start_oidc_provider(client_id="junction-gateway")
        gateway = start_gateway(
            JUNCTION_OAUTH_LOGIN="oidc",
            JUNCTION_OIDC_ISSUER=provider.issuer,
            JUNCTION_OIDC_CLIENT_ID=provider.client_id,
            JUNCTION_OIDC_CLIENT_SECRET=provider.client_secret,
            JUNCTION_OIDC_IDENTITY_CLAIM="email",
            **env,
        )
        provider.set_redirect_uris(gateway.url + CALLBACK)
        return gateway, provider

    return start


def make_namespace(gateway: Gateway, upstream: Upstream, name: str = NAMESPACE) -> None:
    with gateway.client() as admin:
        created = admin.put(f"/namespaces/{name}")
        assert created.status_code in (200, 201), created.text
        for connection, metadata in CONNECTIONS.items():
            body: dict[str, Any] = {"mcpUrl": upstream.url}
            if metadata is not None:
                body["metadata"] = metadata
            made = admin.put(f"/{name}/{connection}", json=body)
            assert made.status_code == 201, made.text


def grants(gateway: Gateway) -> list[dict[str, Any]]:
    with gateway.client() as admin:
        answer = admin.get("/oauth/grants")
        assert answer.status_code == 200, answer.text
        return answer.json()["grants"]


@dataclass(frozen=True)
class AppRequest:
    """An app's authorization request for ``/mcp/<namespace>``: registered (RFC 7591), PKCE S256."""

    url: str
    client_id: str
    verifier: str
    resource: str


def app_request(gateway: Gateway, namespace: str) -> AppRequest:
    registered = httpx2.post(
        gateway.url + "/register",
        json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "client_name": "an app"},
        timeout=LIMIT,
        trust_env=False,
    )
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    resource = gateway.mcp_url(namespace)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "state": "app-state-" + secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": resource,
        "scope": "read execute",
    }
    return AppRequest(gateway.url + "/authorize?" + urlencode(params), client_id, verifier, resource)


def authorize_url(gateway: Gateway, namespace: str) -> str:
    return app_request(gateway, namespace).url


def assert_refused(response: httpx2.Response, status: int, says: str) -> None:
    """An error page: no redirect anywhere, no code, and the reason."""
    assert response.status_code == status, describe(response)
    assert "location" not in response.headers, describe(response)
    assert 'id="error"' in response.text and says in response.text, describe(response)
    assert "code=" not in response.text, describe(response)


@pytest.fixture
def browsers() -> Iterator[Callable[..., Browser]]:
    opened: list[Browser] = []

    def open_browser(gateway: Gateway, provider: OidcProvider, username: str) -> Browser:
        opened.append(Browser(gateway, provider, username))
        return opened[-1]

    yield open_browser
    for browser in opened:
        browser.close()


# --- the tests ------------------------------------------------------------------------------------


def test_each_person_sees_only_their_own_connection(
    sso: Callable[..., tuple[Gateway, OidcProvider]],
    modern_upstream: Upstream,
    browsers: Callable[..., Browser],
) -> None:
    gateway, provider = sso()
    make_namespace(gateway, modern_upstream)
    url = gateway.mcp_url(NAMESPACE)
    people = {"alice": "bob-gh", "bob": "alice-gh"}  # each one, and the other one's connection
    tokens: dict[str, str] = {}
    for username, other in people.items():
        own = f"{username}-gh"
        storage, login = MemoryStorage(), SdkLogin(browsers(gateway, provider, username))
        calls = [f"{own}__echo", f"{other}__echo", "shared__echo", "nobody__echo"]
        auth = sdk_provider(url, storage, login)  # type: ignore[arg-type]
        names, outcomes = run_sdk(username, url, auth, calls)

        # Logged in once, through the provider, for this namespace's MCP endpoint.
        assert len(login.redirects) == 1 and query(login.redirects[0])["iss"] == gateway.url
        assert storage.tokens is not None and storage.tokens.refresh_token
        tokens[username] = storage.tokens.access_token

        # Only their own connection's tools.
        assert f"{own}__echo" in names, names
        assert all(name.startswith(f"{own}__") for name in names), names
        assert outcomes[f"{own}__echo"] == ("result", "hi")
        # The other person's tool, and the shared one (no userId), are as unknown as a made-up one.
        unknown = outcomes["nobody__echo"]
        assert unknown[0] != "result", unknown
        assert outcomes[f"{other}__echo"] == unknown, outcomes
        assert outcomes["shared__echo"] == unknown, outcomes

    # The same access tokens on REST: refused (it was not consented to); each sees its own grant.
    for username in people:
        bearer = {"Authorization": f"Bearer {tokens[username]}"}
        with httpx2.Client(base_url=gateway.url, headers=bearer, timeout=LIMIT, trust_env=False) as rest:
            assert rest.get(f"/{NAMESPACE}").status_code == 401
            own = rest.get("/oauth/grants").json()["grants"]
            assert [g["subject"] for g in own] == [f"{username}@example.test"]

    # The grants say who signed in: the identity claim, not the provider's `sub`.
    subjects = sorted((g["subject"], g["namespace"]) for g in grants(gateway))
    assert subjects == [("alice@example.test", NAMESPACE), ("bob@example.test", NAMESPACE)]


def test_namespaces_setting_refuses_consent_for_another_namespace(
    sso: Callable[..., tuple[Gateway, OidcProvider]],
    modern_upstream: Upstream,
    browsers: Callable[..., Browser],
) -> None:
    gateway, provider = sso(JUNCTION_OIDC_NAMESPACES="other")
    make_namespace(gateway, modern_upstream)
    make_namespace(gateway, modern_upstream, "other")
    alice = browsers(gateway, provider, "alice")

    refused = alice.consent_page(authorize_url(gateway, NAMESPACE))
    assert_refused(refused, 403, "alice@example.test may not use namespace &#39;team&#39;")
    assert 'id="consent"' not in refused.text
    assert grants(gateway) == []

    # The namespace the setting names: the same person, the same provider, consent is offered.
    redirect = alice.authorize(authorize_url(gateway, "other"))
    assert query(redirect)["code"]
    assert [g["namespace"] for g in grants(gateway)] == ["other"]


def test_callback_needs_the_untampered_state_and_the_browsers_cookie(
    sso: Callable[..., tuple[Gateway, OidcProvider]],
    modern_upstream: Upstream,
    browsers: Callable[..., Browser],
) -> None:
    gateway, provider = sso()
    make_namespace(gateway, modern_upstream)
    alice = browsers(gateway, provider, "alice")
    callback = alice.provider_login(alice.to_provider(alice.sign_in_page(authorize_url(gateway, NAMESPACE))))
    params = query(callback)
    state = params["state"]

    # One character of the sealed state changed.
    middle = len(state) // 2
    tampered = state[:middle] + ("A" if state[middle] != "A" else "B") + state[middle + 1 :]
    forged = gateway.url + CALLBACK + "?" + urlencode({"code": params["code"], "state": tampered})
    assert_refused(alice.callback(forged), 400, "this sign-in page is not valid")
    # No state at all.
    stateless = gateway.url + CALLBACK + "?" + urlencode({"code": params["code"]})
    assert_refused(alice.callback(stateless), 400, "this sign-in page is incomplete")
    # The genuine URL, opened in another browser (no cookie from this sign-in).
    with httpx2.Client(timeout=LIMIT, follow_redirects=False, trust_env=False) as elsewhere:
        assert_refused(elsewhere.get(callback), 400, "cookie missing")
    assert grants(gateway) == []

    # None of that used the provider's code: the genuine callback in the genuine browser goes on.
    consent = alice.callback(callback)
    assert consent.status_code == 200 and 'id="consent"' in consent.text, describe(consent)
    assert "alice@example.test" in consent.text


def test_consent_approval_needs_the_browsers_cookie(
    sso: Callable[..., tuple[Gateway, OidcProvider]],
    modern_upstream: Upstream,
    browsers: Callable[..., Browser],
) -> None:
    gateway, provider = sso()
    make_namespace(gateway, modern_upstream)
    alice = browsers(gateway, provider, "alice")
    consent = alice.consent_page(authorize_url(gateway, NAMESPACE))
    assert consent.status_code == 200 and 'id="consent"' in consent.text, describe(consent)
    (form,) = [f for f in forms(consent.text) if f.id == "consent"]
    approval = form.fields | {"decision": "approve"}
    assert set(approval) == {"flow", "namespace", "decision"} and approval["namespace"] == NAMESPACE
    target = urljoin(str(consent.url), form.action)
    assert urlsplit(target).path == "/authorize/consent"

    # Another site makes a browser post the approval: without the cookie of this sign-in...
    with httpx2.Client(timeout=LIMIT, follow_redirects=False, trust_env=False) as elsewhere:
        assert_refused(elsewhere.post(target, data=approval), 400, "cookie missing")
    # ... or with the cookie of that browser's own, different sign-in.
    eve = browsers(gateway, provider, "eve")
    eve.sign_in_page(authorize_url(gateway, NAMESPACE))
    assert eve.http.cookies.get("junction_oauth"), "the sign-in page set no cookie"
    assert_refused(eve.http.post(target, data=approval), 400, "cookie missing")
    assert grants(gateway) == []

    # The person's own browser: allowed, back to the app with a code.
    answer = alice.approve(consent)
    assert answer.status_code == 303, describe(answer)
    back = query(answer.headers["location"])
    assert answer.headers["location"].startswith(REDIRECT + "?") and back["code"]
    assert back["iss"] == gateway.url
    assert [g["subject"] for g in grants(gateway)] == ["alice@example.test"]


def test_code_of_an_oidc_sign_in_exchanges_for_a_working_token(
    sso: Callable[..., tuple[Gateway, OidcProvider]],
    modern_upstream: Upstream,
    browsers: Callable[..., Browser],
) -> None:
    """The token endpoint by hand (what the SDK does in the first test), step by step."""
    gateway, provider = sso()
    make_namespace(gateway, modern_upstream)
    app = app_request(gateway, NAMESPACE)
    code = query(browsers(gateway, provider, "alice").authorize(app.url))["code"]
    exchanged = httpx2.post(
        gateway.url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": app.client_id,
            "code_verifier": app.verifier,
            "resource": app.resource,
        },
        timeout=LIMIT,
        trust_env=False,
    )
    assert exchanged.status_code == 200, f"POST /token for an oidc sign-in's code: {describe(exchanged)}"
    access = exchanged.json()["access_token"]
    listed = httpx2.post(
        f"{gateway.url}/mcp/{NAMESPACE}",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}},
        headers={
            "Authorization": f"Bearer {access}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/list",
        },
        timeout=LIMIT,
        trust_env=False,
    )
    assert listed.status_code == 200, describe(listed)
    names = {t["name"] for t in listed.json()["result"]["tools"]}
    assert "alice-gh__echo" in names and all(n.startswith("alice-gh__") for n in names)
