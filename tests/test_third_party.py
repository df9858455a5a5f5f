"""Real third-party MCP servers behind the gateway, the way users run them.

Two servers nobody on this project wrote: ``@modelcontextprotocol/server-everything`` (the MCP
project's reference server on the TypeScript SDK, over Streamable HTTP and over HTTP+SSE) and a
server built with the `fastmcp` framework (`tests/upstreams/fastmcp_server.py`, both transports).
Each is reached through every surface: REST, the namespace endpoint ``/mcp/{ns}`` with the SDK's
client in both protocol eras, and the per-connection passthrough ``/mcp/{ns}/{id}``; then restarted
under the gateway, which must notice and carry on without the user seeing an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from conftest import Gateway, Upstream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from proxy.gateway.names import SAFE_NAME_RE

ERAS = [("legacy", "2025-11-25"), ("auto", "2026-07-28")]
CALL_LIMIT = 15.0  # seconds for any one exchange with the gateway: a hang fails, it doesn't stall the run
STATUS_DEADLINE = 3.0  # an upstream that is back is seen as connected within this, without traffic
ACCEPT = {"accept": "application/json, text/event-stream"}


@dataclass(frozen=True)
class Flavor:
    """One third-party server over one transport, and what its tools answer."""

    fixture: str  # the session's shared instance
    factory: str  # the fixture that starts a private one (for tests that stop it)
    transport: str
    server_name: str
    tools: frozenset[str]
    echo: tuple[str, dict[str, Any], str]  # tool, arguments, text of the answer
    add: tuple[str, dict[str, Any], str]
    progress: tuple[str, dict[str, Any], str, int]  # ... and how many progress steps it reports


_EVERYTHING = Flavor(
    fixture="everything_upstream",
    factory="start_everything",
    transport="streamableHttp",
    server_name="mcp-servers/everything",
    tools=frozenset({"echo", "get-sum", "get-env", "trigger-long-running-operation"}),
    echo=("echo", {"message": "hi"}, "Echo: hi"),
    add=("get-sum", {"a": 2, "b": 3}, "The sum of 2 and 3 is 5."),
    progress=(
        "trigger-long-running-operation",
        {"duration": 0.3, "steps": 3},
        "Long running operation completed. Duration: 0.3 seconds, Steps: 3.",
        3,
    ),
)
_FASTMCP = Flavor(
    fixture="fastmcp_upstream",
    factory="start_fastmcp",
    transport="http",
    server_name="fastmcp-upstream",
    tools=frozenset({"add", "echo", "count", "sleep", "math.multiply", "files/read"}),
    echo=("echo", {"text": "hi"}, "hi"),
    add=("add", {"a": 2, "b": 3.5}, "5.5"),
    progress=("count", {"steps": 3}, "counted 3", 3),
)
FLAVORS = {
    "everything-streamableHttp": _EVERYTHING,
    "everything-sse": replace(_EVERYTHING, fixture="everything_sse_upstream", transport="sse"),
    "fastmcp-http": _FASTMCP,
    "fastmcp-sse": replace(_FASTMCP, fixture="fastmcp_sse_upstream", transport="sse"),
}
flavors = pytest.mark.parametrize("flavor", [pytest.param(f, id=name) for name, f in FLAVORS.items()])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One gateway for this module: every test works in its own namespace."""
    shared = Gateway(tmp_path_factory.mktemp("third-party-gateway")).start(attempts=3)
    yield shared
    shared.stop()


_namespaces = iter(range(1, 1_000_000))


def add_connection(gateway: Gateway, cid: str, url: str, **settings: Any) -> str:
    """A new namespace holding one connection ``cid`` to ``url``; returns the namespace."""
    ns = f"tp{next(_namespaces)}"
    with gateway.client() as client:
        assert client.put(f"/namespaces/{ns}").status_code in (200, 201)
        response = client.put(f"/{ns}/{cid}", json={"mcpUrl": url, **settings})
        assert response.status_code in (200, 201), response.text
    return ns


def shared(request: pytest.FixtureRequest, flavor: Flavor) -> Upstream:
    upstream: Upstream = request.getfixturevalue(flavor.fixture)
    return upstream


