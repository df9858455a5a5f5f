"""Service tokens through real HTTP: minting, per-user isolation on every surface, narrowing,
revocation, and the attacks a token must survive."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import pytest
from conftest import Gateway, Upstream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from test_edges import INITIALIZE

CALL_LIMIT = 15.0
ACCEPT = {"accept": "application/json, text/event-stream"}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def mint(client: httpx2.Client, *policy: dict[str, Any], **body: Any) -> str:
    response = client.post("/tokens", json={"policy": list(policy), **body} if policy else body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) >= {"token", "expiresAt"}
    return str(answer["token"])


def as_token(gateway: Gateway, token: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=CALL_LIMIT
    )


@pytest.fixture
def users(gateway: Gateway, modern_upstream: Upstream) -> Gateway:
    """Namespace `app` with two connections per user (alice, bob) and one without metadata;
    namespace `other` with one of alice's."""
    with gateway.client() as admin:
        for ns in ("app", "other"):
            assert admin.put(f"/namespaces/{ns}").status_code in (200, 201)
        for ns, cid, user in (
            ("app", "alice-gh", "alice"),
            ("app", "alice-db", "alice"),
            ("app", "bob-gh", "bob"),
            ("app", "bob-db", "bob"),
            ("app", "shared", None),
            ("other", "alice-x", "alice"),
        ):
            body: dict[str, Any] = {"mcpUrl": modern_upstream.url}
            if user:
                body["metadata"] = {"userId": user}
            response = admin.put(f"/{ns}/{cid}", json=body)
            assert response.status_code == 201, response.text
    return gateway


def mcp_session(
    gateway: Gateway, token: str, ns: str, mode: str, body: Callable[[Client], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        async with httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=CALL_LIMIT
        ) as http:
            with anyio.fail_after(4 * CALL_LIMIT):
                async with Client(
                    streamable_http_client(gateway.mcp_url(ns), http_client=http), mode=mode
                ) as client:
                    return await body(client)

    return anyio.run(main)


# --- what a user-scoped token sees ------------------------------------------------------------------


def test_a_user_token_sees_and_uses_only_that_users_connections_over_rest(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}, "ttl": "1h"})
    with as_token(users, token) as alice:
        listed = alice.get("/app")
        assert listed.status_code == 200, listed.text
        assert [c["connectionId"] for c in listed.json()["connections"]] == ["alice-db", "alice-gh"]
        # Paging never reveals hidden rows: one page of one, then a cursor to the second, then none.
        first = alice.get("/app", params={"limit": 1}).json()
        assert [c["connectionId"] for c in first["connections"]] == ["alice-db"]
        second = alice.get("/app", params={"limit": 1, "cursor": first["nextCursor"]}).json()
        assert [c["connectionId"] for c in second["connections"]] == ["alice-gh"]
        assert second["nextCursor"] is None
        # Another user's connection does not exist for this token: the very body of a missing one.
        hidden = alice.get("/app/bob-gh")
        missing = alice.get("/app/nobody")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"] == missing.json()["error"] == "not_found"
        assert hidden.json()["message"].replace("bob-gh", "X") == missing.json()["message"].replace(
            "nobody", "X"
        )
        for path in ("/app/bob-gh/.tools", "/app/bob-gh/.tools/echo"):
            assert alice.get(path).status_code == 404
        assert alice.post("/app/bob-gh/.tools/echo", json={"text": "x"}).status_code == 404
        assert alice.delete("/app/bob-gh").status_code == 404
        assert alice.put("/app/bob-gh", json={"name": "mine now"}).status_code == 404
        # Her own: read, tools, call.
        assert alice.get("/app/alice-gh").status_code == 200
        assert {t["name"] for t in alice.get("/app/alice-gh/.tools").json()["tools"]} >= {"echo"}
        called = alice.post("/app/alice-gh/.tools/echo", json={"text": "hi"})
        assert called.status_code == 200 and "hi" in json.dumps(called.json())
        envelopes = alice.get("/app/.tools").json()["connections"]
        assert sorted(e["connectionId"] for e in envelopes) == ["alice-db", "alice-gh"]
        # Other namespaces and admin surfaces are out of reach.
        assert alice.get("/other").status_code == 403
        assert alice.get("/other/alice-x").status_code == 404
        assert alice.get("/keys").status_code == 403
        assert alice.post("/keys", json={"name": "escalate"}).status_code == 403


