"""Service tokens with Smithery's own clients, unchanged: a backend mints a user's token with the
`@smithery/api` SDK (`client.tokens.create`) or `smithery auth token`, and the same clients then use
that token as their API key (an opaque string to them) and see and call only that user's connections.

The namespace and connections are made over REST with the admin key; tests/test_tokens.py covers the
token rules themselves through raw HTTP.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _node import Node, Run, ensure_node
from conftest import Gateway, Upstream
from test_smithery_client import MODERN_TOOLS, _namespace, _text

pytestmark = pytest.mark.timeout(420)  # the first run installs the npm packages

ALICE = ["alice-calc", "alice-notes"]
BOB = "bob-calc"


@pytest.fixture(scope="session")
def node() -> Node:
    return ensure_node()


@pytest.fixture
def namespace(gateway: Gateway, modern_upstream: Upstream) -> str:
    """A namespace with two of alice's connections, one of bob's and one without metadata."""
    ns = _namespace(gateway, "tok")
    with gateway.client() as admin:
        for cid, user in ((ALICE[0], "alice"), (ALICE[1], "alice"), (BOB, "bob"), ("shared", None)):
            body: dict[str, Any] = {"mcpUrl": modern_upstream.url}
            if user:
                body["metadata"] = {"userId": user}
            response = admin.put(f"/{ns}/{cid}", json=body)
            assert response.status_code == 201, response.text
    return ns


def _alice(ns: str, ttl: str = "1h") -> dict[str, Any]:
    return {"namespaces": ns, "metadata": {"userId": "alice"}, "ttl": ttl}


def _expires_in(expires_at: str) -> timedelta:
    return datetime.fromisoformat(expires_at) - datetime.now(UTC)


def _hidden(outcome: dict[str, Any]) -> bool:
    """The SDK raised its NotFoundError for a 404 with the gateway's problem body."""
    return (
        outcome["ok"] is False
        and (outcome["class"], outcome["status"], outcome["isNotFound"]) == ("NotFoundError", 404, True)
        and outcome["body"]["error"] == "not_found"
    )


@pytest.mark.parametrize("minter", ["api key", "user token"])
def test_smithery_sdk_mints_a_token_that_sees_only_its_users_connections(
    node: Node, gateway: Gateway, namespace: str, minter: str
) -> None:
    # The backend's API key mints alice's token; or alice's own token mints a child asking for the
    # whole namespace, which still gets only what its parent has.
    if minter == "api key":
        key, policy = gateway.admin_key, [_alice(namespace)]
    else:
        with gateway.client() as admin:
            response = admin.post("/tokens", json={"policy": [_alice(namespace)]})
        assert response.status_code == 200, response.text
        key, policy = response.json()["token"], [{"namespaces": namespace, "ttl": "30m"}]
    base = gateway.url.rstrip("/")
    env = {"SMITHERY_API_KEY": key, "SMITHERY_BASE_URL": base, "SMITHERY_CONNECT_BASE_URL": base}
    args = {"namespace": namespace, "policy": policy, "own": ALICE[0], "other": BOB}
    run = node.script("smithery_tokens.mjs", json.dumps(args), env=env).ok()
    out, story = run.json(), run.describe()

    minted = out["minted"]
    assert isinstance(minted["token"], str) and minted["token"] not in (key, gateway.admin_key)
    lifetime = timedelta(hours=1) if minter == "api key" else timedelta(minutes=30)
    assert lifetime - timedelta(minutes=2) < _expires_in(minted["expiresAt"]) <= lifetime, minted
    assert out["apiKeyIsToken"] is True
    assert [r["path"] for r in run.requests][:2] == ["/tokens", f"/{namespace}"], story

    # REST through the SDK: alice's rows only; bob's is missing, not forbidden, on every call.
    assert out["list"] == ALICE
    assert out["listOtherUser"] == []
    assert out["getOwn"]["connectionId"] == ALICE[0]
    assert out["getOwn"]["metadata"] == {"userId": "alice"}
    assert out["toolsOwn"] == MODERN_TOOLS
    assert _text(out["callOwn"]) == "mine"
    for what in ("getOther", "toolsOther", "callOther", "deleteOther"):
        assert _hidden(out[what]), (what, out[what])

    # MCP through createConnection() at /connect/{ns}/{id}/mcp, the token as the client's apiKey.
    assert out["mcpOwn"]["tools"] == MODERN_TOOLS
    assert _text(out["mcpOwn"]["calls"]["echo"]["value"]) == "mine over mcp"
    assert _hidden(out["mcpOther"])  # createConnection() looks the connection up first
    direct = out["mcpOtherDirect"]
    assert (direct["ok"], direct["class"], direct["code"]) == (False, "StreamableHTTPError", 404), direct
    assert f"POST /connect/{namespace}/{BOB}/mcp 404" in [
        f"{r['method']} {r['path']} {r['status']}" for r in run.requests
    ], story

    # The namespace endpoint lists and calls alice's tools only.
    bundle = out["namespaceMcp"]
    assert bundle["tools"] == sorted(f"{cid}__{tool}" for cid in ALICE for tool in MODERN_TOOLS)
    assert _text(bundle["calls"][f"{ALICE[0]}__echo"]["value"]) == "mine via the namespace"
    refused = bundle["calls"][f"{BOB}__echo"]
    assert refused["ok"] is False and "not found" in refused["message"], refused

    with gateway.client() as admin:  # the refused DELETE left bob's connection alone
        assert admin.get(f"/{namespace}/{BOB}").json()["metadata"] == {"userId": "bob"}
    assert not [r for r in run.requests if r["status"] >= 500], story


