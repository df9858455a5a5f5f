"""Tool budgets: a namespace's tools/list fits what the client accepts; two meta-tools reach the rest.

Real SDK upstreams behind a real gateway. The `paged` upstream (25 tools) is added under several
connection ids to make namespaces of many tools. Both eras, and both paths of the gateway: the
fast path (the SDK client's ordinary requests) and the SDK's typed loop (the same requests with
the method written `tools\\/list`, valid JSON the fast path does not pick up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from conftest import REPO_ROOT, Gateway, Upstream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from proxy.gateway.budget import meta_names
from proxy.gateway.names import SAFE_NAME_RE, NameMap

BASE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
MODERN = "2026-07-28"
ERAS = [("legacy", "2025-11-25"), ("auto", MODERN)]
CURSOR_NAME_LIMIT = 48  # tool_budgets' Cursor rule: 60 characters, 12 kept for the server's name


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One gateway for this module: every test works in its own namespace."""
    shared = Gateway(tmp_path_factory.mktemp("budget-gateway")).start(attempts=3)
    yield shared
    shared.stop()


def _setup(gateway: Gateway, ns: str, settings: dict[str, Any] | None = None, **connections: Any) -> None:
    with gateway.client() as client:
        assert client.put(f"/namespaces/{ns}", json=settings or {}).status_code in (200, 201)
        for cid, value in connections.items():
            body = value if isinstance(value, dict) else {"mcpUrl": value}
            response = client.put(f"/{ns}/{cid}", json=body)
            assert response.status_code in (200, 201), response.text


async def _sdk(url: str, key: str, mode: str, body: Any, client_name: str = "pytest") -> Any:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with Client(
            streamable_http_client(url, http_client=http),
            mode=mode,
            client_info=types.Implementation(name=client_name, version="1"),
        ) as client:
            return await body(client)


def run(url: str, key: str, mode: str, body: Any, client_name: str = "pytest") -> Any:
    return anyio.run(_sdk, url, key, mode, body, client_name)


def _payload(response: httpx2.Response) -> dict[str, Any]:
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        return json.loads(data[-1])  # type: ignore[no-any-return]
    return json.loads(text)  # type: ignore[no-any-return]