def test_metadata_constraints_apply_to_writes(users: Gateway, modern_upstream: Upstream) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}})
    with as_token(users, token) as alice:
        made = alice.post("/app", json={"mcpUrl": modern_upstream.url, "metadata": {"userId": "alice"}})
        assert made.status_code == 201, made.text
        cid = made.json()["connectionId"]
        for metadata in ({"userId": "bob"}, {}, None):
            body: dict[str, Any] = {"mcpUrl": modern_upstream.url}
            if metadata is not None:
                body["metadata"] = metadata
            refused = alice.post("/app", json=body)
            assert refused.status_code == 403, (metadata, refused.text)
            assert refused.json()["error"] == "forbidden"
        # Escaping through an update: metadata that would hide the row from her is refused.
        escape = alice.put(f"/app/{cid}", json={"metadata": {"userId": "bob"}})
        assert escape.status_code == 403
        assert (
            alice.put(f"/app/{cid}", json={"metadata": {"userId": "alice", "tier": "pro"}}).status_code == 200
        )
        # A PUT creating a new id follows the rule for creation.
        assert alice.put("/app/new-one", json={"mcpUrl": modern_upstream.url}).status_code == 403
        assert alice.delete(f"/app/{cid}").status_code == 200
    with users.client() as admin:
        assert admin.get("/app/bob-gh").json()["metadata"] == {"userId": "bob"}


def test_read_only_and_execute_only_tokens(users: Gateway) -> None:
    with users.client() as admin:
        reader = mint(admin, {"namespaces": "app", "resources": "connections", "operations": "read"})
        caller = mint(admin, {"namespaces": "app", "operations": "execute", "metadata": {"userId": "bob"}})
    with as_token(users, reader) as client:
        assert client.get("/app").status_code == 200
        assert client.get("/app/bob-gh/.tools").status_code == 200
        assert client.post("/app/bob-gh/.tools/echo", json={"text": "x"}).status_code == 403
        assert client.delete("/app/bob-gh").status_code == 403
        assert client.get("/namespaces").status_code == 403
    with as_token(users, caller) as client:
        assert client.post("/app/bob-gh/.tools/echo", json={"text": "x"}).status_code == 200
        assert client.get("/app/bob-gh/.tools").status_code == 200  # listing tools is part of calling them
        assert client.get("/app/bob-gh").status_code == 403  # but not the connection's record
        assert client.post("/app/alice-gh/.tools/echo", json={"text": "x"}).status_code == 404


def test_namespaces_list_shows_only_the_tokens_namespaces(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": ["app", "nope"], "resources": "namespaces", "operations": "read"})
    with as_token(users, token) as client:
        listing = client.get("/namespaces").json()
        assert [n["name"] for n in listing["namespaces"]] == ["app"]
        assert listing["pagination"]["totalCount"] == 1
        assert client.get("/namespaces/app").status_code == 200
        assert client.get("/namespaces/other").status_code == 403
        assert client.put("/namespaces/app").status_code == 403
        assert client.delete("/namespaces/app").status_code == 403


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_namespace_endpoint_shows_a_user_only_their_tools(users: Gateway, mode: str) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}})

    async def body(client: Client) -> tuple[set[str], Any, Any, Any]:
        tools = {t.name for t in (await client.list_tools()).tools}
        own = await client.call_tool("alice-gh__echo", {"text": "mine"})
        errors = []
        for name in ("bob-gh__echo", "nobody__echo"):
            try:
                await client.call_tool(name, {"text": "x"})
            except Exception as exc:  # the SDK raises the JSON-RPC error
                errors.append(str(exc).replace(name, "N"))
        return tools, own, errors, None

    tools, own, errors, _ = mcp_session(users, token, "app", mode, body)
    prefixes = {name.split("__")[0] for name in tools}
    assert prefixes == {"alice-db", "alice-gh"}, tools
    assert "mine" in json.dumps(own.model_dump(mode="json"))
    assert len(errors) == 2 and errors[0] == errors[1], errors


def test_the_passthrough_refuses_connections_the_token_cannot_see(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}})
    with as_token(users, token) as client:
        for path in ("/mcp/app/bob-gh", "/connect/app/bob-gh/mcp"):
            refused = client.post(path, json=INITIALIZE, headers=ACCEPT)
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["message"] == "connection 'bob-gh' not found in namespace 'app'"
        ok = client.post("/mcp/app/alice-gh", json=INITIALIZE, headers=ACCEPT)
        assert ok.status_code == 200, ok.text


