"""The namespace MCP endpoint and the per-connection passthrough, driven by the SDK's own client."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from proxy.gateway.names import SAFE_NAME_RE

ERAS = [("legacy", "2025-11-25"), ("auto", "2026-07-28")]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One gateway for this module: every test works in its own namespace."""
    from conftest import Gateway

    shared = Gateway(tmp_path_factory.mktemp("mcp-gateway")).start(attempts=3)
    yield shared
    shared.stop()


async def _session_call(url: str, key: str, mode: str, body: Any, client_name: str = "pytest") -> Any:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with Client(
            streamable_http_client(url, http_client=http),
            mode=mode,
            client_info=types.Implementation(name=client_name, version="1"),
        ) as client:
            return await body(client)


def run(url: str, key: str, mode: str, body: Any, client_name: str = "pytest") -> Any:
    return anyio.run(_session_call, url, key, mode, body, client_name)


def _setup(gateway, ns: str, **connections: str) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        client.put(f"/namespaces/{ns}")
        for cid, url in connections.items():
            response = client.put(f"/{ns}/{cid}", json={"mcpUrl": url})
            assert response.status_code in (200, 201), response.text


@pytest.mark.parametrize(("mode", "version"), ERAS)
def test_namespace_endpoint_prefixes_and_routes(
    gateway, modern_upstream, dotted_upstream, mode, version
) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "team", echo=modern_upstream.url, gh=dotted_upstream.url)

    async def body(client: Client) -> Any:
        tools = (await client.list_tools()).tools
        echoed = await client.call_tool("echo.echo", {"text": "hello"})
        searched = await client.call_tool("gh.repo.search", {"query": "q"})
        added = await client.call_tool("echo.add", {"a": 1, "b": 2})
        failed = await client.call_tool("echo.fail", {})
        return client.protocol_version, tools, echoed, searched, added, failed

    protocol, tools, echoed, searched, added, failed = run(
        gateway.mcp_url("team"), gateway.admin_key, mode, body
    )
    assert protocol == version
    names = {t.name for t in tools}
    assert {"echo__echo", "echo__add", "gh__repo_search", "gh__issues_create"} <= names  # safe by default
    assert all(n.startswith(("echo__", "gh__")) and SAFE_NAME_RE.match(n) for n in names)
    assert echoed.content[0].text == "hello" and not echoed.is_error
    assert searched.content[0].text == "search:q"
    assert added.structured_content == {"sum": 3}
    assert failed.is_error and failed.content[0].text == "boom"


@pytest.mark.parametrize(("mode", "version"), ERAS)
def test_strict_clients_get_safe_names_and_every_form_calls(gateway, dotted_upstream, mode, version) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "safe-ns", gh=dotted_upstream.url)

    async def body(client: Client) -> Any:
        tools = (await client.list_tools()).tools
        by_safe = await client.call_tool("gh__repo_search", {"query": "a"})
        other = [t.name for t in tools if t.name.startswith("gh__repo_search_")]
        collided = await client.call_tool(other[0], {"query": "b"}) if other else None
        dotted = await client.call_tool("gh.repo.search", {"query": "c"})
        return tools, by_safe, collided, dotted

    tools, by_safe, collided, dotted = run(
        gateway.mcp_url("safe-ns"), gateway.admin_key, mode, body, "claude-ai"
    )
    names = [t.name for t in tools]
    assert all(SAFE_NAME_RE.match(n) for n in names), names
    assert len(names) == len(set(names))
    texts = {by_safe.content[0].text, collided.content[0].text if collided else None}
    # repo.search and repo_search both map to gh__repo_search*: one keeps the plain name.
    assert any(t and t.startswith("search:") for t in texts)
    assert dotted.content[0].text == "search:c"


