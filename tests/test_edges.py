"""The gateway's edges: what it lets in (origins, credentials, request heads, JSON) and what an MCP
client gets back when something is wrong (always JSON-RPC)."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx2
import pytest

from proxy import wirejson
from proxy.errors import ConfigError
from proxy.settings import Settings

DEAD_URL = "http://127.0.0.1:9/mcp"  # nothing listens there: connections store with an error status
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def _ns(client: httpx2.Client, name: str = "team-a") -> str:
    response = client.put(f"/namespaces/{name}")
    assert response.status_code in (200, 201), response.text
    return name


def _is_rpc_error(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC error object of `response` (asserting that that is what its body is)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None, body
    assert isinstance(body["error"]["code"], int) and body["error"]["message"], body
    return body["error"]  # type: ignore[no-any-return]


def _valid_json(data: bytes) -> Any:
    """`data` read as RFC 8259 JSON: UTF-8 (no lone surrogate bytes), no NaN or Infinity."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a response")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def _raw(port: int, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send `request` on a fresh socket and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- origins and challenges (issue item 11) ----------------------------------------------------


def test_a_request_from_a_foreign_origin_is_refused_on_every_route(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(JUNCTION_ALLOWED_ORIGINS="https://app.example.com, http://localhost:6274")
    evil = {"origin": "http://evil.example:8080"}
    with gw.client() as client:
        _ns(client)
        client.put("/team-a/c1", json={"mcpUrl": DEAD_URL})
        for method, path in [
            ("GET", "/health"),
            ("GET", "/namespaces"),
            ("POST", "/keys"),
            ("GET", "/team-a"),
        ]:
            response = client.request(method, path, headers=evil, json={})
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == "forbidden_origin"
            assert "evil.example" in response.json()["message"]
        for path in ("/mcp/team-a", "/mcp/team-a/c1", "/connect/team-a/c1/mcp"):
            response = client.post(path, headers={**MCP_HEADERS, **evil}, json=INITIALIZE)
            assert response.status_code == 403, (path, response.text)
            assert _is_rpc_error(response)["data"] == {"error": "forbidden_origin"}
        assert _is_rpc_error(client.get("/mcp/team-a", headers=evil))["data"]["error"] == "forbidden_origin"
        assert client.get("/namespaces", headers={"origin": "null"}).status_code == 403
        # OAuth discovery and the token endpoints act on no ambient credential: browser-based MCP
        # clients call them from their own origin.
        for path in (
            "/.well-known/oauth-protected-resource/mcp/team-a",
            "/.well-known/oauth-authorization-server",
        ):
            response = client.get(path, headers=evil)
            assert (
                response.status_code == 200
                and response.headers["access-control-allow-origin"] == evil["origin"]
            )
        form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "jc_unknown"}
        token = client.post("/token", headers=evil, data=form)
        assert token.status_code == 401 and token.json()["error"] == "invalid_client"
        # Allowed: the listed origins (spelled as a browser may), the public URL's, and no Origin at all.
        for origin in ("https://APP.example.com:443", "http://localhost:6274", gw.url, None):
            headers = {"origin": origin} if origin else {}
            assert client.get("/namespaces", headers=headers).status_code == 200, origin
    with httpx2.Client(base_url=gw.url) as anonymous:
        # The origin is checked before the credential: a foreign page learns nothing more.
        assert anonymous.get("/namespaces", headers=evil).status_code == 403
        assert anonymous.get("/namespaces", headers={"origin": "https://app.example.com"}).status_code == 401


def test_by_default_only_the_public_urls_origin_is_allowed(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        assert client.get("/namespaces", headers={"origin": gateway.url}).status_code == 200
        other = gateway.url.replace("127.0.0.1", "localhost")
        assert client.get("/namespaces", headers={"origin": other}).status_code == 403


def test_the_challenge_names_an_error_only_when_a_credential_was_sent(gateway) -> None:  # type: ignore[no-untyped-def]
    with httpx2.Client(base_url=gateway.url) as anonymous:
        for path, method in (("/mcp/team-a", "POST"), ("/namespaces", "GET")):
            # No credentials, or a scheme we do not take: RFC 6750 §3.1 wants no error code.
            for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}):
                response = anonymous.request(method, path, headers=headers, json={})
                assert response.status_code == 401
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith("Bearer ") and "error=" not in challenge, challenge
            bad = anonymous.request(method, path, headers={"authorization": "Bearer nope"}, json={})
            assert bad.status_code == 401
            assert 'error="invalid_token"' in bad.headers["www-authenticate"]
        mcp = anonymous.post("/mcp/team-a", json={})
        assert "resource_metadata=" in mcp.headers["www-authenticate"]


