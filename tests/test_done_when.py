"""The whole story a new user tries: three servers nobody here wrote (or wrote with another SDK)
behind one namespace, every tool called from the Inspector, mcp-remote (the stdio bridge desktop
agents use), the official SDK and the `junction` CLI, and any of them restarted mid-traffic.

Servers: `@modelcontextprotocol/server-everything` (TypeScript SDK), a FastMCP server, and an
`mcp` SDK server. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from _node import FENCE, Node, ensure_inspector, ensure_mcp_remote
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import REPO_ROOT, Gateway, Upstream

pytestmark = pytest.mark.timeout(420)  # the first run installs Node 22, the Inspector, mcp-remote

# connection id -> (upstream fixture, tool, arguments, expected text)
CALLS = {
    "ev": ("everything_upstream", "echo", {"message": "hi"}, "Echo: hi"),
    "fm": ("fastmcp_upstream", "echo", {"text": "hi"}, "hi"),
    "py": ("modern_upstream", "echo", {"text": "hi"}, "hi"),
}


@pytest.fixture
def namespace(gateway: Gateway, request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Upstream]]]:
    ns = f"dw-{uuid.uuid4().hex[:8]}"
    upstreams: dict[str, Upstream] = {}
    with gateway.client(timeout=60) as http:
        assert http.put(f"/namespaces/{ns}").status_code in (200, 201)
        for cid, (fixture, *_rest) in CALLS.items():
            upstream: Upstream = request.getfixturevalue(fixture)
            upstreams[cid] = upstream
            created = http.put(f"/{ns}/{cid}", json={"mcpUrl": upstream.url})
            assert created.status_code in (200, 201) and created.json()["status"]["state"] == "connected", (
                created.text
            )
    yield ns, upstreams


def _text(result: Any) -> str:
    content = result["content"] if isinstance(result, dict) else result.content
    first = content[0]
    return str(first["text"] if isinstance(first, dict) else first.text)


def test_the_inspector_calls_every_server(
    gateway: Gateway, namespace: tuple[str, dict[str, Upstream]]
) -> None:
    ns, _ = namespace
    inspector = ensure_inspector()

    def run(*args: str) -> Any:
        with tempfile.TemporaryDirectory(prefix="junction-inspector-") as home:
            env = {"HOME": home, "SMITHERY_BASE_URL": gateway.url}
            argv = ("--cli", gateway.mcp_url(ns), "--transport", "http")
            auth = ("--header", f"Authorization: Bearer {gateway.admin_key}", "--format", "json")
            done = inspector.bin(
                "@modelcontextprotocol/inspector", "mcp-inspector", *argv, *auth, *args, env=env
            )
        text = done.ok().stdout.strip()
        return json.loads(text[text.find("{") :])

    names = {tool["name"] for tool in run("--method", "tools/list")["result"]["tools"]}
    assert {"ev__echo", "fm__echo", "py__echo"} <= names
    for cid, (_fixture, tool, arguments, expected) in CALLS.items():
        args = [item for key, value in arguments.items() for item in ("--tool-arg", f"{key}={value}")]
        called = run("--method", "tools/call", "--tool-name", f"{cid}__{tool}", *args)
        assert _text(called["result"]) == expected


def _mcp_remote(node: Node, gateway: Gateway, ns: str, home: str) -> StdioServerParameters:
    entry = node.bin_path("mcp-remote", "mcp-remote")
    return StdioServerParameters(
        command=node.node,
        args=[
            "--import",
            FENCE.as_uri(),
            str(entry),
            gateway.mcp_url(ns),
            "--header",
            f"Authorization:Bearer {gateway.admin_key}",
            "--allow-http",
            "--transport",
            "http-only",
        ],
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": home,
            "MCP_REMOTE_CONFIG_DIR": home,
            "SMITHERY_BASE_URL": gateway.url,
            "BROWSER": "/bin/false",
        },
    )


def test_mcp_remote_bridges_every_server_and_survives_restarts(
    gateway: Gateway, namespace: tuple[str, dict[str, Upstream]]
) -> None:
    ns, upstreams = namespace
    node = ensure_mcp_remote()

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="junction-mcp-remote-") as home, anyio.fail_after(240):
            async with Client(
                stdio_client(_mcp_remote(node, gateway, ns, home), errlog=sys.stderr)
            ) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert {"ev__echo", "fm__echo", "py__echo"} <= names
                for cid, (_fixture, tool, arguments, expected) in CALLS.items():
                    result = await client.call_tool(f"{cid}__{tool}", arguments)
                    assert not result.is_error and _text(result) == expected, result
                # A restarted upstream: the very next call through the bridge just works.
                await anyio.to_thread.run_sync(upstreams["py"].restart)
                result = await client.call_tool("py__echo", {"text": "again"})
                assert not result.is_error and _text(result) == "again", result

    anyio.run(main)


def test_the_sdk_and_the_cli_keep_working_across_a_gateway_restart(
    gateway: Gateway, namespace: tuple[str, dict[str, Upstream]]
) -> None:
    ns, _ = namespace

    async def every_tool() -> list[str]:
        headers = {"Authorization": f"Bearer {gateway.admin_key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            with anyio.fail_after(120):
                async with Client(streamable_http_client(gateway.mcp_url(ns), http_client=http)) as client:
                    answers = []
                    for cid, (_fixture, tool, arguments, _expected) in CALLS.items():
                        result = await client.call_tool(f"{cid}__{tool}", arguments)
                        assert not result.is_error, result
                        answers.append(_text(result))
                    return answers

    expected = [call[3] for call in CALLS.values()]
    assert anyio.run(every_tool) == expected
    gateway.restart()
    assert anyio.run(every_tool) == expected
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUNCTION_")}
    env |= {"JUNCTION_URL": gateway.url, "JUNCTION_API_KEY": gateway.admin_key}
    for cid, (_fixture, tool, arguments, want) in CALLS.items():
        with tempfile.TemporaryDirectory() as cfg:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "proxy",
                    "tool",
                    "call",
                    "-n",
                    ns,
                    cid,
                    tool,
                    json.dumps(arguments),
                    "--json",
                ],
                cwd=REPO_ROOT,
                env={**env, "JUNCTION_CONFIG_DIR": cfg},
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert done.returncode == 0, done.stdout + done.stderr
        assert _text(json.loads(done.stdout)) == want
