"""Smithery's own clients against the gateway: the `@smithery/api` SDK (REST and, through
`createConnection()`, MCP with the official TypeScript MCP client) and the `smithery` CLI.

These are the published npm packages, pinned in tests/_node.py and pointed at the gateway only by
the environment (SMITHERY_BASE_URL, SMITHERY_CONNECT_BASE_URL, SMITHERY_API_KEY), as a user would.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from _node import PACKAGES, Node, Run, ensure_node, installed_version

from proxy.gateway.names import safe_names

pytestmark = pytest.mark.timeout(420)  # the first run installs the npm packages

# The tool sets of the shared upstreams (tests/upstreams/server.py), sorted.
MODERN_TOOLS = ["add", "blob", "echo", "fail", "headers", "sleep"]
LONG_NAME = "abcdefghi." * 9 + "abcdefghij"  # 100 characters
DOTTED_TOOLS = sorted(["repo.search", "repo.get", "issues.create", "plain", "repo_search", LONG_NAME])


@pytest.fixture(scope="session")
def node() -> Node:
    return ensure_node()


def _namespace(gateway: Any, prefix: str) -> str:
    """A fresh namespace, created over REST the way `smithery namespace create` does."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with gateway.client() as http:
        response = http.put(f"/namespaces/{name}")
    assert response.status_code in (200, 201), response.text
    return name


def _text(result: dict[str, Any]) -> str:
    return "".join(part["text"] for part in result["content"] if part.get("type") == "text")


def _wire(run: Run) -> list[str]:
    return [f"{r['method']} {r['path']} {r['status']}" for r in run.requests]


def test_pinned_packages_are_the_ones_that_run(node: Node) -> None:
    assert {name: installed_version(node.prefix, name) for name in PACKAGES} == PACKAGES


