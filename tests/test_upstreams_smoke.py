"""The test upstreams themselves, driven by the SDK's clients directly (no gateway involved)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import mcp.types as types
import pytest
from conftest import Upstream
from mcp import Client, ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

STANDARD_TOOLS = ["echo", "add", "fail", "blob", "headers", "sleep"]
LONG_NAME = "abcdefghi." * 9 + "abcdefghij"
SECRET = "sk-upstream-test-123"


@contextlib.asynccontextmanager
async def connect(
    url: str, mode: str = "auto", headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30, read=60)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def text(result: types.CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], types.TextContent), result
    return result.content[0].text


async def all_tools(list_page: Callable[[str | None], Any]) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        page = await list_page(cursor)
        tools += page.tools
        if (cursor := page.next_cursor) is None:
            return tools


async def check_standard_tools(call: Callable[..., Any], tools: list[types.Tool]) -> None:
    assert [t.name for t in tools] == STANDARD_TOOLS
    assert all(t.input_schema["type"] == "object" for t in tools)
    assert next(t for t in tools if t.name == "add").output_schema is not None

    echoed = await call("echo", {"text": "hello"})
    assert text(echoed) == "hello" and not echoed.is_error
    added = await call("add", {"a": 1, "b": 2.5})
    assert added.structured_content == {"sum": 3.5} and text(added) == "3.5"
    failed = await call("fail", {})
    assert failed.is_error and text(failed) == "boom"
    assert text(await call("headers", {"name": "x-api-key"})) == SECRET
    assert text(await call("headers", {"name": "x-not-sent"})) == ""
    started = time.monotonic()
    assert text(await call("sleep", {"seconds": 0.2})) == "slept"
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_modern_is_dual_era(modern_upstream: Upstream, mode: str, version: str) -> None:
    async with connect(modern_upstream.url, mode, {"X-Api-Key": SECRET}) as client:
        assert client.protocol_version == version
        if client.server_info is not None:  # optional on modern connections
            assert (client.server_info.name, client.server_info.version) == ("test-modern", "1.0.0")
        tools = (await client.list_tools()).tools
        await check_standard_tools(client.call_tool, tools)


async def test_legacy_falls_back_to_initialize(legacy_upstream: Upstream) -> None:
    async with connect(legacy_upstream.url, "auto", {"X-Api-Key": SECRET}) as client:
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None and client.server_info.name == "test-legacy"
        tools = (await client.list_tools()).tools
        await check_standard_tools(client.call_tool, tools)


async def test_legacy_rejects_modern_requests_like_an_old_server(legacy_upstream: Upstream) -> None:
    discover = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
    }
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28"}
    async with httpx2.AsyncClient() as http:
        response = await http.post(legacy_upstream.url, json=discover, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == {"code": -32600, "message": "Bad Request: Missing session ID"}


async def test_sse_transport(sse_upstream: Upstream) -> None:
    assert sse_upstream.url.endswith("/sse")
    async with sse_client(sse_upstream.url, headers={"X-Api-Key": SECRET}) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.protocol_version == "2025-11-25"
            assert init.server_info.name == "test-sse"
            tools = (await session.list_tools()).tools
            await check_standard_tools(session.call_tool, tools)


async def test_dotted_names(dotted_upstream: Upstream) -> None:
    async with Client(dotted_upstream.url, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        tools = (await client.list_tools()).tools
        names = [t.name for t in tools]
        assert names == ["repo.search", "repo.get", "issues.create", "plain", "repo_search", LONG_NAME]
        assert len(LONG_NAME) == 100
        assert all(t.input_schema["type"] == "object" for t in tools)
        assert text(await client.call_tool("repo.search", {"query": "q"})) == "search:q"
        assert text(await client.call_tool("repo.get", {"name": "junction"})) == "get:junction"
        assert text(await client.call_tool("repo_search", {"query": "q"})) == "repo_search:q"
        created = await client.call_tool("issues.create", {"title": "bug"})
        assert created.structured_content == {"created": "bug"}
        assert text(await client.call_tool("plain", {})) == "plain"
        assert text(await client.call_tool(LONG_NAME, {})) == "long"


async def test_paged_listing(paged_upstream: Upstream) -> None:
    async with connect(paged_upstream.url, "legacy") as client:
        first = await client.list_tools()
        assert [t.name for t in first.tools] == [f"t{i:02d}" for i in range(10)]
        assert first.next_cursor is not None
        tools = await all_tools(lambda cursor: client.list_tools(cursor=cursor))
        assert [t.name for t in tools] == [f"t{i:02d}" for i in range(25)]
        assert text(await client.call_tool("t24", {})) == "t24"


async def test_slow_listing(slow_upstream: Upstream, start_upstream: Callable[..., Upstream]) -> None:
    slower = start_upstream("slow", list_delay=0.6)
    for upstream, delay in ((slow_upstream, 0.1), (slower, 0.6)):
        async with connect(upstream.url, "legacy") as client:
            started = time.monotonic()
            tools = (await client.list_tools()).tools
            assert time.monotonic() - started >= delay
            assert [t.name for t in tools] == ["echo", "sleep", "cancellations"]
            assert text(await client.call_tool("echo", {"text": "late"})) == "late"


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_restart_keeps_the_port_and_stop_stops(start_upstream: Callable[..., Upstream]) -> None:
    upstream = start_upstream("legacy")
    port, url = upstream.port, upstream.url
    async with connect(url) as client:
        assert text(await client.call_tool("echo", {"text": "one"})) == "one"
    upstream.restart()
    assert (upstream.port, upstream.url) == (port, url)
    async with connect(url) as client:
        assert client.protocol_version == "2025-11-25"
        assert text(await client.call_tool("echo", {"text": "two"})) == "two"
    upstream.stop()
    assert _refused(port) and not upstream.running