def test_origins_and_head_limit_are_settings(tmp_path: Path) -> None:
    env = Settings.load(env={"JUNCTION_ALLOWED_ORIGINS": " https://a.example.com , http://localhost:6274,"})
    assert env.allowed_origins == ("https://a.example.com", "http://localhost:6274")
    config = tmp_path / "c.toml"
    config.write_text('allowed_origins = ["https://B.example.com:443/"]\nmax_header_bytes = 8192\n')
    settings = Settings.load(config_file=str(config), env={})
    assert settings.max_header_bytes == 8192
    assert settings.origin_allowlist == {"https://b.example.com", "http://127.0.0.1:8080"}
    assert Settings(public_url="https://junction.example.com/base/").origin_allowlist == {
        "https://junction.example.com"
    }
    for bad in ("https://a.example.com/path", "evil", "https://user@a.example.com"):
        with pytest.raises(ConfigError, match="allowed_origins"):
            Settings.load(env={"JUNCTION_ALLOWED_ORIGINS": bad})
    with pytest.raises(ConfigError, match="max_header_bytes"):
        Settings.load(env={"JUNCTION_MAX_HEADER_BYTES": "100"})


# --- strict JSON in, valid JSON out (issue item 15) --------------------------------------------


def test_a_lone_surrogate_is_refused_and_never_stored(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        _ns(client)
        body = b'{"mcpUrl": "%s", "metadata": {"x": "\\ud800"}}' % DEAD_URL.encode()
        response = client.put("/team-a/c1", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"] == "invalid_json", response.text
        listing = client.get("/team-a")
        assert listing.status_code == 200 and listing.json()["connections"] == []
        # A proper pair is a character like any other.
        pair = b'{"mcpUrl": "%s", "metadata": {"x": "\\ud83d\\ude00"}}' % DEAD_URL.encode()
        assert client.put("/team-a/c2", content=pair).status_code == 201
    gateway.restart()
    with gateway.client() as client:
        listing = client.get("/team-a")
        assert listing.status_code == 200, listing.text
        assert [c["metadata"] for c in listing.json()["connections"]] == [{"x": "\U0001f600"}]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_in_every_body(gateway, modern_upstream, constant: str) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        _ns(client)
        assert client.put("/team-a/echo", json={"mcpUrl": modern_upstream.url}).status_code == 201
        metadata = f'{{"mcpUrl": "{DEAD_URL}", "metadata": {{"n": {constant}}}}}'
        # A number too long for orjson takes the standard library's path: held to the same rule.
        long_number = (
            f'{{"mcpUrl": "{DEAD_URL}", "metadata": {{"b": 12345678901234567890, "n": {constant}}}}}'
        )
        rest = [
            ("POST", "/team-a", metadata),
            ("PUT", "/team-a/c9", metadata),
            ("PUT", "/team-a/c9", long_number),
            ("POST", "/keys", f'{{"name": "k", "n": {constant}}}'),
            ("PUT", "/namespaces/team-b", f'{{"toolNames": "auto", "n": {constant}}}'),
            ("POST", "/team-a/echo/.tools/echo", f'{{"text": {constant}}}'),
        ]
        for method, path, text in rest:
            response = client.request(
                method, path, content=text, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"] == "invalid_json"
        assert client.get("/team-a").json()["connections"][0]["connectionId"] == "echo"
        assert client.get("/namespaces/team-b").status_code == 404

        def call(name: str, text: str) -> str:
            params = f'{{"name": "{name}", "arguments": {{"text": {text}}}}}'
            return f'{{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {params}}}'

        for path, name in [
            ("/mcp/team-a", "echo__echo"),
            ("/mcp/team-a/echo", "echo"),
            ("/connect/team-a/echo/mcp", "echo"),
        ]:
            response = client.post(path, content=call(name, constant), headers=MCP_HEADERS)
            assert response.status_code == 400, (path, response.text)
            assert _is_rpc_error(response)["code"] == -32700
        initialize = json.dumps(INITIALIZE).replace(
            '"capabilities": {}', f'"capabilities": {{"x": {constant}}}'
        )
        response = client.post("/mcp/team-a", content=initialize, headers=MCP_HEADERS)
        assert response.status_code == 400 and _is_rpc_error(response)["code"] == -32700

        # On a live session a tools/call would take the fast path: it is held to the same rule.
        opened = client.post("/mcp/team-a", json=INITIALIZE, headers=MCP_HEADERS)
        assert opened.status_code == 200, opened.text
        session = {
            **MCP_HEADERS,
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-06-18",
        }
        client.post(
            "/mcp/team-a", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
        )
        good = client.post("/mcp/team-a", content=call("echo__echo", '"hi"'), headers=session)
        assert good.status_code == 200 and "hi" in good.text, good.text
        for value in (constant, '"\\udfff"'):
            response = client.post("/mcp/team-a", content=call("echo__echo", value), headers=session)
            assert response.status_code == 400, response.text
            assert _is_rpc_error(response)["code"] == -32700


def test_stored_data_always_answers_valid_json(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        _ns(client)
        assert client.put("/team-a/c1", json={"mcpUrl": DEAD_URL, "metadata": {"x": "ok"}}).status_code == 201
    gateway.stop()
    # A row written before the edge was strict (or by hand): a lone surrogate and a NaN.
    with sqlite3.connect(gateway.data_dir / "junction.db") as db:
        db.execute(
            "update connections set metadata = ? where connection_id = 'c1'", ['{"x": "\\ud800", "n": NaN}']
        )
    gateway.start()
    with gateway.client() as client:
        for path in ("/team-a", "/team-a/c1"):
            response = client.get(path)
            assert response.status_code == 200, response.text
            metadata = _valid_json(response.content)
            metadata = metadata["connections"][0]["metadata"] if path == "/team-a" else metadata["metadata"]
            assert metadata == {"x": "\ud800", "n": None}  # the surrogate escaped, NaN as null


def test_wirejson_reads_strictly_and_always_writes_valid_json() -> None:
    refused = [
        b'{"a": NaN}',
        b"[Infinity]",
        b"[-Infinity]",
        b'["\\ud800"]',
        b'["\\udc00 after"]',
        b'{"\\ud800": 1}',
        b'["\xff"]',
        b"[12345678901234567890, NaN]",
        b'[12345678901234567890, "\\ud800"]',
        b'[12345678901234567890, {"\\udfff": 1}]',
        b"[12345678901234567890, 1e400]",
        "[12345678901234567890]".encode("utf-16"),
        b"[12345678901234567890, " + b"[" * 100_000 + b"]" * 100_000 + b"]",
    ]
    for data in refused:
        with pytest.raises(ValueError):
            wirejson.loads_strict(data)
    assert wirejson.loads_strict(b'["\\ud83d\\ude00", "\\\\ud800"]') == ["\U0001f600", "\\ud800"]
    assert wirejson.loads_strict(b"[12345678901234567890, 1.5]") == [12345678901234567890, 1.5]
    for value in (
        {"x": "\ud800", "y": "é"},
        {"n": float("nan"), "big": 10**30, "s": "\udfff"},
        [float("inf"), 10**30],
    ):
        _valid_json(wirejson.dumps(value))


# --- bounded request heads (issue item 16) ------------------------------------------------------


def test_a_request_head_over_the_limit_gets_431_and_the_connection_closes(gateway) -> None:  # type: ignore[no-untyped-def]
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 30) for i in range(2500)
    )
    for request in (big, many + b"\r\n"):
        answer = _raw(gateway.port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert json.loads(body)["error"] == "headers_too_large"
    # A head that never ends is cut off too, without waiting for its end.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * 100_000)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 ")
    # The gateway serves on; a head under the limit, and a small head with a large body, are fine.
    assert httpx2.get(gateway.url + "/health", headers={"x-pad": "a" * 30_000}).status_code == 200
    payload = json.dumps({"name": "k", "pad": "x" * 300_000}).encode()
    request = (
        b"POST /keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + gateway.admin_key.encode() + b"\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    answer = _raw(gateway.port, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # read and judged: the field is unknown
    assert b"pad" in answer


def test_the_head_limit_is_a_setting(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(JUNCTION_MAX_HEADER_BYTES="4096")
    assert httpx2.get(gw.url + "/health", headers={"x-pad": "a" * 2000}).status_code == 200
    answer = _raw(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 6000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


# --- JSON-RPC on MCP routes, and no body field left unread (issue item 18) ---------------------


def test_mcp_routes_answer_json_rpc_errors_only(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        _ns(client)
        wrong_type = client.post(
            "/mcp/team-a",
            content=json.dumps(INITIALIZE),
            headers={"content-type": "text/plain", "accept": MCP_HEADERS["accept"]},
        )
        assert wrong_type.status_code in (400, 415)
        assert "content-type" in _is_rpc_error(wrong_type)["message"].lower()
        wrong_accept = client.post("/mcp/team-a", json=INITIALIZE, headers={"accept": "text/html"})
        assert wrong_accept.status_code == 406 and _is_rpc_error(wrong_accept)
        stream = client.get("/mcp/team-a", headers={"accept": "text/html"})
        assert stream.status_code == 406 and _is_rpc_error(stream)
        for method, path in [
            ("GET", "/mcp/team-a/c1/extra"),
            ("POST", "/mcp/team-a/c1/extra"),
            ("DELETE", "/connect/team-a/c1/extra/mcp"),
        ]:
            response = client.request(method, path, headers=MCP_HEADERS)
            assert response.status_code in (404, 405), (method, path, response.text)
            _is_rpc_error(response)
        # REST routes keep their own error shape.
        assert client.get("/team-a/c1/extra/more").json()["error"] == "not_found"


def test_every_route_rejects_what_it_does_not_understand(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        _ns(client, "alpha")
        for method, path, body in [
            ("POST", "/keys", {"nmae": "x"}),
            ("PUT", "/namespaces/alpha", {"toolNmaes": "safe"}),
            ("POST", "/namespaces", {"nmae": "beta"}),
            ("POST", "/alpha", {"mcpUrl": DEAD_URL, "metdata": {}}),
        ]:
            response = client.request(method, path, json=body)
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"] == "validation_error"
            assert next(iter(body.keys() - {"mcpUrl"})) in response.json()["message"]
        # Identity in the body must agree with the path.
        assert client.put("/namespaces/alpha", json={"name": "beta"}).status_code == 400
        assert client.put("/namespaces/alpha", json={"name": "alpha"}).status_code == 200
        other = client.put("/alpha/c1", json={"mcpUrl": DEAD_URL, "connectionId": "other"})
        assert other.status_code == 400 and "connectionId" in other.json()["message"]
        # Metadata filters that name no key.
        for query in ("metadata.=x", "metadata[]=x", "metadata[a=x", "metadata=x"):
            response = client.get(f"/alpha?{query}")
            assert response.status_code == 400, query
            assert response.json()["error"] == "validation_error"
        assert client.get("/alpha?metadata.a=x").status_code == 200
        assert client.get("/alpha?metadata%5Ba%5D=x").status_code == 200
        # A URL never holds spaces or control characters (urlsplit would drop a tab or newline).
        for char in ("\n", "\t", "\r", "\x00", "\x7f", " "):
            response = client.post("/alpha", json={"mcpUrl": f"http://127.0.0.1:9/m{char}cp"})
            assert response.status_code == 400, repr(char)
            assert response.json()["error"] == "validation_error"
        assert client.get("/alpha").json()["connections"] == []