def test_smithery_sdk_manages_connections_and_calls_tools(
    node: Node, gateway: Any, modern_upstream: Any, dotted_upstream: Any
) -> None:
    base = gateway.url.rstrip("/")
    ns = _namespace(gateway, "sdk")
    env = {
        "SMITHERY_API_KEY": gateway.admin_key,
        "SMITHERY_BASE_URL": base,
        "SMITHERY_CONNECT_BASE_URL": base,
    }
    args = {"namespace": ns, "modernUrl": modern_upstream.url, "dottedUrl": dotted_upstream.url}
    run = node.script("smithery_sdk.mjs", json.dumps(args), env=env).ok()
    out = run.json()
    story = run.describe()

    assert (out["baseURL"], out["connectBaseURL"]) == (base, base)
    assert out["health"]["status"] == "ok"
    # createConnection() takes the first namespace; auto-pagination must stop (empty page).
    assert ns in out["namespacesFirstPage"]
    assert ns in out["namespacesAll"]
    assert len(out["namespacesAll"]) == len(set(out["namespacesAll"])), story

    # PUT with a chosen id creates (201), PUT again updates (200), POST generates an id (201).
    assert out["set"]["connectionId"] == "sdk-dotted"
    assert out["set"]["name"] == "Dotted tools"
    assert out["set"]["mcpUrl"] == dotted_upstream.url
    assert out["set"]["metadata"] == {"userId": "u2", "team": "core"}
    assert out["set"]["status"] == {"state": "connected"}
    assert out["setAgain"]["name"] == "Dotted tools (renamed)"
    assert out["setAgain"]["mcpUrl"] == dotted_upstream.url
    assert out["setAgain"]["metadata"] == {"userId": "u2", "team": "core"}
    created = out["created"]
    modern_id = created["connectionId"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", modern_id)
    assert created["name"] == modern_id
    assert created["mcpUrl"] == modern_upstream.url
    assert created["metadata"] == {"userId": "u1"}
    assert created["status"] == {"state": "connected"}
    assert {"PUT /" + ns + "/sdk-dotted 201", "PUT /" + ns + "/sdk-dotted 200", f"POST /{ns} 201"} <= set(
        _wire(run)
    ), story

    # Listing, with the SDK's query forms (metadata[userId]=u1 ...) and cursor pagination.
    assert out["listAll"] == sorted([modern_id, "sdk-dotted"])
    assert out["listU1"] == [modern_id]
    assert out["listU2Core"] == ["sdk-dotted"]
    assert out["listNobody"] == []
    assert out["listByName"] == ["sdk-dotted"]
    assert out["listByMcpUrl"] == [modern_id]
    assert f"GET /{ns}?metadata%5BuserId%5D=u1 200" in _wire(run), story
    assert [p["ids"] for p in out["pages"]] == [[i] for i in out["listAll"]]
    assert out["pages"][-1]["nextCursor"] is None
    assert all(p["nextCursor"] for p in out["pages"][:-1])

    assert out["get"]["connectionId"] == modern_id
    assert out["get"]["metadata"] == {"userId": "u1"}
    assert out["get"]["status"] == {"state": "connected"}
    missing = out["getMissing"]
    assert (missing["class"], missing["status"]) == ("NotFoundError", 404)
    assert missing["body"]["error"] == "not_found"
    assert isinstance(missing["body"]["message"], str)
    # A PUT that changes the upstream URL conflicts, and the SDK must not retry it.
    conflict = out["conflict"]
    assert (conflict["class"], conflict["status"], conflict["shouldRetry"]) == ("ConflictError", 409, "false")
    assert _wire(run).count(f"PUT /{ns}/sdk-dotted 409") == 1, story

    # REST tools: lists, calls (exact dotted names), one tool, a category, a missing tool.
    assert out["toolsModern"] == MODERN_TOOLS
    assert out["toolsDotted"] == DOTTED_TOOLS
    assert _text(out["callEcho"]) == "hello from the sdk"
    assert not out["callEcho"].get("isError")
    assert out["callAdd"]["structuredContent"] == {"sum": 42}
    # A failing tool: 200 with isError (what the CLI handles) or 422 (what Smithery's OpenAPI lists).
    fail = out["callFail"]
    if fail["ok"]:
        assert fail["value"]["isError"] is True, story
        assert _text(fail["value"]) == "boom"
    else:
        assert fail["status"] == 422, story
    assert _text(out["callDotted"]) == "search:junction"
    assert out["getToolDotted"]["name"] == "repo.search"
    assert out["getToolDotted"]["inputSchema"]["type"] == "object"
    assert _text(out["callUnderscore"]) == "repo_search:junction"  # not confused with repo.search
    assert [t["name"] for t in out["getToolCategory"]["tools"]] == ["issues.create"]
    assert sorted(t["name"] for t in out["getToolRepo"]["tools"]) == ["repo.get", "repo.search"]
    assert (out["getToolMissing"]["class"], out["getToolMissing"]["status"]) == ("NotFoundError", 404)

    # MCP via createConnection() at /connect/{ns}/{id}/mcp. By default it skips initialize and sends
    # `mcp-session-id: smithery-stateless` on every request; with handshake it initializes first.
    mcp = out["mcpExisting"]
    assert (mcp["connectionId"], mcp["url"]) == (modern_id, f"{base}/connect/{ns}/{modern_id}/mcp")
    assert mcp["sessionId"] == "smithery-stateless"
    assert mcp["tools"] == MODERN_TOOLS
    assert _text(mcp["calls"]["echo"]) == "hello over mcp"
    assert mcp["calls"]["add"]["structuredContent"] == {"sum": 3}
    assert mcp["calls"]["fail"]["isError"] is True
    assert _text(mcp["calls"]["fail"]) == "boom"
    stateless = [r for r in run.requests if r["path"] == f"/connect/{ns}/{modern_id}/mcp"]
    assert [(r["method"], r["status"], r["sessionId"]) for r in stateless] == [
        ("POST", 200, "smithery-stateless")
    ] * 4 + [("DELETE", 405, "smithery-stateless")], story
    made = out["mcpCreated"]  # GET 404, then PUT creates it; then the handshake
    assert made["connectionId"] == "sdk-mcp-created"
    assert made["serverVersion"]["name"], story
    assert made["tools"] == DOTTED_TOOLS
    assert _text(made["calls"]["repo.search"]) == "search:over mcp"
    wire = _wire(run)
    assert wire.index(f"GET /{ns}/sdk-mcp-created 404") < wire.index(f"PUT /{ns}/sdk-mcp-created 201"), story
    handshake = [r for r in run.requests if r["path"] == f"/connect/{ns}/sdk-mcp-created/mcp"]
    assert handshake and all(r["status"] in (200, 202, 405) for r in handshake), story

    # The namespace endpoint bundles every connection, under LLM-safe names by default
    # (<connectionId>__<tool>); the dotted names the script calls still work.
    bundle = out["namespaceMcp"]
    assert bundle["tools"] == sorted(
        safe_names(
            [(modern_id, t) for t in MODERN_TOOLS]
            + [(cid, t) for cid in ("sdk-dotted", "sdk-mcp-created") for t in DOTTED_TOOLS]
        ).values()
    )
    assert _text(bundle["calls"][f"{modern_id}.echo"]) == "via the namespace"
    assert _text(bundle["calls"]["sdk-dotted.repo.search"]) == "search:via the namespace"

    # DELETE, then gone.
    assert out["deleted"] == {i: {"success": True} for i in (modern_id, "sdk-dotted", "sdk-mcp-created")}
    assert (out["afterDelete"]["class"], out["afterDelete"]["status"]) == ("NotFoundError", 404)
    assert out["listAfterDelete"] == []
    assert not [r for r in run.requests if r["status"] >= 500], story


def test_smithery_cli_lists_and_calls_tools(
    node: Node, gateway: Any, modern_upstream: Any, dotted_upstream: Any
) -> None:
    # The CLI (smithery@1.1.1, SDK 0.64.2 inside) needs only SMITHERY_BASE_URL. Connections are made
    # over REST: `smithery mcp add` turns loopback URLs like our test upstreams into uplink pairs.
    ns = _namespace(gateway, "cli")
    with gateway.client() as http:
        for cid, url, user in (("gh", dotted_upstream.url, "u3"), ("calc", modern_upstream.url, "u4")):
            response = http.put(f"/{ns}/{cid}", json={"mcpUrl": url, "metadata": {"userId": user}})
            assert response.status_code == 201, response.text
    env = {"SMITHERY_API_KEY": gateway.admin_key, "SMITHERY_BASE_URL": gateway.url.rstrip("/")}

    def smithery(*args: str) -> Run:
        return node.smithery(*args, "--json", env=env)

    run = smithery("namespace", "list").ok()
    assert ns in run.json()["namespaces"]

    run = smithery("mcp", "list", "--namespace", ns).ok()
    listed = {s["id"]: s for s in run.json()["servers"]}
    assert set(listed) == {"gh", "calc"}
    assert {s["status"] for s in listed.values()} == {"connected"}
    assert listed["gh"]["mcpUrl"] == dotted_upstream.url

    run = smithery("mcp", "list", "--namespace", ns, "--metadata", '{"userId":"u3"}').ok()
    assert [s["id"] for s in run.json()["servers"]] == ["gh"]
    assert f"GET /{ns}?metadata.userId=u3 200" in _wire(run), run.describe()

    run = smithery("mcp", "get", "gh", "--namespace", ns).ok()
    assert run.json()["status"] == {"state": "connected"}
    assert run.json()["metadata"] == {"userId": "u3"}

    run = smithery("tool", "list", "gh", "--namespace", ns, "--flat").ok()
    assert sorted(t["name"] for t in run.json()["tools"]) == DOTTED_TOOLS
    assert _wire(run) == [f"GET /{ns}/gh 200", f"GET /{ns}/gh/.tools 200"]
    run = smithery("tool", "list", "gh", "issues.", "--namespace", ns).ok()
    assert [t["name"] for t in run.json()["tools"]] == ["issues.create"]
    run = smithery("tool", "get", "gh", "repo.search", "--namespace", ns).ok()
    assert run.json()["name"] == "repo.search"
    assert "query" in run.json()["inputSchema"]["properties"]

    # Dotted tool names go over the wire as slash paths: repo.search -> .tools/repo/search.
    run = smithery("tool", "call", "gh", "repo.search", '{"query":"cli"}', "--namespace", ns).ok()
    assert _text(run.json()) == "search:cli"
    assert f"POST /{ns}/gh/.tools/repo/search 200" in _wire(run), run.describe()
    run = smithery("tool", "call", "calc", "add", '{"a":2,"b":3}', "--namespace", ns).ok()
    assert run.json()["structuredContent"] == {"sum": 5}
    run = smithery("tool", "call", "calc", "fail", "{}", "--namespace", ns)
    assert run.json()["isError"] is True, run.describe()
    run = smithery("tool", "call", "nope", "echo", "{}", "--namespace", ns)
    assert run.returncode == 1, run.describe()
    assert run.json()["error"].startswith("404 "), run.describe()

    # `mcp update` PUTs without mcpUrl; the URL stays.
    run = smithery("mcp", "update", "gh", "--metadata", '{"userId":"u9"}', "--namespace", ns).ok()
    assert run.json()["metadata"] == {"userId": "u9"}
    assert run.json()["mcpUrl"] == dotted_upstream.url

    run = smithery("mcp", "remove", "gh", "calc", "--namespace", ns).ok()
    assert sorted(run.json()["removed"]) == ["calc", "gh"]
    with gateway.client() as http:
        assert http.get(f"/{ns}").json()["connections"] == []
    assert not [r for r in run.requests if r["status"] >= 500]


def test_smithery_cli_adds_deduplicates_and_replaces_connections(node: Node, gateway: Any) -> None:
    # A host that never resolves (RFC 2606 `.invalid`): the CLI treats it as remote (a loopback URL
    # would become an uplink pair) and the gateway keeps the connection with an error status.
    ns = _namespace(gateway, "cli-add")
    env = {"SMITHERY_API_KEY": gateway.admin_key, "SMITHERY_BASE_URL": gateway.url.rstrip("/")}
    url, other = "http://upstream.invalid/mcp", "http://upstream.invalid/other"

    def smithery(*args: str) -> Run:
        return node.smithery(*args, "--namespace", ns, "--json", env=env).ok()

    run = smithery("mcp", "add", url, "--name", "Broken", "--metadata", '{"userId":"u5"}')
    added = run.json()
    cid = added["connectionId"]
    assert (added["name"], added["mcpUrl"], added["metadata"]) == ("Broken", url, {"userId": "u5"})
    assert added["status"]["state"] == "error" and added["status"]["message"], run.describe()
    assert _wire(run) == [f"GET /{ns}?mcpUrl={quote(url, safe='')} 200", f"POST /{ns} 201"]

    run = smithery("mcp", "add", url)  # the same URL again: found by the mcpUrl filter, not re-created
    assert run.json()["connectionId"] == cid
    assert [r["method"] for r in run.requests] == ["GET"], run.describe()

    # A new URL for an existing id: PUT answers 409 (not retried), the CLI deletes and PUTs again.
    run = smithery("mcp", "add", other, "--id", cid)
    assert (run.json()["connectionId"], run.json()["mcpUrl"]) == (cid, other)
    assert _wire(run) == [f"PUT /{ns}/{cid} 409", f"DELETE /{ns}/{cid} 200", f"PUT /{ns}/{cid} 201"]

    run = smithery("mcp", "list")
    assert [(s["id"], s["status"]) for s in run.json()["servers"]] == [(cid, "error")]
    assert smithery("mcp", "remove", cid).json()["removed"] == [cid]
