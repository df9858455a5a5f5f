"""The gateway's authorization server over real HTTP: discovery documents, the challenge on every
401, the code flow and its refusals (PKCE, reused codes, redirect URIs, resources, CSRF), refresh
rotation, audience binding, scopes, `/mcp` itself, and the grants people can list and revoke."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest
from _oauth import Person, hidden_fields, query
from conftest import Gateway, Upstream
from test_tokens import MODERN_META, mint

REDIRECT = "http://127.0.0.1:9/callback"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture
def gw(gateway: Gateway, modern_upstream: Upstream) -> Gateway:
    """Namespaces `team` (alice's and bob's connections) and `other` (one connection)."""
    with gateway.client() as admin:
        for ns in ("team", "other"):
            assert admin.put(f"/namespaces/{ns}").status_code in (200, 201)
        for ns, cid, user in (("team", "alice", "alice"), ("team", "bob", "bob"), ("other", "main", None)):
            body: dict[str, Any] = {"mcpUrl": modern_upstream.url}
            if user:
                body["metadata"] = {"userId": user}
            assert admin.put(f"/{ns}/{cid}", json=body).status_code == 201
    return gateway


def register(gw: Gateway, **extra: Any) -> dict[str, Any]:
    body = {"client_name": "Test client", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
    response = httpx2.post(gw.url + "/register", json={**body, **extra}, timeout=10)
    assert response.status_code == 201, response.text
    return dict(response.json())


class Code:
    """One authorization request's PKCE pair and the URL that starts it."""

    def __init__(self, gw: Gateway, client_id: str, resource: str | None, **params: str):
        self.verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=")
        self.state = secrets.token_urlsafe(8)
        fields = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
            "state": self.state,
            **({"resource": resource} if resource is not None else {}),
            **params,
        }
        self.url = gw.url + "/authorize?" + urlencode(fields)


def token(gw: Gateway, **form: str) -> httpx2.Response:
    return httpx2.post(gw.url + "/token", data=form, timeout=10)


