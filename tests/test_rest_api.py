"""The REST API through real HTTP: namespaces, connections, credentials, direct tool calls, errors."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import httpx2
import pytest


def _ns(client: httpx2.Client, name: str = "team-a") -> str:
    response = client.put(f"/namespaces/{name}")
    assert response.status_code in (200, 201), response.text
    return name


def test_every_request_needs_a_key(gateway) -> None:  # type: ignore[no-untyped-def]
    with httpx2.Client(base_url=gateway.url) as anonymous:
        assert anonymous.get("/health").status_code == 200
        for path in ("/namespaces", "/team-a", "/keys"):
            response = anonymous.get(path)
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
        wrong = anonymous.get("/namespaces", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["message"]
        mcp = anonymous.post("/mcp/team-a", json={})
        assert mcp.status_code == 401
        assert mcp.headers["www-authenticate"].startswith("Bearer")
        assert "resource_metadata=" in mcp.headers["www-authenticate"]


def test_namespaces_lifecycle_and_validation(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        created = client.put("/namespaces/alpha-1")
        assert created.status_code == 201 and created.json()["name"] == "alpha-1"
        assert client.put("/namespaces/alpha-1").status_code == 200
        generated = client.post("/namespaces")
        assert generated.status_code == 201
        generated_name = generated.json()["name"]
        listing = client.get("/namespaces", params={"pageSize": 1, "page": 1}).json()
        assert listing["pagination"]["totalCount"] == 2 and len(listing["namespaces"]) == 1
        assert client.get("/namespaces", params={"pageSize": 1, "page": 3}).json()["namespaces"] == []
        for bad in ("ab", "UPPER", "has_underscore", "x" * 40, "mcp", "namespaces", "connect"):
            response = client.put(f"/namespaces/{bad}")
            assert response.status_code == 400, bad
            assert response.json()["error"] == "validation_error"
        assert client.delete(f"/namespaces/{generated_name}").json() == {
            "success": True,
            "name": generated_name,
        }
        assert client.get(f"/{generated_name}").status_code == 404


def test_create_connection_records_status_and_server_info(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        response = client.post(
            f"/{ns}", json={"mcpUrl": modern_upstream.url, "name": "Echo", "metadata": {"userId": "u1"}}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == {"state": "connected"}
        assert body["serverInfo"]["name"] == "test-modern"
        assert body["name"] == "Echo" and body["metadata"] == {"userId": "u1"}
        assert len(body["connectionId"]) >= 3
        again = client.get(f"/{ns}/{body['connectionId']}").json()
        assert again["status"] == {"state": "connected"} and again["createdAt"] == body["createdAt"]


def test_connection_to_a_dead_upstream_is_stored_with_an_error_status(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        response = client.put(f"/{ns}/dead", json={"mcpUrl": "http://127.0.0.1:9/mcp"})
        assert response.status_code == 201
        assert response.json()["status"]["state"] == "error"
        assert "connect" in response.json()["status"]["message"]
        call = client.post(f"/{ns}/dead/.tools/echo", json={})
        assert call.status_code in (502, 504)
        assert call.json()["error"].startswith("upstream_")


def test_put_is_an_upsert_and_refuses_a_different_url(gateway, modern_upstream, dotted_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        assert client.put(f"/{ns}/gh", json={"mcpUrl": modern_upstream.url}).status_code == 201
        renamed = client.put(f"/{ns}/gh", json={"name": "GitHub", "metadata": {"team": "x"}})
        assert renamed.status_code == 200 and renamed.json()["name"] == "GitHub"
        conflict = client.put(f"/{ns}/gh", json={"mcpUrl": dotted_upstream.url})
        assert conflict.status_code == 409
        assert conflict.headers["x-should-retry"] == "false"
        assert conflict.json()["error"] == "conflict"
        assert (
            client.post(f"/{ns}", json={"mcpUrl": modern_upstream.url, "connectionId": "gh"}).status_code
            == 409
        )
        assert client.get(f"/{ns}/gh").json()["mcpUrl"] == modern_upstream.url


def test_list_filters_and_cursor_pagination(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        for i in range(5):
            user = "u1" if i % 2 == 0 else "u2"
            response = client.put(
                f"/{ns}/c{i}",
                json={"mcpUrl": modern_upstream.url, "name": f"n{i}", "metadata": {"userId": user, "n": i}},
            )
            assert response.status_code == 201
        seen, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = client.get(f"/{ns}", params=params).json()
            seen += [c["connectionId"] for c in page["connections"]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert seen == ["c0", "c1", "c2", "c3", "c4"]
        dotted_form = client.get(f"/{ns}", params={"metadata.userId": "u1"}).json()["connections"]
        bracket_form = client.get(f"/{ns}", params={"metadata[userId]": "u1"}).json()["connections"]
        assert (
            [c["connectionId"] for c in dotted_form]
            == ["c0", "c2", "c4"]
            == [c["connectionId"] for c in bracket_form]
        )
        assert [
            c["connectionId"] for c in client.get(f"/{ns}", params={"metadata.n": "3"}).json()["connections"]
        ] == ["c3"]
        assert [
            c["connectionId"] for c in client.get(f"/{ns}", params={"name": "n1"}).json()["connections"]
        ] == ["c1"]
        assert (
            len(client.get(f"/connect/{ns}", params={"mcpUrl": modern_upstream.url}).json()["connections"])
            == 5
        )
        assert client.get(f"/{ns}", params={"cursor": "%%%"}).status_code == 400
        assert client.get(f"/{ns}", params={"limit": 0}).status_code == 400


def test_headers_are_write_only_encrypted_and_sent_upstream(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    secret = "sk-very-secret-value-123"
    with gateway.client() as client:
        ns = _ns(client)
        created = client.put(
            f"/{ns}/auth", json={"mcpUrl": modern_upstream.url, "headers": {"X-Api-Key": secret}}
        )
        assert created.status_code == 201
        assert secret not in created.text and created.json()["headerNames"] == ["X-Api-Key"]
        for path in (f"/{ns}/auth", f"/{ns}", f"/connect/{ns}/auth"):
            assert secret not in client.get(path).text
        seen = client.post(f"/{ns}/auth/.tools/headers", json={"name": "x-api-key"}).json()
        assert seen["content"][0]["text"] == secret
        # Merge on PUT: a new header joins, null removes.
        client.put(f"/{ns}/auth", json={"headers": {"X-Other": "2"}})
        assert client.get(f"/{ns}/auth").json()["headerNames"] == ["X-Api-Key", "X-Other"]
        client.put(f"/{ns}/auth", json={"headers": {"X-Api-Key": None}})
        assert client.get(f"/{ns}/auth").json()["headerNames"] == ["X-Other"]
        gone = client.post(f"/{ns}/auth/.tools/headers", json={"name": "x-api-key"}).json()
        assert gone["content"][0]["text"] == ""
        client.put(f"/{ns}/auth", json={"headers": {"X-Api-Key": secret}})
    db = Path(gateway.data_dir) / "junction.db"
    raw = b"".join(p.read_bytes() for p in db.parent.glob("junction.db*"))
    assert secret.encode() not in raw
    stored = (
        sqlite3.connect(db)
        .execute("select headers_ciphertext from connections where connection_id='auth'")
        .fetchone()[0]
    )
    assert stored.startswith("v1.") and secret not in stored
    assert stat.S_IMODE((Path(gateway.data_dir) / "master.key").stat().st_mode) == 0o600
    assert secret not in gateway.logs()


def test_header_validation_never_echoes_values(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        bad = client.post(
            f"/{ns}", json={"mcpUrl": modern_upstream.url, "headers": {"X-Key": "line1\nsecret-tail"}}
        )
        assert bad.status_code == 400 and "secret-tail" not in bad.text
        assert (
            client.post(f"/{ns}", json={"mcpUrl": modern_upstream.url, "headers": {"Host": "x"}}).status_code
            == 400
        )
        assert (
            client.post(f"/{ns}", json={"mcpUrl": modern_upstream.url, "headers": ["a"]}).status_code == 400
        )


def test_direct_tool_calls_with_slash_paths(gateway, dotted_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        assert client.put(f"/{ns}/gh", json={"mcpUrl": dotted_upstream.url}).status_code == 201
        names = {t["name"] for t in client.get(f"/{ns}/gh/.tools").json()["tools"]}
        assert {"repo.search", "repo.get", "issues.create", "repo_search"} <= names
        group = client.get(f"/{ns}/gh/.tools/repo").json()
        assert sorted(t["name"] for t in group["tools"]) == ["repo.get", "repo.search"]
        single = client.get(f"/{ns}/gh/.tools/repo/search").json()
        assert single["name"] == "repo.search" and "inputSchema" in single
        assert client.get(f"/{ns}/gh/.tools/repo/search/").json()["name"] == "repo.search"
        assert client.get(f"/{ns}/gh/.tools/repo%2Fsearch").json()["name"] == "repo.search"
        assert client.get(f"/{ns}/gh/.tools/repo.search").json()["name"] == "repo.search"
        result = client.post(f"/{ns}/gh/.tools/repo/search", json={"query": "mcp"}).json()
        assert result["content"][0]["text"] == "search:mcp"
        created = client.post(f"/connect/{ns}/gh/.tools/issues/create", json={"title": "bug"}).json()
        assert created["structuredContent"] == {"created": "bug"}
        assert client.get(f"/{ns}/gh/.tools/nope").status_code == 404
        assert client.post(f"/{ns}/gh/.tools/nope", json={}).json()["error"] == "not_found"


def test_tool_errors_and_bad_bodies(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        client.put(f"/{ns}/m", json={"mcpUrl": modern_upstream.url})
        failed = client.post(f"/{ns}/m/.tools/fail", json={})
        assert failed.status_code == 200 and failed.json()["isError"] is True
        added = client.post(f"/{ns}/m/.tools/add", json={"a": 2, "b": 3}).json()
        assert added["structuredContent"] == {"sum": 5}
        broken = client.post(
            f"/{ns}/m/.tools/echo", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400 and broken.json()["error"] == "invalid_json"
        array = client.post(f"/{ns}/m/.tools/echo", json=[1, 2])
        assert array.status_code == 400 and array.json()["error"] == "validation_error"
        wrong_types = client.post(f"/{ns}", json={"mcpUrl": 42})
        assert wrong_types.status_code == 400
        assert client.post(f"/{ns}", json={"mcpUrl": "ftp://x"}).status_code == 400
        assert client.post(f"/{ns}", json={"mcpUrl": modern_upstream.url, "metadata": "x"}).status_code == 400
        assert (
            client.post(f"/{ns}", json={"mcpUrl": modern_upstream.url, "bogus": 1}).json()["error"]
            == "validation_error"
        )
        assert client.get("/no-such-ns").json()["error"] == "not_found"
        assert client.get(f"/{ns}/no-such-conn").status_code == 404
        assert client.get(f"/{ns}/no-such-conn/.tools").status_code == 404


def test_oversize_bodies_are_refused(start_gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(JUNCTION_MAX_BODY_BYTES="2048")
    with gateway.client() as client:
        ns = _ns(client)
        client.put(f"/{ns}/m", json={"mcpUrl": modern_upstream.url})
        big = client.post(f"/{ns}/m/.tools/echo", json={"text": "x" * 5000})
        assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
        ok = client.post(f"/{ns}/m/.tools/echo", json={"text": "small"})
        assert ok.json()["content"][0]["text"] == "small"


def test_private_upstreams_are_refused_by_default(start_gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(JUNCTION_ALLOW_PRIVATE_UPSTREAMS="0")
    with gateway.client() as client:
        ns = _ns(client)
        response = client.put(f"/{ns}/local", json={"mcpUrl": modern_upstream.url})
        assert response.json()["status"]["state"] == "error"
        assert "JUNCTION_ALLOW_PRIVATE_UPSTREAMS" in response.json()["status"]["message"]


def test_namespace_tools_envelopes_isolate_failures(gateway, modern_upstream, dotted_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        client.put(f"/{ns}/good", json={"mcpUrl": modern_upstream.url})
        client.put(f"/{ns}/dotted", json={"mcpUrl": dotted_upstream.url})
        client.put(f"/{ns}/dead", json={"mcpUrl": "http://127.0.0.1:9/mcp"})
        envelopes = {e["connectionId"]: e for e in client.get(f"/{ns}/.tools").json()["connections"]}
        assert "echo" in {t["name"] for t in envelopes["good"]["tools"]}
        assert "repo.search" in {t["name"] for t in envelopes["dotted"]["tools"]}
        assert envelopes["dead"]["error"]["error"].startswith("upstream_")


def test_delete_namespace_removes_its_connections(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client, "doomed")
        client.put(f"/{ns}/m", json={"mcpUrl": modern_upstream.url})
        assert client.delete(f"/{ns}/m").json() == {"success": True}
        assert client.get(f"/{ns}/m").status_code == 404
        client.put(f"/{ns}/m", json={"mcpUrl": modern_upstream.url})
        assert client.delete(f"/namespaces/{ns}").status_code == 200
        client.put(f"/namespaces/{ns}")
        assert client.get(f"/{ns}").json()["connections"] == []


def test_everything_survives_a_restart(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        client.put(
            f"/{ns}/keep",
            json={"mcpUrl": modern_upstream.url, "metadata": {"k": "v"}, "headers": {"X-Api-Key": "kept"}},
        )
    gateway.restart()
    with gateway.client() as client:
        record = client.get(f"/{ns}/keep").json()
        assert record["metadata"] == {"k": "v"} and record["headerNames"] == ["X-Api-Key"]
        seen = client.post(f"/{ns}/keep/.tools/headers", json={"name": "x-api-key"}).json()
        assert seen["content"][0]["text"] == "kept"


def test_api_keys_are_created_once_listed_without_secret_and_revoked(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        created = client.post("/keys", json={"name": "ci"})
        assert created.status_code == 201
        key = created.json()["key"]
        listed = client.get("/keys").json()["keys"]
        assert any(k["id"] == created.json()["id"] for k in listed) and key not in json.dumps(listed)
        with httpx2.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as other:
            assert other.get("/namespaces").status_code == 200
            assert client.delete(f"/keys/{created.json()['id']}").json() == {"success": True}
            assert other.get("/namespaces").status_code == 401
        assert client.delete("/keys/key_missing").status_code == 404


def test_first_start_creates_an_admin_key_file(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(JUNCTION_ADMIN_KEY="")
    key_file = Path(gateway.data_dir) / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert key in gateway.logs()  # printed once
    with httpx2.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/namespaces").status_code == 200
    gateway.restart()
    assert gateway.logs().count(key) == 1  # not printed again


def test_smithery_compat_endpoints(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        servers = client.get("/servers", params={"pageSize": 1})
        assert servers.status_code == 200 and servers.json()["servers"] == []
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/no/such/route/at/all").json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["/mcp/team-a/m", "/connect/team-a/m/mcp"])
def test_per_connection_endpoint_refuses_get(gateway, modern_upstream, path: str) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        client.put(f"/{ns}/m", json={"mcpUrl": modern_upstream.url})
        assert client.get(path).status_code == 405


def test_an_upstream_that_is_not_mcp_gets_a_clear_error(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        ns = _ns(client)
        # The gateway's own metadata route answers JSON to GET, and 405 to POST: not MCP. (Its
        # /health is not used: POST there reaches the REST API, whose 401 names an OAuth server.)
        response = client.put(
            f"/{ns}/garbage", json={"mcpUrl": gateway.url + "/.well-known/oauth-authorization-server"}
        )
        assert response.status_code == 201
        status = response.json()["status"]
        assert status["state"] == "error" and "does not speak MCP" in status["message"]
        listing = client.get(f"/{ns}/garbage/.tools")
        assert listing.status_code == 502 and listing.json()["error"] == "upstream_unavailable"
        assert client.get("/health").status_code == 200  # and everyone else is still served


def test_hostile_bodies_get_clean_errors(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    deep = b"[" * 100_000
    with gateway.client() as client:
        ns = _ns(client)
        client.put(f"/{ns}/m", json={"mcpUrl": modern_upstream.url})
        rest = client.post(f"/{ns}/m/.tools/echo", content=deep, headers={"content-type": "application/json"})
        assert rest.status_code == 400 and rest.json()["error"] == "invalid_json"
        tricky = b'{"method":"tools/call","x":' + deep
        mcp = client.post(f"/mcp/{ns}", content=tricky, headers={"content-type": "application/json"})
        assert 400 <= mcp.status_code < 500
        bad_value = client.put(
            f"/{ns}/h", json={"mcpUrl": modern_upstream.url, "headers": {"X-Key": "caf\u00e9"}}
        )
        assert bad_value.status_code == 400 and "caf" not in bad_value.text
        assert client.post(f"/{ns}/m/.tools/echo", json={"text": "still serving"}).status_code == 200


def test_access_log_is_off_by_default_and_can_be_turned_on(start_gateway) -> None:  # type: ignore[no-untyped-def]
    quiet = start_gateway(JUNCTION_LOG_LEVEL="info")
    loud = start_gateway(JUNCTION_LOG_LEVEL="info", JUNCTION_ACCESS_LOG="1")
    for gateway in (quiet, loud):
        with gateway.client() as client:
            assert client.get("/namespaces").status_code == 200
    assert '"GET /namespaces HTTP/1.1" 200' not in quiet.logs()
    assert '"GET /namespaces HTTP/1.1" 200' in loud.logs()
    assert loud.admin_key not in loud.logs()  # the request line never carries the key