def private(request: pytest.FixtureRequest, flavor: Flavor) -> Upstream:
    upstream: Upstream = request.getfixturevalue(flavor.factory)(flavor.transport)
    return upstream


def text_of(result: dict[str, Any] | types.CallToolResult) -> str:
    """The one text block of a tool result (REST JSON or SDK model)."""
    content = result["content"] if isinstance(result, dict) else result.content
    assert len(content) == 1, result
    block = content[0]
    return str(block["text"] if isinstance(block, dict) else block.text)  # type: ignore[union-attr]


def rest_call(client: httpx2.Client, ns: str, cid: str, tool: str, arguments: dict[str, Any]) -> str:
    """``POST /{ns}/{cid}/.tools/{tool}``; fails unless it answers 200 with a successful result."""
    response = client.post(f"/{ns}/{cid}/.tools/{tool}", json=arguments)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    body = response.json()
    assert not body.get("isError"), body
    return text_of(body)


def status_of(client: httpx2.Client, ns: str, cid: str) -> dict[str, Any]:
    response = client.get(f"/{ns}/{cid}")
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()["status"]
    return status


def wait_for_state(client: httpx2.Client, ns: str, cid: str, state: str, within: float) -> dict[str, Any]:
    """Poll ``GET /{ns}/{cid}`` (no tool traffic) until its state is ``state`` or ``within`` s pass."""
    deadline = time.monotonic() + within
    while True:
        status = status_of(client, ns, cid)
        if status.get("state") == state or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def mcp_session(
    gateway: Gateway,
    ns: str,
    mode: str,
    body: Callable[[Client], Awaitable[Any]],
    query: str = "",
) -> Any:
    """Run ``body`` with an SDK client connected to ``/mcp/{ns}{query}`` in ``mode`` (``legacy`` or ``auto``)."""

    async def main() -> Any:
        headers = {"Authorization": f"Bearer {gateway.admin_key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=CALL_LIMIT) as http:
            with anyio.fail_after(4 * CALL_LIMIT):
                async with Client(
                    streamable_http_client(gateway.mcp_url(ns) + query, http_client=http),
                    mode=mode,
                    read_timeout_seconds=CALL_LIMIT,
                ) as client:
                    return await body(client)

    return anyio.run(main)


def rpc(client: httpx2.Client, path: str, request: dict[str, Any]) -> dict[str, Any]:
    """One JSON-RPC request to a passthrough endpoint; the answer whether it comes as JSON or SSE."""
    response = client.post(path, json=request, headers=ACCEPT)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        answer: dict[str, Any] = response.json()
        return answer
    for event in response.text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:"))
        if data.strip():
            message = json.loads(data)
            if message.get("id") == request["id"]:
                return message  # type: ignore[no-any-return]
    raise AssertionError(f"no answer to request {request['id']!r} in the event stream:\n{response.text}")


# --- every surface --------------------------------------------------------------------------------


@flavors
def test_the_connection_is_connected_and_lists_the_servers_tools(
    gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor
) -> None:
    ns = add_connection(gateway, "c", shared(request, flavor).url)
    with gateway.client(timeout=CALL_LIMIT) as client:
        listed = client.get(f"/{ns}/c/.tools")
        assert listed.status_code == 200, listed.text
        names = {t["name"] for t in listed.json()["tools"]}
        assert flavor.tools <= names, names
        assert all(t["inputSchema"]["type"] == "object" for t in listed.json()["tools"])
        info = client.get(f"/{ns}/c").json()
        assert info["status"] == {"state": "connected"}, info
        assert info["serverInfo"]["name"] == flavor.server_name, info


@flavors
def test_rest_tool_calls_return_the_servers_answer(
    gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor
) -> None:
    ns = add_connection(gateway, "c", shared(request, flavor).url)
    with gateway.client(timeout=CALL_LIMIT) as client:
        for tool, arguments, expected in (flavor.echo, flavor.add):
            assert rest_call(client, ns, "c", tool, arguments) == expected
        assert status_of(client, ns, "c") == {"state": "connected"}


def safe(cid: str, tool: str) -> str:
    """The LLM-safe exposed name of a tool whose name has no collision and fits in 64 characters."""
    return f"{cid}__{tool.replace('.', '_').replace('/', '_')}"


@flavors
@pytest.mark.parametrize(("mode", "version"), ERAS)
def test_the_namespace_endpoint_lists_and_calls_prefixed_tools(
    gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor, mode: str, version: str
) -> None:
    ns = add_connection(gateway, "c", shared(request, flavor).url)
    (echo, echo_args, echo_text), (add, add_args, add_text) = flavor.echo, flavor.add

    async def body(client: Client) -> Any:
        tools = (await client.list_tools()).tools
        echoed = await client.call_tool(safe("c", echo), echo_args)
        added = await client.call_tool(safe("c", add), add_args)
        dotted = await client.call_tool(f"c.{echo}", echo_args)  # every exposed form calls
        return client.protocol_version, tools, echoed, added, dotted

    protocol, tools, echoed, added, dotted = mcp_session(gateway, ns, mode, body)
    assert protocol == version
    names = {t.name for t in tools}
    assert {safe("c", name) for name in flavor.tools} <= names, names
    assert all(SAFE_NAME_RE.match(name) for name in names), names
    for result, expected in ((echoed, echo_text), (added, add_text), (dotted, echo_text)):
        assert not result.is_error and text_of(result) == expected, result


@flavors
def test_dotted_names_on_request(gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor) -> None:
    ns = add_connection(gateway, "c", shared(request, flavor).url)
    tool, arguments, expected = flavor.echo

    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools, await client.call_tool(f"c.{tool}", arguments)

    tools, result = mcp_session(gateway, ns, "legacy", body, query="?tool_names=dotted")
    assert {f"c.{name}" for name in flavor.tools} <= {t.name for t in tools}
    assert not result.is_error and text_of(result) == expected, result


@flavors
def test_the_per_connection_passthrough_lists_and_calls(
    gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor
) -> None:
    ns = add_connection(gateway, "c", shared(request, flavor).url)
    tool, arguments, expected = flavor.echo
    path = f"/mcp/{ns}/c"
    with gateway.client(timeout=CALL_LIMIT) as client:
        listed = rpc(client, path, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
        assert "error" not in listed, listed
        assert flavor.tools <= {t["name"] for t in listed["result"]["tools"]}
        called = rpc(
            client,
            path,
            {
                "jsonrpc": "2.0",
                "id": "two",
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            },
        )
        assert called.get("id") == "two" and "error" not in called, called
        assert text_of(called["result"]) == expected


@flavors
@pytest.mark.parametrize(("mode", "version"), ERAS)
def test_progress_notifications_reach_the_caller(
    gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor, mode: str, version: str
) -> None:
    ns = add_connection(gateway, "c", shared(request, flavor).url)
    tool, arguments, expected, steps = flavor.progress
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async def body(client: Client) -> Any:
        return await client.call_tool(safe("c", tool), arguments, progress_callback=on_progress)

    result = mcp_session(gateway, ns, mode, body)
    assert text_of(result) == expected
    assert seen == [(float(step), float(steps)) for step in range(1, steps + 1)]


# --- FastMCP specifics ------------------------------------------------------------------------------


def test_dotted_and_slashed_tool_names_call_on_every_surface(
    gateway: Gateway, fastmcp_upstream: Upstream
) -> None:
    ns = add_connection(gateway, "f", fastmcp_upstream.url)
    with gateway.client(timeout=CALL_LIMIT) as client:
        assert rest_call(client, ns, "f", "math.multiply", {"a": 3, "b": 4}) == "12.0"
        assert rest_call(client, ns, "f", "files/read", {"path": "a.txt"}) == "contents of a.txt"

    async def body(client: Client) -> list[str]:
        answers = [
            await client.call_tool("f.math.multiply", {"a": 2, "b": 5}),
            await client.call_tool("f__math_multiply", {"a": 2, "b": 6}),
            await client.call_tool("f.files/read", {"path": "b.txt"}),
            await client.call_tool("f__files_read", {"path": "c.txt"}),
        ]
        return [text_of(a) for a in answers]

    for mode, _ in ERAS:
        assert mcp_session(gateway, ns, mode, body) == [
            "10.0",
            "12.0",
            "contents of b.txt",
            "contents of c.txt",
        ]


@pytest.mark.parametrize(("mode", "seconds"), [("legacy", 30), ("auto", 31)])
def test_a_cancelled_call_is_cancelled_upstream(
    gateway: Gateway, fastmcp_upstream: Upstream, mode: str, seconds: int
) -> None:
    ns = add_connection(gateway, "f", fastmcp_upstream.url)
    cancelled = f"sleep({seconds}) cancelled"  # what the server logs; a distinct length per era

    async def body(client: Client) -> float:
        with anyio.move_on_after(0.5):
            await client.call_tool("f__sleep", {"seconds": seconds})
            raise AssertionError(f"the {seconds} s sleep answered within 0.5 s")
        started = time.monotonic()
        assert text_of(await client.call_tool("f__echo", {"text": "after"})) == "after"
        return time.monotonic() - started

    assert mcp_session(gateway, ns, mode, body) < 2.0
    deadline = time.monotonic() + 5
    while cancelled not in fastmcp_upstream.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled in fastmcp_upstream.logs(), "the upstream's sleep was never cancelled"


def test_a_slow_call_times_out_with_the_connections_limit(
    gateway: Gateway, fastmcp_upstream: Upstream
) -> None:
    ns = add_connection(gateway, "f", fastmcp_upstream.url, timeouts={"call": 0.5})
    with gateway.client(timeout=CALL_LIMIT) as client:
        started = time.monotonic()
        slow = client.post(f"/{ns}/f/.tools/sleep", json={"seconds": 5})
        assert slow.status_code == 504 and slow.json()["error"] == "upstream_timeout", slow.text
        assert time.monotonic() - started < 3.0
        assert rest_call(client, ns, "f", "echo", {"text": "still fine"}) == "still fine"


# --- restarts (issue item 6) --------------------------------------------------------------------


@flavors
def test_a_restarted_upstream_answers_the_very_next_call(
    gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor
) -> None:
    """The server forgets every session; neither a REST caller nor an MCP client may notice."""
    upstream = private(request, flavor)
    ns = add_connection(gateway, "c", upstream.url, timeouts={"call": 10})
    tool, arguments, expected = flavor.echo
    with gateway.client(timeout=CALL_LIMIT) as client:
        assert rest_call(client, ns, "c", tool, arguments) == expected
        upstream.restart()
        assert rest_call(client, ns, "c", tool, arguments) == expected
        assert status_of(client, ns, "c") == {"state": "connected"}

    async def body(client: Client) -> list[types.CallToolResult]:
        before = await client.call_tool(safe("c", tool), arguments)
        await anyio.to_thread.run_sync(upstream.restart)
        after = await client.call_tool(safe("c", tool), arguments)  # same downstream session
        return [before, after]

    before, after = mcp_session(gateway, ns, "legacy", body)
    assert not before.is_error and text_of(before) == expected, before
    assert not after.is_error and text_of(after) == expected, f"after the restart: {after}"
    with gateway.client(timeout=CALL_LIMIT) as client:
        assert status_of(client, ns, "c") == {"state": "connected"}


@flavors
def test_the_status_follows_an_upstream_that_goes_down_and_comes_back(
    gateway: Gateway, request: pytest.FixtureRequest, flavor: Flavor
) -> None:
    upstream = private(request, flavor)
    ns = add_connection(gateway, "c", upstream.url, timeouts={"call": 10})
    tool, arguments, expected = flavor.echo
    with gateway.client(timeout=CALL_LIMIT) as client:
        assert rest_call(client, ns, "c", tool, arguments) == expected
        upstream.stop()
        down = client.post(f"/{ns}/c/.tools/{tool}", json=arguments)
        assert down.status_code == 502 and down.json()["error"] == "upstream_unavailable", down.text
        assert wait_for_state(client, ns, "c", "error", STATUS_DEADLINE)["state"] == "error"

        upstream.start()
        back = wait_for_state(client, ns, "c", "connected", STATUS_DEADLINE)
        assert back == {"state": "connected"}, (
            f"still {back} {STATUS_DEADLINE:g} s after the upstream came back"
        )
        assert rest_call(client, ns, "c", tool, arguments) == expected
