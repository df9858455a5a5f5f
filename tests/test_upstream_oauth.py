"""The gateway as the OAuth client of an upstream: a real OAuth 2.1 authorization server (built with
authlib, `tests/upstreams/oauth_upstream.py`) in front of a real protected MCP server.

The person at the browser is an HTTP client: it opens the connection's `setupUrl`, follows the
redirect to the authorization server, approves its consent form, and follows the redirect back to
the gateway's callback.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests._browser import serving

_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def _browser() -> httpx2.Client:
    return httpx2.Client(timeout=30.0, follow_redirects=False, trust_env=False)


_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


def open_setup(browser: httpx2.Client, setup_url: str) -> httpx2.Response:
    """Open the setup link and press "Continue": the redirect to the authorization server."""
    page = browser.get(setup_url)
    assert page.status_code == 200 and 'id="continue"' in page.text, page.text
    fields = {name: html.unescape(value) for name, value in _HIDDEN.findall(page.text)}
    to_as = browser.post(html.unescape(_ACTION.findall(page.text)[0]), data=fields)
    assert to_as.status_code == 303, to_as.text
    return to_as


def authorize(
    setup_url: str, decision: str = "approve", browser: httpx2.Client | None = None
) -> tuple[httpx2.Response, str]:
    """Play the user: open `setup_url`, approve at the authorization server, come back. The
    gateway's final answer, and the callback URL it was reached at."""
    with browser or _browser() as browser:
        to_as = open_setup(browser, setup_url)
        consent = browser.get(to_as.headers["location"])
        assert consent.status_code == 200, consent.text
        form = {name: html.unescape(value) for name, value in _HIDDEN.findall(consent.text)}
        form["decision"] = decision
        action = urlsplit(to_as.headers["location"])
        back = browser.post(f"{action.scheme}://{action.netloc}{action.path}", data=form)
        assert back.status_code in (302, 303), back.text
        callback = back.headers["location"]
        return browser.get(callback), callback


def _status(client: httpx2.Client, ns: str, cid: str) -> dict[str, Any]:
    status: dict[str, Any] = client.get(f"/{ns}/{cid}").json()["status"]
    return status


def _whoami(client: httpx2.Client, ns: str, cid: str) -> httpx2.Response:
    return client.post(f"/{ns}/{cid}/.tools/whoami", json={})