def test_smithery_cli_mints_tokens_and_narrowed_children_stay_limited(
    node: Node, gateway: Gateway, namespace: str
) -> None:
    base = gateway.url.rstrip("/")

    def smithery(key: str, *args: str) -> Run:
        env = {"SMITHERY_API_KEY": key, "SMITHERY_BASE_URL": base}
        return node.smithery(*args, "--json", env=env)

    def mint(key: str, *policy: dict[str, Any]) -> dict[str, Any]:
        flags = [arg for constraint in policy for arg in ("--policy", json.dumps(constraint))]
        minted: dict[str, Any] = smithery(key, "auth", "token", *flags).ok().json()
        assert isinstance(minted["token"], str) and minted["expiresAt"], minted
        return minted

    def listed(key: str) -> list[str]:
        run = smithery(key, "mcp", "list", "--namespace", namespace).ok()
        return sorted(s["id"] for s in run.json()["servers"])

    def call(key: str, cid: str) -> Run:
        return smithery(key, "tool", "call", cid, "echo", '{"text":"cli"}', "--namespace", namespace)

    # The backend: `smithery auth token` with its API key.
    parent = mint(gateway.admin_key, _alice(namespace))
    token = parent["token"]
    assert timedelta(minutes=58) < _expires_in(parent["expiresAt"]) <= timedelta(hours=1)
    assert listed(token) == ALICE
    assert _text(call(token, ALICE[0]).ok().json()) == "cli"
    refused = call(token, BOB)
    assert refused.returncode == 1 and refused.json()["error"].startswith("404 "), refused.describe()
    hidden = smithery(token, "mcp", "get", BOB, "--namespace", namespace)
    assert hidden.returncode == 1 and "404" in hidden.stderr, hidden.describe()

    # SMITHERY_API_KEY=$TOKEN smithery auth token --policy ...: a read-only child of alice's token.
    reader = mint(token, {"resources": "connections", "operations": "read", "ttl": "30m"})
    assert _expires_in(reader["expiresAt"]) <= timedelta(minutes=30)
    assert listed(reader["token"]) == ALICE
    tools = smithery(reader["token"], "tool", "list", ALICE[0], "--namespace", namespace, "--flat").ok()
    assert sorted(t["name"] for t in tools.json()["tools"]) == MODERN_TOOLS
    refused = call(reader["token"], ALICE[0])
    assert refused.returncode == 1 and refused.json()["error"].startswith("403 "), refused.describe()
    hidden = smithery(reader["token"], "mcp", "get", BOB, "--namespace", namespace)
    assert hidden.returncode == 1 and "404" in hidden.stderr, hidden.describe()

    # A child asking for bob's rows too is minted, but still sees and calls only alice's.
    wider = mint(token, {"metadata": [{"userId": "alice"}, {"userId": "bob"}]})
    assert listed(wider["token"]) == ALICE
    assert _text(call(wider["token"], ALICE[1]).ok().json()) == "cli"
    refused = call(wider["token"], BOB)
    assert refused.returncode == 1 and refused.json()["error"].startswith("404 "), refused.describe()

    # A child cannot outlive its parent: the CLI reports the gateway's 403.
    longer = smithery(token, "auth", "token", "--policy", '{"ttl":"2h"}')
    assert longer.returncode == 1 and "403" in longer.stderr, longer.describe()