# --- rpcReqMatch --------------------------------------------------------------------------------------


def test_rpc_req_match_limits_calls_on_every_surface(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(
            admin,
            {"namespaces": "app", "rpcReqMatch": {"method": "^tools/list$"}},
            {
                "namespaces": "app",
                "rpcReqMatch": {"method": "^tools/call$", "params.name": "^(alice-gh__)?echo$"},
            },
        )

    async def body(client: Client) -> tuple[Any, str]:
        ok = await client.call_tool("alice-gh__echo", {"text": "allowed"})
        try:
            await client.call_tool("alice-gh__add", {"a": 1, "b": 2})
            refused = "not refused"
        except Exception as exc:
            refused = str(exc)
        return ok, refused

    ok, refused = mcp_session(users, token, "app", "legacy", body)
    assert "allowed" in json.dumps(ok.model_dump(mode="json"))
    assert "policy" in refused
    with as_token(users, token) as client:
        assert client.post("/app/bob-gh/.tools/echo", json={"text": "x"}).status_code == 200
        denied = client.post("/app/bob-gh/.tools/add", json={"a": 1, "b": 2})
        assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
        assert client.get("/app").status_code == 403  # REST management is no MCP request


def test_a_redos_pattern_cannot_hang_the_gateway(users: Gateway) -> None:
    with users.client() as admin:
        bad = admin.post("/tokens", json={"policy": [{"rpcReqMatch": {"params.name": "(a)\\1"}}]})
        assert bad.status_code == 400 and bad.json()["error"] == "validation_error"
        too_long = admin.post("/tokens", json={"policy": [{"rpcReqMatch": {"method": "a" * 501}}]})
        assert too_long.status_code == 400
        token = mint(admin, {"namespaces": "app", "rpcReqMatch": {"params.arguments.text": "^(a+)+$"}})
    with as_token(users, token) as client:
        started = time.monotonic()
        hostile = client.post("/app/alice-gh/.tools/echo", json={"text": "a" * 1_000_000 + "!"})
        assert hostile.status_code == 403
        assert time.monotonic() - started < 5.0
        assert client.post("/app/alice-gh/.tools/echo", json={"text": "aaaa"}).status_code == 200


# --- narrowing ---------------------------------------------------------------------------------------


def test_a_child_never_exceeds_its_parent(users: Gateway) -> None:
    with users.client() as admin:
        parent = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}, "ttl": "1h"})
    with as_token(users, parent) as client:
        wider = mint(client, {"metadata": [{"userId": "alice"}, {"userId": "bob"}], "ttl": "30m"})
        longer = client.post("/tokens", json={"policy": [{"ttl": "2h"}]})
        assert longer.status_code == 403 and longer.json()["error"] == "forbidden"
        default = client.post("/tokens", json={"policy": [{"operations": "read"}]}).json()
    with as_token(users, wider) as child:
        ids = [c["connectionId"] for c in child.get("/app").json()["connections"]]
        assert ids == ["alice-db", "alice-gh"]
        assert child.get("/app/bob-gh").status_code == 404
        grandchild = mint(child, {"operations": "read"})
    with as_token(users, grandchild) as client:
        assert client.post("/app/alice-gh/.tools/echo", json={"text": "x"}).status_code == 403
        assert client.get("/app/alice-gh").status_code == 200
    assert _exp(default["token"]) <= _exp(parent)  # a default ttl is cut to the parent's


def test_tokens_are_listed_without_secrets_and_revoked_with_their_children(users: Gateway) -> None:
    with users.client() as admin:
        parent = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}})
        listed = admin.get("/tokens").json()["tokens"]
        assert len(listed) == 1 and "token" not in listed[0]
        assert listed[0]["policy"][0]["metadata"] == [{"userId": "alice"}]
        assert parent not in json.dumps(listed)
    with as_token(users, parent) as client:
        child = mint(client, {"operations": "read"})
        assert [t["parentId"] for t in client.get("/tokens").json()["tokens"]] == [_jti(parent)]
    with users.client() as admin:
        assert admin.delete(f"/tokens/{_jti(parent)}").json() == {"success": True}
        assert admin.delete(f"/tokens/{_jti(parent)}").status_code == 404
    for token in (parent, child):
        with as_token(users, token) as client:
            refused = client.get("/app")
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