def _mcp(gateway: Any, ns: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request through the namespace endpoint with the SDK client: `{"result": ...}` or
    `{"error": {"code", "message", "data"}}`."""

    async def go() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {gateway.admin_key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(
                streamable_http_client(gateway.mcp_url(ns), http_client=http), mode="legacy"
            ) as client:
                try:
                    if method == "tools/list":
                        listed = await client.list_tools()
                        return {"result": {"tools": [{"name": t.name} for t in listed.tools]}}
                    assert params is not None
                    result = await client.call_tool(params["name"], params.get("arguments", {}))
                    return {"result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}
                except MCPError as exc:
                    return {"error": {"code": exc.code, "message": exc.error.message, "data": exc.error.data}}

    return anyio.run(go)


def _connect(
    gateway: Any, upstream: Any, ns: str = "apps", cid: str = "remote", **body: Any
) -> dict[str, Any]:
    with gateway.client() as client:
        client.put(f"/namespaces/{ns}")
        created = client.put(f"/{ns}/{cid}", json={"mcpUrl": upstream.url, **body})
        assert created.status_code == 201, created.text
        return created.json()  # type: ignore[no-any-return]


# --- the first connection, end to end --------------------------------------------------------------


def test_an_oauth_upstream_is_auth_required_until_its_user_authorizes(gateway, start_oauth_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream(cimd=False)  # dynamic client registration
    created = _connect(gateway, upstream)
    status = created["status"]
    assert status["state"] == "auth_required"
    assert status["setupUrl"] == status["authorizationUrl"]
    assert status["setupUrl"].startswith(gateway.url + "/setup/apps/remote?")
    with gateway.client() as client:
        # Until then: a clear 401 on REST, -32001 on MCP, and no tools in the namespace's list.
        refused = _whoami(client, "apps", "remote")
        assert refused.status_code == 401 and refused.json()["error"] == "auth_required"
        assert refused.json()["setupUrl"].startswith(gateway.url + "/setup/")
    listing = _mcp(gateway, "apps", "tools/list")
    assert [t["name"] for t in listing["result"]["tools"]] == []
    call = _mcp(gateway, "apps", "tools/call", {"name": "remote__whoami", "arguments": {}})
    assert call["error"]["code"] == -32001
    assert call["error"]["data"]["authorizationUrl"].startswith(gateway.url + "/setup/apps/remote?")

    page, _ = authorize(status["setupUrl"])
    assert page.status_code == 200 and 'id="state">connected<' in page.text, page.text
    with gateway.client() as client:
        assert _status(client, "apps", "remote") == {"state": "connected"}
        answer = _whoami(client, "apps", "remote")
        assert answer.status_code == 200, answer.text
        assert '"scope"' in answer.json()["content"][0]["text"]
    names = [t["name"] for t in _mcp(gateway, "apps", "tools/list")["result"]["tools"]]
    assert "remote__whoami" in names and "remote__echo" in names
    stats = upstream.stats()
    assert stats["registrations"] == 1 and stats["token_codes"] == 1
    assert upstream.url in stats["resources"]  # RFC 8707: the token is for this server


def test_a_client_metadata_document_replaces_registration_where_supported(
    gateway, start_oauth_upstream
) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream(cimd=True, dcr=False)
    status = _connect(gateway, upstream)["status"]
    assert status["state"] == "auth_required"
    page, _ = authorize(status["setupUrl"])
    assert 'id="state">connected<' in page.text, page.text
    stats = upstream.stats()
    assert stats["registrations"] == 0 and stats["cimd_fetches"] >= 1
    assert gateway.url + "/oauth/client-metadata.json" in stats["clients"]
    document = httpx2.get(gateway.url + "/oauth/client-metadata.json", trust_env=False).json()
    assert document["client_id"] == gateway.url + "/oauth/client-metadata.json"
    assert document["redirect_uris"] == [gateway.url + "/oauth/callback"]


def test_an_authorization_server_without_registration_uses_the_configured_app(
    gateway, start_oauth_upstream
) -> None:  # type: ignore[no-untyped-def]
    secret = "app-secret-" + "s" * 20
    upstream = start_oauth_upstream(
        cimd=False,
        dcr=False,
        client_id="junction-app",
        client_secret=secret,
        redirect_uris=[gateway.url + "/oauth/callback"],
    )
    clients = [{"issuer": upstream.issuer, "client_id": "junction-app", "client_secret": secret}]
    gateway.env["JUNCTION_UPSTREAM_OAUTH_CLIENTS"] = json.dumps(clients)
    gateway.restart()
    status = _connect(gateway, upstream)["status"]
    assert status["state"] == "auth_required", status
    page, _ = authorize(status["setupUrl"])
    assert 'id="state">connected<' in page.text, page.text
    assert upstream.stats()["clients"] == ["junction-app"]


# --- tokens over time ---------------------------------------------------------------------------------


def test_tokens_are_refreshed_before_they_expire_and_no_call_fails(
    start_gateway, start_oauth_upstream
) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream(access_ttl=2.0)
    gateway = start_gateway(JUNCTION_UPSTREAM_REFRESH_POLL="0.2")
    page, _ = authorize(_connect(gateway, upstream)["status"]["setupUrl"])
    assert 'id="state">connected<' in page.text, page.text
    failures: list[str] = []
    calls = 0
    deadline = time.monotonic() + 7.5  # several 2 s lifetimes
    with gateway.client() as client:
        while time.monotonic() < deadline:
            answer = client.post("/apps/remote/.tools/echo", json={"text": f"n{calls}"})
            calls += 1
            if answer.status_code != 200 or answer.json().get("isError"):
                failures.append(answer.text)
            time.sleep(0.05)
        assert _status(client, "apps", "remote") == {"state": "connected"}
    stats = upstream.stats()
    assert failures == [] and calls > 50
    assert stats["refreshes"] >= 3 and stats["refresh_failures"] == 0, stats


def test_two_gateways_on_one_database_refresh_once_not_twice(
    start_gateway, start_oauth_upstream, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream(access_ttl=2.0)
    upstream.set_refresh_delay(0.3)  # a refresh in flight long enough for the other to try too
    shared = {
        "JUNCTION_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        "JUNCTION_MASTER_KEY": base64.b64encode(b"m" * 32).decode(),
        "JUNCTION_ADMIN_KEY": "shared-admin-key-" + "y" * 24,
        "JUNCTION_UPSTREAM_REFRESH_POLL": "0.2",
    }
    a = start_gateway(**shared)
    b = start_gateway(**shared, JUNCTION_PUBLIC_URL=a.url)  # one public URL, as behind a balancer
    page, _ = authorize(_connect(a, upstream)["status"]["setupUrl"])
    assert 'id="state">connected<' in page.text, page.text
    failures: list[str] = []
    deadline = time.monotonic() + 7.5
    with a.client() as on_a, b.client() as on_b:
        while time.monotonic() < deadline:
            for client in (on_a, on_b):
                answer = client.post("/apps/remote/.tools/echo", json={"text": "x"})
                if answer.status_code != 200 or answer.json().get("isError"):
                    failures.append(answer.text)
            time.sleep(0.05)
        assert _status(on_a, "apps", "remote")["state"] == "connected"
        assert _status(on_b, "apps", "remote")["state"] == "connected"
    stats = upstream.stats()
    assert failures == []
    # Rotation revokes the family on a reused refresh token: a second refresh would have failed.
    assert stats["refresh_failures"] == 0, stats
    assert 3 <= stats["refreshes"] <= 5, stats  # about one per 1.5 s of 7.5 s, not two


def test_an_upstream_401_refreshes_once_and_retries_on_both_paths(gateway, start_oauth_upstream) -> None:  # type: ignore[no-untyped-def]
    """Tokens the server dropped early: the fast lane (tools/call) and the SDK path (tools/list)
    each get one 401, refresh, and send the request again; the caller sees nothing."""
    upstream = start_oauth_upstream()  # tokens live an hour: no refresh is due by the clock
    authorize(_connect(gateway, upstream)["status"]["setupUrl"])
    with gateway.client() as client:
        assert client.post("/apps/remote/.tools/echo", json={"text": "a"}).status_code == 200
        upstream.expire_access_tokens()
        answer = client.post("/apps/remote/.tools/echo", json={"text": "b"})
        assert answer.status_code == 200 and answer.json()["content"][0]["text"] == "b", answer.text
        assert upstream.stats()["refreshes"] == 1
        upstream.expire_access_tokens()
        # Anything but tools/call goes through the SDK's client: the server's own answer comes back.
        # (The server has no prompts: its own "method not found" is the answer that proves it.)
        prompts = client.post(
            "/mcp/apps/remote",
            json={"jsonrpc": "2.0", "id": 7, "method": "prompts/list", "params": {}},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert prompts.json()["error"]["code"] == -32601, prompts.text
    stats = upstream.stats()
    assert stats["refreshes"] == 2 and stats["refresh_failures"] == 0 and stats["token_codes"] == 1


def test_a_revoked_grant_turns_the_connection_auth_required_again(
    start_gateway, start_oauth_upstream
) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream()
    gateway = start_gateway()
    first = _connect(gateway, upstream)["status"]["setupUrl"]
    authorize(first)
    with gateway.client() as client:
        assert _whoami(client, "apps", "remote").status_code == 200
        upstream.revoke_refresh_tokens()  # the user removed the app at the provider
        refused = _whoami(client, "apps", "remote")
        assert refused.status_code == 401 and refused.json()["error"] == "auth_required", refused.text
        status = _status(client, "apps", "remote")
        assert status["state"] == "auth_required" and status["setupUrl"] != first
    assert [t["name"] for t in _mcp(gateway, "apps", "tools/list")["result"]["tools"]] == []
    page, _ = authorize(status["setupUrl"])
    assert 'id="state">connected<' in page.text, page.text
    with gateway.client() as client:
        assert _whoami(client, "apps", "remote").status_code == 200


def test_an_upstream_that_quotes_its_token_never_shows_it_to_the_caller(
    gateway, start_oauth_upstream
) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream()
    authorize(_connect(gateway, upstream)["status"]["setupUrl"])
    with gateway.client() as client:
        answer = client.post("/apps/remote/.tools/careless", json={})
    assert answer.status_code == 200 and answer.json()["isError"] is True, answer.text
    assert answer.json()["content"][0]["text"] == "refused: the token [redacted] may not do that"
    through_mcp = _mcp(gateway, "apps", "tools/call", {"name": "remote__careless", "arguments": {}})
    assert through_mcp["result"]["content"][0]["text"] == "refused: the token [redacted] may not do that"


def test_an_authorized_connection_survives_a_gateway_restart(start_gateway, start_oauth_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream()
    gateway = start_gateway()
    authorize(_connect(gateway, upstream)["status"]["setupUrl"])
    gateway.restart()
    with gateway.client() as client:
        assert _whoami(client, "apps", "remote").status_code == 200
    assert upstream.stats()["token_codes"] == 1


def test_insufficient_scope_asks_the_user_for_the_union_of_scopes(gateway, start_oauth_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream(scopes="read admin")
    with gateway.client() as client:
        client.put("/namespaces/apps")
        client.put("/apps/remote", json={"mcpUrl": upstream.url})
        status = _status(client, "apps", "remote")
    with _browser() as browser:
        scope = parse_qs(urlsplit(open_setup(browser, status["setupUrl"]).headers["location"]).query)[
            "scope"
        ][0]
    assert scope.split() == ["read"]  # what the 401 challenge asked for
    authorize(status["setupUrl"])
    with gateway.client() as client:
        stepped = client.post("/apps/remote/.tools/admin_only", json={})
        assert stepped.status_code == 401 and stepped.json()["error"] == "auth_required", stepped.text
        status = _status(client, "apps", "remote")
    with _browser() as browser:
        scope = parse_qs(urlsplit(open_setup(browser, status["setupUrl"]).headers["location"]).query)[
            "scope"
        ][0]
    assert scope.split() == ["read", "admin"]
    authorize(status["setupUrl"])
    with gateway.client() as client:
        answer = client.post("/apps/remote/.tools/admin_only", json={})
        assert answer.status_code == 200 and answer.json()["content"][0]["text"] == "admin ok", answer.text


def test_deleting_a_connection_revokes_its_upstream_tokens(gateway, start_oauth_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream()
    authorize(_connect(gateway, upstream)["status"]["setupUrl"])
    assert upstream.stats()["active_refresh_tokens"] == 1
    with gateway.client() as client:
        assert client.delete("/apps/remote").status_code == 200
    stats = upstream.stats()
    assert stats["revocations"] >= 1 and stats["active_refresh_tokens"] == 0


# --- what the callback refuses ------------------------------------------------------------------------


def test_the_callback_refuses_unknown_state_replays_and_the_wrong_issuer(
    gateway, start_oauth_upstream
) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream()
    status = _connect(gateway, upstream)["status"]
    with _browser() as browser:
        forged = browser.get(
            gateway.url + "/oauth/callback?code=abc&state=not-a-state&iss=" + upstream.issuer
        )
        assert forged.status_code == 400 and "start again" in forged.text
    # The way back in another browser than the one that began (a link sent to someone else):
    with _browser() as mine, _browser() as theirs:
        to_as = open_setup(mine, status["setupUrl"])
        consent = mine.get(to_as.headers["location"])
        form = {name: html.unescape(value) for name, value in _HIDDEN.findall(consent.text)}
        action = urlsplit(to_as.headers["location"])
        back = mine.post(
            f"{action.scheme}://{action.netloc}{action.path}", data={**form, "decision": "approve"}
        )
        elsewhere = theirs.get(back.headers["location"])
    assert elsewhere.status_code == 400 and "another browser" in elsewhere.text
    page, callback = authorize(status["setupUrl"])
    assert 'id="state">connected<' in page.text
    with _browser() as browser:
        replay = browser.get(callback)
    assert replay.status_code == 400 and "already completed or has expired" in replay.text
    assert upstream.stats()["token_codes"] == 1  # the replayed code never reached the server

    wrong = start_oauth_upstream(iss="wrong")
    status = _connect(gateway, wrong, cid="other")["status"]
    page, _ = authorize(status["setupUrl"])
    assert page.status_code == 400 and "(iss)" in page.text
    assert wrong.stats()["token_codes"] == 0
    with gateway.client() as client:
        assert _status(client, "apps", "other")["state"] == "auth_required"


def test_an_authorization_server_at_a_forbidden_address_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    """An upstream whose metadata points the gateway at the cloud metadata address: never fetched."""
    seen: list[str] = []

    class Evil(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.path)
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path == "/.well-known/oauth-protected-resource/mcp":
                body = json.dumps(
                    {"resource": base + "/mcp", "authorization_servers": ["http://169.254.169.254/latest"]}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
            else:
                body = b""
                self.send_response(401)
                prm = base + "/.well-known/oauth-protected-resource/mcp"
                self.send_header("www-authenticate", f'Bearer resource_metadata="{prm}"')
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    with serving(server):
        with gateway.client() as client:
            client.put("/namespaces/apps")
            created = client.put(
                "/apps/evil", json={"mcpUrl": f"http://127.0.0.1:{server.server_address[1]}/mcp"}
            )
        status = created.json()["status"]
    assert status["state"] == "error", status
    assert "169.254.169.254" in status["message"], status
    assert "/.well-known/oauth-protected-resource/mcp" in seen