def test_tool_names_query_parameter_and_namespace_setting(gateway, dotted_upstream) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "styles", gh=dotted_upstream.url)

    async def names(client: Client) -> list[str]:
        return sorted(t.name for t in (await client.list_tools()).tools)

    safe = run(gateway.mcp_url("styles") + "?tool_names=safe", gateway.admin_key, "legacy", names)
    assert "gh__repo_search" in safe
    dotted = run(
        gateway.mcp_url("styles") + "?tool_names=dotted", gateway.admin_key, "legacy", names, "claude-ai"
    )
    assert "gh.repo.search" in dotted
    with gateway.client() as client:
        assert client.put("/namespaces/styles", json={"toolNames": "safe"}).json()["toolNames"] == "safe"
    assert "gh__repo_search" in run(gateway.mcp_url("styles"), gateway.admin_key, "legacy", names)


def test_unknown_tool_and_unknown_namespace(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "errs", echo=modern_upstream.url)

    async def body(client: Client) -> str:
        with pytest.raises(MCPError) as info:
            await client.call_tool("nobody.nothing", {})
        return info.value.error.message

    assert "not found" in run(gateway.mcp_url("errs"), gateway.admin_key, "legacy", body)
    with gateway.client() as client:
        response = client.post("/mcp/no-such-ns", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert response.status_code == 404 and response.json()["error"]["data"]["error"] == "not_found"


def test_a_slow_or_dead_upstream_costs_only_its_own_tools(gateway, start_upstream, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    slow = start_upstream("slow", list_delay=3.0)
    _setup(gateway, "mixed", fast=modern_upstream.url, dead="http://127.0.0.1:9/mcp")
    with gateway.client() as client:
        client.put("/mixed/slow", json={"mcpUrl": slow.url, "timeouts": {"list": 0.5}})

    async def body(client: Client) -> Any:
        started = time.monotonic()
        tools = (await client.list_tools()).tools
        return time.monotonic() - started, {t.name for t in tools}

    elapsed, names = run(gateway.mcp_url("mixed"), gateway.admin_key, "legacy", body)
    assert "fast__echo" in names
    assert not any(n.startswith(("slow__", "dead__")) for n in names)
    assert elapsed < 2.5


def test_upstream_pages_are_walked_into_one_page(gateway, paged_upstream) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "paged", p=paged_upstream.url)

    async def body(client: Client) -> Any:
        return await client.list_tools()

    result = run(gateway.mcp_url("paged"), gateway.admin_key, "legacy", body)
    assert len([t for t in result.tools if t.name.startswith("p__t")]) == 25
    assert result.next_cursor is None


@pytest.mark.parametrize("kind", ["legacy", "sse"])
def test_legacy_upstreams(gateway, request, kind) -> None:  # type: ignore[no-untyped-def]
    upstream = request.getfixturevalue(f"{kind}_upstream")
    _setup(gateway, f"era-{kind}", old=upstream.url)
    with gateway.client() as client:
        info = client.get(f"/era-{kind}/old").json()
        assert info["status"] == {"state": "connected"}, info
        assert info["serverInfo"]["name"] == f"test-{kind}"

    async def body(client: Client) -> Any:
        return await client.call_tool("old.echo", {"text": kind})

    for mode, _ in ERAS:
        assert run(gateway.mcp_url(f"era-{kind}"), gateway.admin_key, mode, body).content[0].text == kind


def test_a_restarted_legacy_upstream_is_reinitialized_transparently(gateway, start_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = start_upstream("legacy")
    _setup(gateway, "restart", old=upstream.url)
    with gateway.client() as client:
        assert (
            client.post("/restart/old/.tools/echo", json={"text": "one"}).json()["content"][0]["text"]
            == "one"
        )
        upstream.restart()  # forgets every session: the next call gets a 404 and must re-initialize
        again = client.post("/restart/old/.tools/echo", json={"text": "two"})
        assert again.status_code == 200, again.text
        assert again.json()["content"][0]["text"] == "two"


def test_an_upstream_that_dies_mid_call_is_an_error_not_a_hang(gateway, start_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = start_upstream("modern")
    _setup(gateway, "dying", d=upstream.url)
    with gateway.client() as client:
        assert client.post("/dying/d/.tools/echo", json={"text": "x"}).status_code == 200
        upstream.stop()
        down = client.post("/dying/d/.tools/echo", json={"text": "x"})
        assert down.status_code == 502 and down.json()["error"] == "upstream_unavailable"
        assert client.get("/dying/d").json()["status"]["state"] == "error"
        upstream.start()
        deadline = time.monotonic() + 15
        while True:  # reconnection backoff is bounded; poll the REST call until it succeeds
            back = client.post("/dying/d/.tools/echo", json={"text": "back"})
            if back.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert back.json()["content"][0]["text"] == "back"
        assert client.get("/dying/d").json()["status"] == {"state": "connected"}


def test_call_timeout_is_per_connection(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "timeouts")
    with gateway.client() as client:
        client.put("/timeouts/t", json={"mcpUrl": modern_upstream.url, "timeouts": {"call": 0.5}})
        slow = client.post("/timeouts/t/.tools/sleep", json={"seconds": 2})
        assert slow.status_code == 504 and slow.json()["error"] == "upstream_timeout"
        assert (
            client.post("/timeouts/t/.tools/echo", json={"text": "still fine"}).json()["content"][0]["text"]
            == "still fine"
        )


@pytest.mark.parametrize("path", ["/mcp/per-conn/m", "/connect/per-conn/m/mcp"])
def test_per_connection_endpoint_is_stateless(gateway, modern_upstream, path) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "per-conn", m=modern_upstream.url)
    headers = {"accept": "application/json, text/event-stream", "mcp-session-id": "smithery-stateless"}
    with gateway.client() as client:
        listed = client.post(path, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
        assert listed.status_code == 200
        assert "echo" in {t["name"] for t in listed.json()["result"]["tools"]}
        called = client.post(
            path,
            json={
                "jsonrpc": "2.0",
                "id": "a",
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "s"}},
            },
            headers=headers,
        ).json()
        assert called["id"] == "a" and called["result"]["content"][0]["text"] == "s"
        note = client.post(
            path, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        assert note.status_code == 202
        garbage = client.post(path, content=b"nope", headers=headers)
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
        unknown = client.post(path, json={"jsonrpc": "2.0", "id": 2, "method": "no/such"}, headers=headers)
        assert unknown.json()["error"]["code"] == -32601

    async def body(client: Client) -> Any:
        return (await client.call_tool("echo", {"text": "sdk"})).content[0].text

    for mode, _ in ERAS:
        assert run(gateway.url + path, gateway.admin_key, mode, body) == "sdk"


def test_fast_path_answers_like_the_sdk(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    """Raw legacy-session traffic: the fast path keeps ids, session ids and error shapes."""
    _setup(gateway, "raw", m=modern_upstream.url)
    base = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with gateway.client() as client:
        init = client.post(
            "/mcp/raw",
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            },
            headers=base,
        )
        session = init.headers["mcp-session-id"]
        headers = {**base, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        client.post(
            "/mcp/raw", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        call = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "m.echo", "arguments": {"text": "r"}},
        }
        answer = client.post("/mcp/raw", json=call, headers=headers)
        assert answer.status_code == 200
        payload = (
            json.loads(answer.text.split("data: ", 1)[-1])
            if answer.text.startswith("event")
            else answer.json()
        )
        assert payload["id"] == 7 and payload["result"]["content"][0]["text"] == "r"
        stale = client.post("/mcp/raw", json=call, headers={**headers, "mcp-session-id": "f" * 32})
        assert stale.status_code == 404
        with httpx2.Client(base_url=gateway.url) as anonymous:
            key = client.post("/keys", json={"name": "other"}).json()["key"]
            other = anonymous.post(
                "/mcp/raw", json=call, headers={**headers, "authorization": f"Bearer {key}"}
            )
            assert other.status_code == 404  # a session belongs to the credential that opened it


def test_fast_path_hands_on_exact_values_and_large_results(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    """Raw 2026-07-28 requests: integers beyond 64 bits, floats, non-ASCII text and a result of
    several megabytes come back exactly as the upstream sent them, over MCP and over REST."""
    _setup(gateway, "exact", m=modern_upstream.url)
    big = 2**70

    def call(client: httpx2.Client, name: str, arguments: dict[str, Any]) -> Any:
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": name,
        }
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        request = {
            "jsonrpc": "2.0",
            "id": "x1",
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": meta},
        }
        answer = client.post("/mcp/exact", content=json.dumps(request), headers=headers)
        assert answer.status_code == 200, answer.text
        payload = json.loads(answer.content)  # the standard library keeps big integers exact
        assert payload["id"] == "x1", payload
        return payload["result"]

    with gateway.client() as client:
        assert call(client, "m.add", {"a": big, "b": 1})["structuredContent"] == {"sum": big + 1}
        assert call(client, "m.add", {"a": 0.1, "b": 0.2})["structuredContent"] == {"sum": 0.1 + 0.2}
        text = "héllo wörld \U0001f600 \u2028"
        assert call(client, "m.echo", {"text": text})["content"][0]["text"] == text
        blob = call(client, "m.blob", {"size": 3_000_000})["content"][0]["text"]
        assert len(blob) == 3_000_000 and set(blob) == {"x"}
        # The connection is still usable after a large result, and REST hands on the same values.
        assert call(client, "m.echo", {"text": "after"})["content"][0]["text"] == "after"
        rest = client.post("/exact/m/.tools/add", content=json.dumps({"a": big, "b": 2}))
        assert rest.status_code == 200, rest.text
        assert json.loads(rest.content)["structuredContent"] == {"sum": big + 2}


def test_a_slow_listing_finishes_in_the_background(start_gateway, start_upstream, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(JUNCTION_FANOUT_TIMEOUT="0.5")
    slow = start_upstream("slow", list_delay=1.5)
    _setup(gateway, "late", fast=modern_upstream.url, slow=slow.url)

    async def names(client: Client) -> tuple[float, set[str]]:
        started = time.monotonic()
        tools = (await client.list_tools()).tools
        return time.monotonic() - started, {t.name for t in tools}

    elapsed, first = run(gateway.mcp_url("late"), gateway.admin_key, "legacy", names)
    assert "fast__echo" in first and "slow__echo" not in first and elapsed < 1.4
    deadline = time.monotonic() + 15
    later: set[str] = set()
    while "slow__echo" not in later and time.monotonic() < deadline:
        later = run(gateway.mcp_url("late"), gateway.admin_key, "legacy", names)[1]
    assert {"fast__echo", "slow__echo"} <= later


def test_other_methods_pass_through_without_harming_the_session(gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    _setup(gateway, "other-methods", m=modern_upstream.url)
    headers = {"accept": "application/json, text/event-stream"}
    with gateway.client() as client:
        listed = client.post(
            "/mcp/other-methods/m",
            json={"jsonrpc": "2.0", "id": 1, "method": "resources/list", "params": {}},
            headers=headers,
        ).json()
        # The test upstream serves no resources: its own JSON-RPC error comes back unchanged.
        assert "error" in listed or "resources" in listed.get("result", {})
        bad = client.post(
            "/mcp/other-methods/m",
            json={"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": {"x": 1}},
            headers=headers,
        ).json()
        assert bad["error"]["code"] == -32602
        assert client.get("/other-methods/m").json()["status"] == {"state": "connected"}
        # OPTIONS is no way around authentication: the route does not take it at all.
        refused = client.options("/mcp/other-methods", headers={"authorization": ""})
        assert refused.status_code == 405 and refused.json()["error"]["code"] == -32600
