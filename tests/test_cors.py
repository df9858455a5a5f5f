"""CORS: what a web page on an allowed origin needs to call the gateway with a bearer key, and what
every other origin gets (403 before anything else)."""

from __future__ import annotations

from typing import Any

import httpx2

APP = "https://app.example.com"
EVIL = "http://evil.example:8080"
DEAD_URL = "http://127.0.0.1:9/mcp"  # nothing listens there: the connection stores with an error status
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "page", "version": "1"},
    },
}
# What the official MCP TypeScript client and the Smithery (Stainless) SDK send from a browser.
BROWSER_HEADERS = [
    "Authorization",
    "Content-Type",
    "Mcp-Session-Id",
    "Mcp-Protocol-Version",
    "X-Stainless-Lang",
    "X-Stainless-Package-Version",
]


def _setup(client: httpx2.Client) -> None:
    assert client.put("/namespaces/team-a").status_code in (200, 201)
    assert client.put("/team-a/c1", json={"mcpUrl": DEAD_URL}).status_code in (200, 201)


def _preflight(
    client: httpx2.Client, path: str, origin: str, method: str, headers: list[str]
) -> httpx2.Response:
    request_headers = {"origin": origin, "access-control-request-method": method}
    if headers:
        request_headers["access-control-request-headers"] = ", ".join(headers)
    return client.options(path, headers=request_headers)


def _csv(response: httpx2.Response, name: str) -> set[str]:
    return {item.strip().lower() for item in response.headers.get(name, "").split(",") if item.strip()}


def _readable_by(response: httpx2.Response, origin: str) -> None:
    """Assert that a page on `origin` may read `response`, session id and challenge included."""
    assert response.headers.get_list("access-control-allow-origin") == [origin], response.headers
    assert "origin" in _csv(response, "vary")
    exposed = _csv(response, "access-control-expose-headers")
    assert {"mcp-session-id", "mcp-protocol-version", "www-authenticate", "x-should-retry"} <= exposed
    assert "access-control-allow-credentials" not in response.headers


def _no_cors(response: httpx2.Response) -> None:
    assert not [name for name in response.headers if name.lower().startswith("access-control-")], (
        response.headers
    )