def login(
    gw: Gateway, client_id: str, ns: str | None, credential: str, resource: str | None = None, **params: str
) -> dict[str, Any]:
    """The whole code flow for a public client: answers the token response."""
    resource = resource or (gw.mcp_url(ns) if ns else gw.url + "/mcp")
    code = Code(gw, client_id, resource, **params)
    person = Person(gw.url)
    try:
        back = query(person.authorize(code.url, credential))
    finally:
        person.close()
    assert back["state"] == code.state and back["iss"] == gw.url
    answer = token(
        gw,
        grant_type="authorization_code",
        code=back["code"],
        redirect_uri=REDIRECT,
        client_id=client_id,
        code_verifier=code.verifier,
        resource=resource,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return dict(answer.json())


def rpc(gw: Gateway, path: str, bearer: str, method: str, params: Any = None) -> httpx2.Response:
    """One stateless (2026-07-28) request."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**(params or {}), "_meta": MODERN_META}}
    headers = {
        **ACCEPT,
        "authorization": f"Bearer {bearer}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
        **({"mcp-name": params["name"]} if params and "name" in params else {}),
    }
    return httpx2.post(gw.url + path, json=body, headers=headers, timeout=30)


def initialize(gw: Gateway, bearer: str, client_name: str) -> httpx2.Response:
    """A 2025-11-25 initialize on /mcp/team, as Claude sends it (it opens a legacy session)."""
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": client_name, "version": "1"},
    }
    return httpx2.post(
        gw.url + "/mcp/team",
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params},
        headers={**ACCEPT, "authorization": f"Bearer {bearer}"},
        timeout=30,
    )


def tool_names(response: httpx2.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(t["name"] for t in response.json()["result"]["tools"])


# --- discovery ---------------------------------------------------------------------------------


def test_protected_resource_metadata_names_each_endpoint_exactly(gw: Gateway) -> None:
    for path in ("/mcp/team", "/mcp", "/mcp/team/alice", "/connect/team/alice/mcp"):
        doc = httpx2.get(gw.url + "/.well-known/oauth-protected-resource" + path).json()
        assert doc["resource"] == gw.url + path  # byte-equal: VS Code compares exactly
        assert doc["authorization_servers"] == [gw.url]
        assert doc["scopes_supported"] == ["read", "execute"]
    root = httpx2.get(gw.url + "/.well-known/oauth-protected-resource").json()
    assert root["resource"] == gw.url and root["authorization_servers"] == [gw.url]


def test_authorization_server_metadata_at_both_discovery_paths(gw: Gateway) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        response = httpx2.get(gw.url + path)
        assert response.status_code == 200
        doc = response.json()
        assert doc["issuer"] == gw.url
        assert doc["authorization_endpoint"] == gw.url + "/authorize"
        assert doc["token_endpoint"] == gw.url + "/token"
        assert doc["registration_endpoint"] == gw.url + "/register"
        assert doc["revocation_endpoint"] == gw.url + "/revoke"
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert doc["client_id_metadata_document_supported"] is True
        assert doc["authorization_response_iss_parameter_supported"] is True
        assert set(doc["token_endpoint_auth_methods_supported"]) == {
            "none",
            "client_secret_post",
            "client_secret_basic",
        }


def test_every_401_on_an_mcp_path_says_where_to_log_in_and_what_to_ask(gw: Gateway) -> None:
    for path in ("/mcp/team", "/mcp", "/mcp/team/alice"):
        for headers in ({}, {"authorization": "Bearer not-a-valid-token"}):
            response = httpx2.post(gw.url + path, json={}, headers={**ACCEPT, **headers})
            assert response.status_code == 401
            challenge = response.headers["www-authenticate"]
            assert f'resource_metadata="{gw.url}/.well-known/oauth-protected-resource{path}"' in challenge
            assert 'scope="read execute"' in challenge
            assert ('error="invalid_token"' in challenge) == bool(headers)


def test_urls_come_from_the_public_url_not_the_host_header(start_gateway: Any) -> None:
    gw = start_gateway(JUNCTION_PUBLIC_URL="https://mcp.example.com")
    doc = httpx2.get(
        gw.url + "/.well-known/oauth-protected-resource/mcp/x", headers={"host": "evil.test"}
    ).json()
    assert doc["resource"] == "https://mcp.example.com/mcp/x"
    assert doc["authorization_servers"] == ["https://mcp.example.com"]
    meta = httpx2.get(
        gw.url + "/.well-known/oauth-authorization-server", headers={"host": "evil.test"}
    ).json()
    assert meta["token_endpoint"] == "https://mcp.example.com/token"


# --- the code flow -----------------------------------------------------------------------------


def test_a_login_yields_tokens_bound_to_the_namespace_it_was_asked_for(gw: Gateway) -> None:
    client = register(gw)
    tokens = login(gw, client["client_id"], "team", gw.admin_key)
    assert tokens["token_type"] == "Bearer" and 0 < tokens["expires_in"] <= 3600
    assert tokens["scope"] == "read execute" and tokens["refresh_token"].startswith("jrt_")
    access = tokens["access_token"]
    listed = tool_names(rpc(gw, "/mcp/team", access, "tools/list"))
    assert "alice__echo" in listed and "bob__echo" in listed
    # Another namespace's endpoint refuses it: the audience is /mcp/team.
    other = rpc(gw, "/mcp/other", access, "tools/list")
    assert other.status_code == 401
    assert 'error="invalid_token"' in other.headers["www-authenticate"]
    # The REST API is not what was consented to: only the grant's own listing answers it.
    with httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {access}"}) as rest:
        for method, path in (
            ("GET", "/team"),
            ("GET", "/other"),
            ("POST", "/namespaces"),
            ("POST", "/tokens"),
        ):
            refused = rest.request(method, path, json={})
            assert refused.status_code == 401, (method, path)
            assert "only for the MCP endpoint it was issued for" in refused.json()["message"]
        assert rest.get("/oauth/grants").status_code == 200
    # A token for one connection's endpoint is good there, not on its namespace's.
    narrow = login(gw, client["client_id"], None, gw.admin_key, resource=gw.mcp_url("team", "alice"))
    assert rpc(gw, "/mcp/team/alice", narrow["access_token"], "tools/list").status_code == 200
    assert rpc(gw, "/mcp/team", narrow["access_token"], "tools/list").status_code == 401
    assert rpc(gw, "/mcp/team/bob", narrow["access_token"], "tools/list").status_code == 401


def test_pkce_is_required_and_checked(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    # Plain PKCE is refused (an error page: a registered client's redirect URI is not trusted
    # before the person did anything).
    bare = Code(gw, client, gw.mcp_url("team"))
    no_pkce = httpx2.get(bare.url.replace("code_challenge_method=S256", "code_challenge_method=plain"))
    assert no_pkce.status_code == 400 and "PKCE is required" in no_pkce.text
    # A wrong verifier is refused, and so is the right one afterwards (the code was spent).
    code = Code(gw, client, gw.mcp_url("team"))
    person = Person(gw.url)
    back = query(person.authorize(code.url, gw.admin_key))
    exchange = dict(
        grant_type="authorization_code", code=back["code"], redirect_uri=REDIRECT, client_id=client
    )
    wrong = token(gw, **exchange, code_verifier=secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    again = token(gw, **exchange, code_verifier=code.verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_reused_code_is_refused_and_revokes_what_it_gave(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    code = Code(gw, client, gw.mcp_url("team"))
    back = query(Person(gw.url).authorize(code.url, gw.admin_key))
    form = dict(
        grant_type="authorization_code",
        code=back["code"],
        redirect_uri=REDIRECT,
        client_id=client,
        code_verifier=code.verifier,
    )
    first = token(gw, **form)
    assert first.status_code == 200
    access = first.json()["access_token"]
    assert rpc(gw, "/mcp/team", access, "tools/list").status_code == 200
    second = token(gw, **form)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    assert rpc(gw, "/mcp/team", access, "tools/list").status_code == 401
    refresh = token(
        gw, grant_type="refresh_token", refresh_token=first.json()["refresh_token"], client_id=client
    )
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant"


def test_redirect_uris_must_match_exactly_and_never_redirect_elsewhere(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    for evil in (
        "https://evil.example/cb",
        REDIRECT + "/",
        REDIRECT + "?x=1",
        "http://127.0.0.1:9/callbacks",
    ):
        url = Code(gw, client, gw.mcp_url("team"), redirect_uri=evil).url
        response = httpx2.get(url)
        assert response.status_code == 400, evil
        assert "location" not in response.headers
        assert "redirect_uri is not one this client registered" in response.text
    unknown = httpx2.get(Code(gw, "jc_nobody", gw.mcp_url("team")).url)
    assert unknown.status_code == 400 and "location" not in unknown.headers
    # At the token endpoint, a different (registered) redirect URI than the request's is refused.
    other = register(gw, redirect_uris=[REDIRECT, "http://127.0.0.1:9/other"])["client_id"]
    code = Code(gw, other, gw.mcp_url("team"))
    back = query(Person(gw.url).authorize(code.url, gw.admin_key))
    answer = token(
        gw,
        grant_type="authorization_code",
        code=back["code"],
        redirect_uri="http://127.0.0.1:9/other",
        client_id=other,
        code_verifier=code.verifier,
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_resource_is_required_and_must_be_one_of_ours(start_gateway: Any) -> None:
    configured = [{"client_id": "cfg-app", "client_name": "Configured", "redirect_uris": [REDIRECT]}]
    gw = start_gateway(JUNCTION_OAUTH_CLIENTS=json.dumps(configured))
    registered = register(gw)["client_id"]
    for resource in (None, "https://elsewhere.example/mcp", gw.url + "/namespaces", gw.url + "/mcp/team/"):
        # A configured client's redirect URI is trusted: the error goes back to it (RFC 6749).
        response = httpx2.get(Code(gw, "cfg-app", resource).url)
        assert response.status_code == 302, resource
        back = query(response.headers["location"])
        assert back["error"] == "invalid_target" and back["iss"] == gw.url and "state" in back
        # Anyone may register a client: before the person did anything, no redirect to it at all
        # (else the gateway would be an open redirector), the error is a page.
        page = httpx2.get(Code(gw, registered, resource).url)
        assert page.status_code == 400 and "location" not in page.headers
        assert "MCP endpoint" in page.text


def test_registration_validates_its_input(gw: Gateway) -> None:
    cases = [
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://example.com/cb"]}, "invalid_redirect_uri"),  # http off loopback
        (
            {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"},
            "invalid_client_metadata",
        ),
        ({"redirect_uris": [REDIRECT], "grant_types": ["password"]}, "invalid_client_metadata"),
    ]
    for body, error in cases:
        response = httpx2.post(gw.url + "/register", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"] == error
    # A confidential client gets a secret once, and must send it (either way) at the token endpoint.
    confidential = register(gw, token_endpoint_auth_method="client_secret_post")
    assert confidential["client_secret"] and confidential["client_secret_expires_at"] == 0
    missing = token(
        gw, grant_type="refresh_token", refresh_token="jrt_x", client_id=confidential["client_id"]
    )
    assert missing.status_code == 401 and missing.json()["error"] == "invalid_client"
    wrong = httpx2.post(
        gw.url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": "jrt_x"},
        auth=(confidential["client_id"], "wrong"),
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    right = httpx2.post(
        gw.url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": "jrt_x"},
        auth=(confidential["client_id"], confidential["client_secret"]),
    )
    assert right.status_code == 400 and right.json()["error"] == "invalid_grant"


def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_family(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", gw.admin_key)
    fresh = token(gw, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client)
    assert fresh.status_code == 200, fresh.text
    rotated = fresh.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rpc(gw, "/mcp/team", rotated["access_token"], "tools/list").status_code == 200
    # The old refresh token again: someone copied it. The whole grant ends.
    replay = token(gw, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert rpc(gw, "/mcp/team", rotated["access_token"], "tools/list").status_code == 401
    newest = token(gw, grant_type="refresh_token", refresh_token=rotated["refresh_token"], client_id=client)
    assert newest.status_code == 400 and newest.json()["error"] == "invalid_grant"
    # A refresh token belongs to its client.
    other = login(gw, client, "team", gw.admin_key)
    stolen = token(
        gw,
        grant_type="refresh_token",
        refresh_token=other["refresh_token"],
        client_id=register(gw)["client_id"],
    )
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"


def test_revoke_endpoint_ends_the_grant(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", gw.admin_key)
    answer = httpx2.post(gw.url + "/revoke", data={"token": tokens["refresh_token"], "client_id": client})
    assert answer.status_code == 200
    assert rpc(gw, "/mcp/team", tokens["access_token"], "tools/list").status_code == 401
    # Revoking an access token works the same way; an unknown token is still a 200 (RFC 7009).
    again = login(gw, client, "team", gw.admin_key)
    assert (
        httpx2.post(
            gw.url + "/revoke", data={"token": again["access_token"], "client_id": client}
        ).status_code
        == 200
    )
    assert rpc(gw, "/mcp/team", again["access_token"], "tools/list").status_code == 401
    assert httpx2.post(gw.url + "/revoke", data={"token": "nonsense", "client_id": client}).status_code == 200


# --- the pages ---------------------------------------------------------------------------------


def test_pages_cannot_be_framed_and_a_bad_key_is_told(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    person = Person(gw.url)
    page = person.open(Code(gw, client, gw.mcp_url("team")).url)
    assert page.status_code == 200 and "Test client" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    bad = person.http.post(
        gw.url + "/authorize/login", data={"flow": hidden_fields(page.text)["flow"], "credential": "wrong"}
    )
    assert bad.status_code == 401 and "not a valid API key or service token" in bad.text


def test_consent_names_the_client_and_refuses_a_form_from_another_site(gw: Gateway) -> None:
    client = register(gw, client_name="<b>Evil</b> & co")["client_id"]
    person = Person(gw.url)
    consent = person.sign_in(Code(gw, client, gw.mcp_url("team")).url, gw.admin_key)
    assert consent.status_code == 200
    assert "&lt;b&gt;Evil&lt;/b&gt; &amp; co" in consent.text and "<b>Evil</b>" not in consent.text
    assert REDIRECT in consent.text and "team" in consent.text
    flow = hidden_fields(consent.text)["flow"]
    # Another site posts the same form (it could have read the page's blob): no cookie, no code.
    forged = httpx2.post(
        gw.url + "/authorize/consent", data={"flow": flow, "namespace": "team", "decision": "approve"}
    )
    assert forged.status_code == 400 and "location" not in forged.headers
    # The person denies: back to the client with access_denied.
    denied = person.decide(consent, "deny")
    assert query(denied)["error"] == "access_denied"


def test_a_login_with_a_user_token_can_never_exceed_it(gw: Gateway) -> None:
    with gw.client() as admin:
        alice = mint(admin, {"namespaces": "team", "metadata": {"userId": "alice"}})
    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", alice)
    listed = tool_names(rpc(gw, "/mcp/team", tokens["access_token"], "tools/list"))
    assert listed and all(name.startswith("alice__") for name in listed)
    # Asking for a namespace the token may not use: the consent page says no, and gives no code.
    person = Person(gw.url)
    refused = person.sign_in(Code(gw, client, gw.mcp_url("other")).url, alice)
    assert refused.status_code == 403 and "may not use namespace &#39;other&#39;" in refused.text
    # Revoking the pasted token ends the access it gave.
    with gw.client() as admin:
        token_id = admin.get("/tokens").json()["tokens"][0]["id"]
        assert admin.delete(f"/tokens/{token_id}").status_code == 200
    assert rpc(gw, "/mcp/team", tokens["access_token"], "tools/list").status_code == 401
    again = token(gw, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_read_only_grant_gets_insufficient_scope_on_calls(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", gw.admin_key, scope="read")
    assert tokens["scope"] == "read"
    access = tokens["access_token"]
    assert "alice__echo" in tool_names(rpc(gw, "/mcp/team", access, "tools/list"))
    call = rpc(gw, "/mcp/team", access, "tools/call", {"name": "alice__echo", "arguments": {"text": "x"}})
    assert call.status_code == 403
    challenge = call.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="read execute"' in challenge
    assert "resource_metadata=" in challenge


# --- /mcp itself, and what clients do ----------------------------------------------------------


def test_mcp_itself_serves_the_namespace_chosen_at_consent(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    person = Person(gw.url)
    code = Code(gw, client, gw.url + "/mcp")
    consent = person.sign_in(code.url, gw.admin_key)
    assert '<option value="other">' in consent.text and '<option value="team">' in consent.text
    back = query(person.decide(consent, "approve", namespace="other"))
    answer = token(
        gw,
        grant_type="authorization_code",
        code=back["code"],
        redirect_uri=REDIRECT,
        client_id=client,
        code_verifier=code.verifier,
    )
    access = answer.json()["access_token"]
    listed = tool_names(rpc(gw, "/mcp", access, "tools/list"))
    assert "main__echo" in listed and all(n.startswith("main__") for n in listed)
    # An API key has no namespace of its own: /mcp says how to use it.
    plain = rpc(gw, "/mcp", gw.admin_key, "tools/list")
    assert plain.status_code == 404 and "/mcp/{namespace}" in plain.text


def test_claude_gets_its_protocol_version_and_ping_always_answers(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    access = login(gw, client, "team", gw.admin_key)["access_token"]
    init = initialize(gw, access, "claude-ai")
    assert init.status_code == 200, init.text
    sse = init.headers["content-type"].startswith("text/event-stream")
    result = _sse_result(init.text) if sse else init.json()["result"]
    assert result["protocolVersion"] == "2025-11-25"
    session = {"mcp-session-id": init.headers["mcp-session-id"]}
    # Later requests without MCP-Protocol-Version (Claude omits it) still work; ping answers.
    bare = {**ACCEPT, "authorization": f"Bearer {access}", **session}
    for number, method in enumerate(("notifications/initialized", "ping", "tools/list")):
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if not method.startswith("notifications/"):
            message["id"] = number
        response = httpx2.post(gw.url + "/mcp/team", json=message, headers=bare, timeout=30)
        assert response.status_code in (200, 202), response.text
        if method == "tools/list":
            sse = response.headers["content-type"].startswith("text/event-stream")
            tools = (_sse_result(response.text) if sse else response.json()["result"])["tools"]
            assert any(t["name"] == "alice__echo" for t in tools)


def _sse_result(body: str) -> Any:
    for line in body.splitlines():
        if line.startswith("data:"):
            return json.loads(line[5:])["result"]
    raise AssertionError(body)


def test_grants_are_listed_and_revocable_by_whoever_gave_them(gw: Gateway) -> None:
    client = register(gw, client_name="Grant lister")["client_id"]
    tokens = login(gw, client, "team", gw.admin_key)
    with gw.client() as admin:
        grants = admin.get("/oauth/grants").json()["grants"]
        mine = [g for g in grants if g["clientId"] == client]
        assert len(mine) == 1
        grant = mine[0]
        assert grant["clientName"] == "Grant lister" and grant["namespace"] == "team"
        assert grant["resource"] == gw.mcp_url("team") and grant["scope"] == "read execute"
        assert "token" not in str(grant).lower().replace("tokenids", "")
        # An access token sees its own grant only, and a user token its own grants only.
        with httpx2.Client(
            base_url=gw.url, headers={"authorization": f"Bearer {tokens['access_token']}"}
        ) as own:
            assert [g["id"] for g in own.get("/oauth/grants").json()["grants"]] == [grant["id"]]
        assert admin.delete(f"/oauth/grants/{grant['id']}").status_code == 204
        assert admin.delete(f"/oauth/grants/{grant['id']}").status_code == 404
    assert rpc(gw, "/mcp/team", tokens["access_token"], "tools/list").status_code == 401


def test_no_token_a_client_sends_ever_reaches_an_upstream(gw: Gateway, modern_upstream: Upstream) -> None:
    with gw.client() as admin:
        body = {"mcpUrl": modern_upstream.url, "headers": {"Authorization": "Bearer upstream-own-secret"}}
        assert admin.put("/team/keyed", json=body).status_code == 201
    client = register(gw)["client_id"]
    access = login(gw, client, "team", gw.admin_key)["access_token"]
    seen = {}
    for tool in ("alice__headers", "keyed__headers"):
        call = rpc(
            gw, "/mcp/team", access, "tools/call", {"name": tool, "arguments": {"name": "authorization"}}
        )
        assert call.status_code == 200, call.text
        seen[tool] = call.json()["result"]["content"][0]["text"]
    # The upstream without credentials sees none; the one with its own sees its own, never ours.
    assert seen == {"alice__headers": "", "keyed__headers": "Bearer upstream-own-secret"}
    assert access not in str(seen)


def test_a_configured_client_authenticates_with_its_secret(
    start_gateway: Any, modern_upstream: Upstream
) -> None:
    clients = [
        {
            "client_id": "my-app",
            "client_name": "My app",
            "client_secret": "s3cret-of-my-app",
            "redirect_uris": [REDIRECT],
        }
    ]
    gw = start_gateway(JUNCTION_OAUTH_CLIENTS=json.dumps(clients))
    with gw.client() as admin:
        assert admin.put("/namespaces/team").status_code in (200, 201)
        assert admin.put("/team/main", json={"mcpUrl": modern_upstream.url}).status_code == 201
    code = Code(gw, "my-app", gw.mcp_url("team"))
    consent = Person(gw.url).sign_in(code.url, gw.admin_key)
    assert "My app" in consent.text
    back = query(Person(gw.url).authorize(code.url, gw.admin_key))
    form = {
        "grant_type": "authorization_code",
        "code": back["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": code.verifier,
    }
    wrong = httpx2.post(gw.url + "/token", data=form, auth=("my-app", "not-it"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    right = httpx2.post(gw.url + "/token", data=form, auth=("my-app", "s3cret-of-my-app"))
    assert right.status_code == 200, right.text
    assert "main__echo" in tool_names(rpc(gw, "/mcp/team", right.json()["access_token"], "tools/list"))


def test_a_refresh_never_widens_the_granted_scope(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", gw.admin_key, scope="read")
    # offline_access (which some clients add to every request) is no scope of ours: it changes nothing.
    same = token(
        gw,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=client,
        scope="offline_access",
    )
    assert same.status_code == 200 and same.json()["scope"] == "read"
    call = rpc(
        gw, "/mcp/team", same.json()["access_token"], "tools/call", {"name": "alice__echo", "arguments": {}}
    )
    assert call.status_code == 403
    wider = token(
        gw,
        grant_type="refresh_token",
        refresh_token=same.json()["refresh_token"],
        client_id=client,
        scope="read execute",
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


def test_insufficient_scope_is_said_only_when_more_scope_would_help(gw: Gateway) -> None:
    with gw.client() as admin:
        reader = mint(admin, {"namespaces": "team", "operations": "read"})
    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", reader)
    assert tokens["scope"] == "read execute"
    call = rpc(
        gw, "/mcp/team", tokens["access_token"], "tools/call", {"name": "alice__echo", "arguments": {}}
    )
    # The login's own policy refuses the call: asking the person again for "execute" would not help.
    assert call.status_code == 403
    assert "insufficient_scope" not in call.headers.get("www-authenticate", "")


def test_a_legacy_session_outlives_the_refresh_of_its_token(gw: Gateway) -> None:
    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", gw.admin_key)
    init = initialize(gw, tokens["access_token"], "t")
    session = init.headers["mcp-session-id"]
    fresh = token(
        gw, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client
    ).json()
    listed = httpx2.post(
        gw.url + "/mcp/team",
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        headers={**ACCEPT, "authorization": f"Bearer {fresh['access_token']}", "mcp-session-id": session},
        timeout=30,
    )
    assert listed.status_code == 200, listed.text
    # Another grant's token cannot take the session over.
    other = login(gw, client, "team", gw.admin_key)["access_token"]
    stolen = httpx2.post(
        gw.url + "/mcp/team",
        json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        headers={**ACCEPT, "authorization": f"Bearer {other}", "mcp-session-id": session},
        timeout=30,
    )
    assert stolen.status_code == 404


def test_odd_input_gets_clear_answers_not_crashes(gw: Gateway) -> None:
    # A path no header can carry as it is: the challenge percent-encodes it.
    odd = httpx2.post(gw.url + "/mcp/caf\u00e9-\u20ac", json={}, headers=ACCEPT)
    assert odd.status_code == 401
    assert "/mcp/caf%C3%A9-%E2%82%AC" in odd.headers["www-authenticate"]
    # A client id that is no URL at all, a port out of range.
    for client_id in ("https://[::1/x", "https://example.com:99999/client.json"):
        page = httpx2.get(Code(gw, client_id, gw.mcp_url("team")).url)
        assert page.status_code == 400 and "location" not in page.headers, client_id
    # A failed client authentication says how to authenticate (RFC 6749 §5.2).
    failed = httpx2.post(
        gw.url + "/token", data={"grant_type": "refresh_token", "refresh_token": "x"}, auth=("jc_x", "y")
    )
    assert failed.status_code == 401 and failed.headers["www-authenticate"].startswith("Basic")


def test_a_desktop_app_may_listen_on_any_loopback_port(gw: Gateway) -> None:
    client = register(gw)["client_id"]  # registered http://127.0.0.1:9/callback
    other_port = Code(gw, client, gw.mcp_url("team"), redirect_uri="http://127.0.0.1:53682/callback")
    back = Person(gw.url).authorize(other_port.url, gw.admin_key)
    assert back.startswith("http://127.0.0.1:53682/callback?")
    for wrong in (
        "http://127.0.0.1:53682/other",
        "http://localhost:53682/callback",
        "https://127.0.0.1:9/callback",
    ):
        refused = httpx2.get(Code(gw, client, gw.mcp_url("team"), redirect_uri=wrong).url)
        assert refused.status_code == 400 and "location" not in refused.headers, wrong