def test_revoking_the_api_key_ends_every_token_it_began(users: Gateway) -> None:
    with users.client() as admin:
        key = admin.post("/keys", json={"name": "backend"}).json()
    with as_token(users, key["key"]) as backend:
        token = mint(backend, {"namespaces": "app"})
    with as_token(users, token) as client:
        child = mint(client, {"operations": "read"})
        assert client.get("/app").status_code == 200
    with users.client() as admin:
        assert admin.delete(f"/keys/{key['id']}").status_code == 200
    for t in (token, child):
        with as_token(users, t) as client:
            assert client.get("/app").status_code == 401


# --- attacks -----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(token: str) -> str:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def _exp(token: str) -> int:
    return int(json.loads(_payload(token))["exp"])


def _jti(token: str) -> str:
    return str(json.loads(_payload(token))["jti"])


def test_forged_and_tampered_tokens_are_refused(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}})
        short = mint(admin, {"namespaces": "app", "ttl": 1})
    header, payload, signature = token.split(".")
    claims = json.loads(_payload(token))
    wider = dict(claims, pol=[[{"exp": claims["exp"]}]])
    kid = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
    db = sqlite3.connect(users.data_dir / "junction.db")
    public_pem = db.execute("select public_pem from signing_keys where kid = ?", (kid,)).fetchone()[0]
    db.close()
    hs_header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    hs_body = _b64(json.dumps(wider).encode())
    hs_sig = hmac.new(public_pem.encode(), f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest()
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    forged = {
        "wrong signature": f"{header}.{payload}.{signature[:-4]}{'AAAA' if not signature.endswith('AAAA') else 'BBBB'}",
        "tampered claims": f"{header}.{_b64(json.dumps(wider).encode())}.{signature}",
        "alg none": f"{none_header}.{_b64(json.dumps(wider).encode())}.",
        "HS256 with the public key": f"{hs_header}.{hs_body}.{_b64(hs_sig)}",
        "unknown kid": f"{_b64(json.dumps({'alg': 'EdDSA', 'kid': 'kzzz'}).encode())}.{payload}.{signature}",
        "truncated": token[:-10],
    }
    for what, bad in forged.items():
        with as_token(users, bad) as client:
            for path in ("/app", "/app/bob-gh"):
                response = client.get(path)
                assert response.status_code == 401, (what, response.text)
            assert client.post("/mcp/app", json={}).status_code == 401, what
    # Expiry: the one-second token stops working (polled, not slept past blindly).
    deadline = time.monotonic() + 5
    with as_token(users, short) as client:
        while client.get("/app").status_code == 200:
            assert time.monotonic() < deadline, "an expired token still works"
            time.sleep(0.1)
        assert client.get("/app").status_code == 401


def test_a_token_for_one_namespace_is_refused_on_another(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "other"})
    with as_token(users, token) as client:
        assert client.get("/other").status_code == 200
        assert client.get("/app").status_code == 403
        assert client.get("/app/alice-gh").status_code == 404
        refused = client.post(
            "/mcp/app",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={**ACCEPT, "mcp-protocol-version": "2026-07-28"},
        )
        assert refused.status_code in (403, 404), refused.text