def _rpc_error(response: httpx2.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None, body
    return body["error"]  # type: ignore[no-any-return]


def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(JUNCTION_ALLOWED_ORIGINS=APP)
    with gw.client() as client:
        _setup(client)
    with httpx2.Client(base_url=gw.url) as page:  # browsers send preflights without credentials
        for path, method, headers in [
            ("/mcp/team-a", "POST", BROWSER_HEADERS),
            ("/mcp/team-a", "DELETE", ["Authorization", "Mcp-Session-Id"]),
            ("/namespaces", "GET", ["Authorization"]),
            ("/team-a/c1/.tools/x", "POST", ["authorization", "content-type", "x-stainless-retry-count"]),
        ]:
            response = _preflight(page, path, APP, method, headers)
            assert response.status_code == 204, (path, response.text)
            assert response.content == b""
            assert response.headers["access-control-allow-origin"] == APP
            assert "origin" in _csv(response, "vary")
            assert method.lower() in _csv(response, "access-control-allow-methods")
            assert {h.lower() for h in headers} <= _csv(response, "access-control-allow-headers"), path
            assert response.headers["access-control-max-age"] == "600"
            assert "access-control-allow-credentials" not in response.headers
        # A header the gateway does not take is left out, so the browser stops there.
        response = _preflight(page, "/namespaces", APP, "GET", ["Authorization", "X-Api-Key"])
        assert response.status_code == 204
        assert _csv(response, "access-control-allow-headers") == {"authorization"}


def test_every_answer_to_an_allowed_origin_is_readable_by_the_page(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(JUNCTION_ALLOWED_ORIGINS=APP)
    page = {"origin": APP}
    with gw.client() as client:
        _setup(client)
        listed = client.get("/namespaces", headers=page)
        assert listed.status_code == 200, listed.text
        _readable_by(listed, APP)
        missing = client.get("/namespaces/nope", headers=page)
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        _readable_by(missing, APP)
        no_route = client.post("/mcp/team-a/nope", headers={**MCP_HEADERS, **page}, json=INITIALIZE)
        assert no_route.status_code == 404 and _rpc_error(no_route)
        _readable_by(no_route, APP)
        # The metadata endpoint says `*` to everyone; to a page the one value is its origin.
        metadata = client.get("/.well-known/oauth-protected-resource/mcp/team-a", headers=page)
        assert metadata.status_code == 200
        _readable_by(metadata, APP)
    with httpx2.Client(base_url=gw.url) as anonymous:
        for method, path in (("GET", "/namespaces"), ("POST", "/mcp/team-a")):
            refused = anonymous.request(method, path, headers={**MCP_HEADERS, **page}, json=INITIALIZE)
            assert refused.status_code == 401, (path, refused.text)
            assert refused.headers["www-authenticate"].startswith("Bearer ")
            _readable_by(refused, APP)


def test_an_mcp_session_opened_from_a_page_shows_its_id(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(JUNCTION_ALLOWED_ORIGINS=APP)
    page = {**MCP_HEADERS, "origin": APP}
    with gw.client() as client:
        _setup(client)
        opened = client.post("/mcp/team-a", headers=page, json=INITIALIZE)
        assert opened.status_code == 200, opened.text
        assert opened.headers["mcp-session-id"]
        _readable_by(opened, APP)
        session = {
            **page,
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-06-18",
        }
        listed = client.post(
            "/mcp/team-a", headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        )
        assert listed.status_code == 200, listed.text
        _readable_by(listed, APP)
        closed = client.delete("/mcp/team-a", headers=session)
        assert closed.status_code == 200, closed.text
        _readable_by(closed, APP)


def test_a_foreign_origin_is_refused_before_anything_else(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(JUNCTION_ALLOWED_ORIGINS=APP)
    message = "requests from origin 'http://evil.example:8080' are not allowed"
    with gw.client() as client:
        _setup(client)
        for path in ("/namespaces", "/team-a/c1/.tools/x"):
            for response in (
                _preflight(client, path, EVIL, "POST", ["Authorization"]),
                client.post(path, headers={"origin": EVIL}, json={}),
            ):
                assert response.status_code == 403, (path, response.text)
                assert response.json()["error"] == "forbidden_origin"
                assert response.json()["message"].startswith(message)
                _no_cors(response)
        for path in ("/mcp/team-a", "/mcp/team-a/c1", "/connect/team-a/c1/mcp"):
            for response in (
                _preflight(client, path, EVIL, "POST", BROWSER_HEADERS),
                client.post(path, headers={**MCP_HEADERS, "origin": EVIL}, json=INITIALIZE),
            ):
                assert response.status_code == 403, (path, response.text)
                error = _rpc_error(response)
                assert error["code"] == -32001 and error["message"].startswith(message)
                assert error["data"] == {"error": "forbidden_origin"}
                _no_cors(response)


def test_by_default_only_the_public_urls_origin_may_preflight(gateway) -> None:  # type: ignore[no-untyped-def]
    with httpx2.Client(base_url=gateway.url) as page:
        foreign = _preflight(page, "/namespaces", APP, "GET", ["Authorization"])
        assert foreign.status_code == 403 and foreign.json()["error"] == "forbidden_origin"
        _no_cors(foreign)
        own = _preflight(page, "/namespaces", gateway.url, "GET", ["Authorization"])
        assert own.status_code == 204
        assert own.headers["access-control-allow-origin"] == gateway.url


def test_a_star_allows_every_origin_and_names_it(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(JUNCTION_ALLOWED_ORIGINS="*")
    with gw.client() as client:
        response = _preflight(client, "/mcp/team-a", EVIL, "POST", BROWSER_HEADERS)
        assert response.status_code == 204 and response.headers["access-control-allow-origin"] == EVIL
        _readable_by(client.get("/namespaces", headers={"origin": EVIL}), EVIL)


def test_a_request_without_origin_gets_no_cors_headers(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        listed = client.get("/namespaces")
        assert listed.status_code == 200
        _no_cors(listed)
        assert "vary" not in listed.headers
        # An OPTIONS request that is no browser's preflight is routed like any other request.
        options = client.options("/namespaces", headers={"access-control-request-method": "GET"})
        assert options.status_code == 405
        _no_cors(options)
    with httpx2.Client(base_url=gateway.url) as anonymous:
        refused = anonymous.get("/namespaces")
        assert refused.status_code == 401
        _no_cors(refused)