class Raw:
    """Raw JSON-RPC to `/mcp/{ns}` as a named client, in one era; `sdk=True` writes the method as
    `tools\\/...`, which the fast path leaves to the SDK's typed loop."""

    def __init__(self, gateway: Gateway, ns: str, era: str, client_name: str, key: str | None = None):
        self.http = httpx2.Client(
            base_url=gateway.url,
            headers={"Authorization": f"Bearer {key or gateway.admin_key}"},
            timeout=30,
        )
        self.path, self.era, self.client_name = f"/mcp/{ns}", era, client_name
        self.headers = dict(BASE)
        self.ids = 0
        if era == "legacy":
            init = self.http.post(
                self.path,
                json={
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": client_name, "version": "1"},
                    },
                },
                headers=BASE,
            )
            assert init.status_code == 200, init.text
            self.headers |= {
                "mcp-session-id": init.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            self.http.post(self.path, json=note, headers=self.headers)

    def request(self, method: str, params: dict[str, Any], *, sdk: bool = False) -> dict[str, Any]:
        """The JSON-RPC response (`result` or `error`)."""
        self.ids += 1
        headers = dict(self.headers)
        params = dict(params)
        if self.era == "modern":
            headers |= {"mcp-protocol-version": MODERN, "mcp-method": method}
            if method == "tools/call":
                headers["mcp-name"] = params["name"]
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": self.client_name, "version": "1"},
            }
        body = json.dumps({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        if sdk:
            body = body.replace('"tools/', '"tools\\/')
        response = self.http.post(self.path, content=body, headers=headers)
        return _payload(response)

    def names(self, *, sdk: bool = False) -> list[str]:
        answer = self.request("tools/list", {}, sdk=sdk)
        assert "result" in answer, answer
        return [t["name"] for t in answer["result"]["tools"]]

    def call(self, name: str, arguments: dict[str, Any], *, sdk: bool = False) -> dict[str, Any]:
        return self.request("tools/call", {"name": name, "arguments": arguments}, sdk=sdk)

    def close(self) -> None:
        self.http.close()


def _text(answer: dict[str, Any]) -> str:
    assert "result" in answer, answer
    return str(answer["result"]["content"][0]["text"])


# --- a namespace's budget --------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "version"), ERAS)
def test_a_budget_lists_curated_tools_and_meta_tools_that_reach_the_rest(
    gateway: Gateway, modern_upstream: Upstream, paged_upstream: Upstream, mode: str, version: str
) -> None:
    ns = f"budget-{mode}"
    _setup(
        gateway,
        ns,
        {"toolBudget": 10, "curatedTools": ["p2.t05", "m__add"]},
        m=modern_upstream.url,
        p1=paged_upstream.url,
        p2=paged_upstream.url,
    )

    async def body(client: Client) -> Any:
        tools = (await client.list_tools()).tools
        found = await client.call_tool("search_tools", {"query": "t24"})
        hidden = await client.call_tool("call_tool", {"name": "p1__t24"})
        echoed = await client.call_tool("call_tool", {"name": "m.echo", "arguments": {"text": "hi"}})
        direct = await client.call_tool("p1__t23", {})
        added = await client.call_tool("search_tools", {"query": "add numbers", "limit": 1})
        with pytest.raises(MCPError) as missing:
            await client.call_tool("call_tool", {"name": "p9__nothing"})
        return client.protocol_version, tools, found, hidden, echoed, direct, added, missing.value

    protocol, tools, found, hidden, echoed, direct, added, missing = run(
        gateway.mcp_url(ns), gateway.admin_key, mode, body
    )
    assert protocol == version
    names = [t.name for t in tools]
    assert len(names) == 10, names  # 6 + 25 + 25 tools, a budget of 10
    assert names[:4] == ["p2__t05", "m__add", "search_tools", "call_tool"], names
    assert "p1__t24" not in names and "p2__t24" not in names
    # Round-robin over the connections in id order, each in its server's order.
    assert set(names[4:]) == {"m__echo", "p1__t00", "p2__t00", "m__fail", "p1__t01", "p2__t01"}
    matches = found.structured_content["tools"]
    assert {t["name"] for t in matches} == {"p1__t24", "p2__t24"}
    assert all(t["inputSchema"]["type"] == "object" and "description" in t for t in matches)
    assert json.loads(found.content[0].text) == found.structured_content
    assert hidden.content[0].text == "t24" and not hidden.is_error
    assert echoed.content[0].text == "hi"
    assert direct.content[0].text == "t23"  # a tool left out of the list can still be called
    assert [t["name"] for t in added.structured_content["tools"]] == ["m__add"]
    assert missing.error.code == -32602 and "p9__nothing" in missing.error.message


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_the_fast_path_and_the_sdk_path_list_and_call_alike(
    gateway: Gateway, modern_upstream: Upstream, paged_upstream: Upstream, era: str
) -> None:
    ns = f"paths-{era}"
    _setup(
        gateway,
        ns,
        {"toolBudget": 8, "curatedTools": ["p1__t10"]},
        m=modern_upstream.url,
        p1=paged_upstream.url,
    )
    raw = Raw(gateway, ns, era, "pytest")
    try:
        fast, typed = raw.names(), raw.names(sdk=True)
        assert fast == typed and len(fast) == 8 and fast[:3] == ["p1__t10", "search_tools", "call_tool"]
        for sdk in (False, True):
            assert _text(raw.call("call_tool", {"name": "p1__t20"}, sdk=sdk)) == "t20"
            answer = raw.call("search_tools", {"query": "paged tool 21"}, sdk=sdk)
            assert answer["result"]["structuredContent"]["tools"][0]["name"] == "p1__t21", answer
            wrong = raw.call("call_tool", {"arguments": {}}, sdk=sdk)
            assert wrong["error"]["code"] == -32602 and "name" in wrong["error"]["message"]
            bad = raw.call("search_tools", {"query": "x", "limit": 500}, sdk=sdk)
            assert bad["error"]["code"] == -32602 and "limit" in bad["error"]["message"]
    finally:
        raw.close()


def test_no_budget_lists_every_tool_without_meta_tools(
    gateway: Gateway, modern_upstream: Upstream, paged_upstream: Upstream
) -> None:
    _setup(gateway, "unlimited", m=modern_upstream.url, p1=paged_upstream.url, p2=paged_upstream.url)
    raw = Raw(gateway, "unlimited", "modern", "some-agent")
    try:
        names = raw.names()
        assert len(names) == 56 and "search_tools" not in names and names == sorted(names)
        # The meta-tools answer anyway: nothing to hide, but an agent may still search.
        found = raw.call("search_tools", {"query": "echo"})["result"]["structuredContent"]
        assert found["tools"][0]["name"] == "m__echo"
    finally:
        raw.close()


# --- clients' own limits ---------------------------------------------------------------------


@pytest.mark.parametrize(("era", "client_name"), [("legacy", "cursor-vscode"), ("modern", "Cursor")])
@pytest.mark.parametrize("sdk", [False, True])
def test_cursor_gets_40_tools_with_short_names_that_call_back(
    gateway: Gateway,
    modern_upstream: Upstream,
    paged_upstream: Upstream,
    dotted_upstream: Upstream,
    era: str,
    client_name: str,
    sdk: bool,
) -> None:
    ns = "cursor"
    _setup(
        gateway,
        ns,
        None,
        m=modern_upstream.url,
        p1=paged_upstream.url,
        p2=paged_upstream.url,
        **{"github-enterprise": dotted_upstream.url},
    )
    cursor = Raw(gateway, ns, era, client_name)
    other = Raw(gateway, ns, era, "pytest")
    try:
        names = cursor.names(sdk=sdk)
        assert len(names) == 40 and {"search_tools", "call_tool"} <= set(names)
        assert all(len(n) <= CURSOR_NAME_LIMIT and SAFE_NAME_RE.match(n) for n in names), names
        everything = other.names(sdk=sdk)
        assert len(everything) == 62  # 6 + 25 + 25 + 6: no limit for a client without a rule
        long_name = next(n for n in everything if n.startswith("github-enterprise__abcdefghi"))
        assert len(long_name) == 64  # the usual safe name; Cursor gets a shorter one
        found = cursor.call("search_tools", {"query": "100-character"}, sdk=sdk)
        short = found["result"]["structuredContent"]["tools"][0]["name"]
        assert len(short) == CURSOR_NAME_LIMIT and short.startswith("github-enterprise__abcdefghi")
        assert short != long_name[:CURSOR_NAME_LIMIT]
        assert _text(cursor.call("call_tool", {"name": short}, sdk=sdk)) == "long"
        assert _text(cursor.call(short, {}, sdk=sdk)) == "long"  # and directly
        assert _text(other.call(short, {}, sdk=sdk)) == "long"  # whoever calls it
    finally:
        cursor.close()
        other.close()


def test_a_namespace_budget_overrides_the_client_default(
    gateway: Gateway, modern_upstream: Upstream, paged_upstream: Upstream
) -> None:
    _setup(gateway, "override", {"toolBudget": 0}, m=modern_upstream.url, p1=paged_upstream.url)
    _setup(gateway, "override", None, p2=paged_upstream.url)
    cursor = Raw(gateway, "override", "legacy", "Cursor")
    try:
        assert len(cursor.names()) == 56  # 0: never limited, not even for Cursor
        with gateway.client() as client:
            changed = client.put("/namespaces/override", json={"toolBudget": None}).json()
        assert changed["toolBudget"] is None
        assert len(cursor.names()) == 40  # back to the client's default
        with gateway.client() as client:
            assert client.put("/namespaces/override", json={"toolBudget": 5}).status_code == 200
        assert len(cursor.names()) == 5
    finally:
        cursor.close()


def test_shortened_names_resolve_after_a_restart(
    start_gateway: Any, dotted_upstream: Upstream, modern_upstream: Upstream
) -> None:
    gateway = start_gateway()
    _setup(gateway, "restart", None, m=modern_upstream.url, **{"github-enterprise": dotted_upstream.url})
    raw = Raw(gateway, "restart", "modern", "cursor-vscode")
    try:
        short = [n for n in raw.names() if len(n) == CURSOR_NAME_LIMIT]
        assert len(short) == 1, short
    finally:
        raw.close()
    gateway.restart()
    # Nothing listed yet on the new process; a client that is not Cursor calls the short name.
    raw = Raw(gateway, "restart", "modern", "pytest")
    try:
        assert _text(raw.call(short[0], {})) == "long"
    finally:
        raw.close()


# --- who sees what ---------------------------------------------------------------------------


def test_search_never_reveals_tools_a_scoped_token_may_not_see(
    gateway: Gateway, modern_upstream: Upstream, paged_upstream: Upstream
) -> None:
    _setup(
        gateway,
        "scoped",
        {"toolBudget": 4},
        mine={"mcpUrl": paged_upstream.url, "metadata": {"team": "a"}},
        theirs={"mcpUrl": modern_upstream.url, "metadata": {"team": "b"}},
    )
    with gateway.client() as client:
        minted = client.post(
            "/tokens", json={"policy": [{"namespaces": "scoped", "metadata": {"team": "a"}}]}
        )
        assert minted.status_code == 200, minted.text
        token = minted.json()["token"]
    for era in ("legacy", "modern"):
        raw = Raw(gateway, "scoped", era, "pytest", key=token)
        try:
            names = raw.names()
            assert len(names) == 4 and all(n.startswith("mine__") or "_tool" in n for n in names), names
            for sdk in (False, True):
                everything = raw.call("search_tools", {"query": "", "limit": 50}, sdk=sdk)
                found = everything["result"]["structuredContent"]
                assert found["total"] == 25 and all(t["name"].startswith("mine__") for t in found["tools"])
                echo = raw.call("search_tools", {"query": "echo add"}, sdk=sdk)["result"]["structuredContent"]
                assert echo["tools"] == [] and echo["total"] == 0
                refused = raw.call("call_tool", {"name": "theirs__echo", "arguments": {"text": "x"}}, sdk=sdk)
                assert refused["error"]["code"] == -32602, refused  # as if it did not exist
                assert _text(raw.call("call_tool", {"name": "mine__t03"}, sdk=sdk)) == "t03"
        finally:
            raw.close()


def test_a_token_limited_to_some_tools_cannot_call_others_through_call_tool(
    gateway: Gateway, paged_upstream: Upstream
) -> None:
    _setup(gateway, "narrow", {"toolBudget": 3}, p=paged_upstream.url)
    pattern = "^(search_tools|call_tool|p__t0[0-4])$"
    with gateway.client() as client:
        policy = [
            {"namespaces": "narrow", "rpcReqMatch": {"params.name": pattern}},
            {"namespaces": "narrow", "rpcReqMatch": {"method": "^(tools/list|initialize|notifications/.*)$"}},
        ]
        minted = client.post("/tokens", json={"policy": policy})
        assert minted.status_code == 200, minted.text
        token = minted.json()["token"]
    raw = Raw(gateway, "narrow", "modern", "pytest", key=token)
    try:
        assert _text(raw.call("call_tool", {"name": "p__t02"})) == "t02"
        refused = raw.call("call_tool", {"name": "p__t09"})
        assert "error" in refused and "not allow" in refused["error"]["message"], refused
    finally:
        raw.close()


# --- settings --------------------------------------------------------------------------------


def test_namespace_budget_settings_are_validated_and_kept(gateway: Gateway) -> None:
    with gateway.client() as client:
        made = client.put("/namespaces/settings-ns", json={"toolBudget": 12, "curatedTools": ["a.b", "c__d"]})
        assert made.status_code == 201, made.text
        assert made.json()["toolBudget"] == 12 and made.json()["curatedTools"] == ["a.b", "c__d"]
        kept = client.put("/namespaces/settings-ns", json={"toolNames": "dotted"}).json()
        assert (kept["toolBudget"], kept["curatedTools"], kept["toolNames"]) == (
            12,
            ["a.b", "c__d"],
            "dotted",
        )
        for body, word in (
            ({"toolBudget": "ten"}, "toolBudget"),
            ({"toolBudget": 2}, "toolBudget"),
            ({"toolBudget": True}, "toolBudget"),
            ({"curatedTools": "a,b"}, "curatedTools"),
            ({"curatedTools": ["a", "a"]}, "twice"),
            ({"curatedTools": [""]}, "curatedTools"),
            ({"curatedTools": ["x"] * 201}, "curatedTools"),
        ):
            refused = client.put("/namespaces/settings-ns", json=body)
            assert refused.status_code == 400, (body, refused.text)
            assert refused.json()["error"] == "validation_error" and word in refused.json()["message"]
        cleared = client.put(
            "/namespaces/settings-ns", json={"toolBudget": None, "curatedTools": None}
        ).json()
        assert cleared["toolBudget"] is None and cleared["curatedTools"] == []
        assert client.get("/namespaces/settings-ns").json()["curatedTools"] == []


def test_the_cli_sets_a_budget_and_curated_tools(gateway: Gateway, tmp_path: Any) -> None:
    with gateway.client() as client:
        client.put("/namespaces/cli-ns")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JUNCTION_", "XDG_CONFIG_HOME"))},
        "JUNCTION_CONFIG_DIR": str(tmp_path / "cfg"),
        "JUNCTION_URL": gateway.url,
        "JUNCTION_API_KEY": gateway.admin_key,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = cli("namespace", "set", "cli-ns", "--tool-budget", "7", "--curated", "m.echo, p__t01")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Namespace cli-ns: tool budget 7, curated tools m.echo, p__t01\n"
    with gateway.client() as client:
        shown = client.get("/namespaces/cli-ns").json()
    assert shown["toolBudget"] == 7 and shown["curatedTools"] == ["m.echo", "p__t01"]
    back = cli("namespace", "set", "cli-ns", "--tool-budget", "default", "--curated", "", "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["toolBudget"] is None and json.loads(back.stdout)["curatedTools"] == []
    bad = cli("namespace", "set", "cli-ns", "--tool-budget", "2")
    assert bad.returncode == 1 and "toolBudget" in bad.stderr and "Traceback" not in bad.stderr


# --- names, without a gateway ----------------------------------------------------------------


def test_shortened_names_are_stable_unique_and_resolve_in_any_order() -> None:
    long = "abcdefghi." * 9 + "abcdefghij"
    refs = [("gh", long), ("gh", long + "x"), ("gh", "repo.search"), ("gh", "repo_search")]
    first, second = NameMap(refs), NameMap(list(reversed(refs)))
    for limit in (24, 48, 60):
        names = [first.exposed(ref, "safe", limit) for ref in refs]
        assert len(set(names)) == len(names) and all(len(n) <= limit for n in names)
        assert [second.resolve(n) for n in names] == refs  # a fresh map, nothing listed yet
    assert meta_names(first.resolve) == ("search_tools", "call_tool")
    taken = NameMap([("junction", "search_tools"), ("x", "call_tool")])
    assert meta_names(taken.resolve) == ("junction_meta__search_tools", "junction_meta__call_tool")