def test_policy_validation_errors_are_clear(gateway: Gateway) -> None:
    with gateway.client() as admin:
        for body in (
            {"policy": []},
            {"policy": [{"resources": "everything"}]},
            {"policy": [{"operations": ["read", "delete"]}]},
            {"policy": [{"ttl": "2d"}]},
            {"policy": [{"ttl": 0}]},
            {"policy": [{"metadata": {"userId": 3}}]},
            {"policy": [{"namespace": "typo"}]},
            {"policy": "nope"},
            {"scope": "x"},
        ):
            response = admin.post("/tokens", json=body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"] == "validation_error" and response.json()["message"]
        assert admin.get("/tokens").json() == {"tokens": []}


# --- several instances sharing one database ------------------------------------------------------------


def test_revocation_and_key_rotation_reach_another_instance_within_seconds(start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    shared = {
        "JUNCTION_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
        "JUNCTION_MASTER_KEY": base64.b64encode(b"k" * 32).decode(),
        "JUNCTION_PUBLIC_URL": "https://gateway.example.com",  # one public URL behind a balancer
        "JUNCTION_ADMIN_KEY": "shared-admin-key-" + "x" * 24,
        "JUNCTION_TOKEN_SYNC_INTERVAL": "0.5",
    }
    a = start_gateway(**shared)
    b = start_gateway(**shared)
    with a.client() as admin:
        assert admin.put("/namespaces/app").status_code == 201
        key = admin.post("/keys", json={"name": "backend"}).json()
    with as_token(a, key["key"]) as backend:
        first = mint(backend, {"namespaces": "app"})
        second = mint(backend, {"namespaces": "app"})

    def refused_on_b(token: str, within: float = 5.0) -> float:
        started = time.monotonic()
        with as_token(b, token) as client:
            while client.get("/app").status_code == 200:
                assert time.monotonic() - started < within, "still accepted on the other instance"
                time.sleep(0.05)
        return time.monotonic() - started

    with as_token(b, first) as client:
        assert client.get("/app").status_code == 200  # verified on B without asking A
    with a.client() as admin:
        assert admin.delete(f"/tokens/{_jti(first)}").status_code == 200
    with as_token(a, first) as client:
        assert client.get("/app").status_code == 401  # at once where it was revoked
    assert refused_on_b(first) < 3.0
    with as_token(b, second) as client:
        assert client.get("/app").status_code == 200
    # Rotating the signing key on A: tokens signed before still verify on both, new ones too.
    with a.client() as admin:
        assert admin.post("/tokens/signing-key").status_code == 200
    with as_token(a, key["key"]) as backend:
        third = mint(backend, {"namespaces": "app"})
    for gateway in (a, b):
        for token in (second, third):
            with as_token(gateway, token) as client:
                assert client.get("/app").status_code == 200
    # Revoking the API key on A ends its tokens on B within seconds.
    with a.client() as admin:
        assert admin.delete(f"/keys/{key['id']}").status_code == 200
    assert refused_on_b(third) < 3.0


def test_a_policy_too_large_for_a_credential_is_refused_at_minting(gateway: Gateway) -> None:
    huge = {"namespaces": [f"ns-{i:03d}-" + "x" * 200 for i in range(100)]}
    with gateway.client() as admin:
        refused = admin.post("/tokens", json={"policy": [huge]})
        assert refused.status_code == 400 and "characters" in refused.json()["message"]
        assert admin.get("/tokens").json() == {"tokens": []}  # nothing was recorded


def test_connection_paths_do_not_tell_which_namespaces_exist(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "app", "metadata": {"userId": "alice"}})
    with as_token(users, token) as alice:
        existing = alice.get("/other/alice-x")  # a namespace out of reach that exists
        missing = alice.get("/no-such-ns/alice-x")
        assert existing.status_code == missing.status_code == 404
        assert existing.json()["message"].replace("other", "N") == missing.json()["message"].replace(
            "no-such-ns", "N"
        )


def test_a_revocation_from_long_ago_still_holds_after_a_restart(users: Gateway) -> None:
    with users.client() as admin:
        token = mint(admin, {"namespaces": "app"})
        assert admin.delete(f"/tokens/{_jti(token)}").status_code == 200
    users.stop()
    # As if revoked an hour ago (well before any window the instance reads at start).
    db = sqlite3.connect(users.data_dir / "junction.db")
    with db:
        db.execute(
            "update service_tokens set revoked_at = datetime('now', '-1 hour') where id = ?", (_jti(token),)
        )
    db.close()
    users.start()
    with as_token(users, token) as client:
        assert client.get("/app").status_code == 401
        assert client.post("/tokens", json={"policy": [{}]}).status_code == 401


def test_a_chain_holds_a_bounded_number_of_patterns_and_big_values_cost_nothing(users: Gateway) -> None:
    wide = {f"params._meta.p{i}": "^x$" for i in range(20)}
    with users.client() as admin:
        parent = mint(admin, {"namespaces": "app", "rpcReqMatch": wide}, {"namespaces": "app"})
    with as_token(users, parent) as client:
        child = mint(client, {"rpcReqMatch": wide})  # 40 patterns over the chain: the most there may be
    with as_token(users, child) as client:
        refused = client.post("/tokens", json={"policy": [{"rpcReqMatch": {"method": "."}}]})
        assert refused.status_code == 400 and "at most 40" in refused.json()["message"]
    junk = "y" * 190_000  # 20 of them: just under the 4 MiB body limit
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/list",
        "params": {"_meta": {**{f"p{i}": junk for i in range(20)}, **MODERN_META}},
    }
    with as_token(users, child) as client:
        started = time.monotonic()
        headers = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}
        answer = client.post("/mcp/app", json=request, headers=headers)
        assert time.monotonic() - started < 5.0
        assert answer.status_code == 403  # values over 64 KiB match no pattern: refused, and quickly
