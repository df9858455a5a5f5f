"""Stdio upstreams: MCP servers the gateway runs as its own child processes.

Off by default (`allow_stdio_upstreams`), admin API keys only. Two real servers run over stdio: the
SDK test server (`tests/upstreams/server.py --stdio`, kind ``process``: tools that show its env and
pid, write to stderr and exit) and the npm ``@modelcontextprotocol/server-everything``
(``node <bin> stdio``). Each is reached through REST and the namespace endpoint ``/mcp/{ns}``; its
process is checked by pid: killed from outside (the status says so, and it is restarted), gone
when its connection or namespace is deleted or the gateway stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from _node import EVERYTHING_PACKAGES, ensure_everything
from conftest import REPO_ROOT, Gateway
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

CALL_LIMIT = 20.0  # seconds for any one exchange (a Python server over stdio takes ~2 s to start)
GONE_WITHIN = 10.0  # the SDK closes stdin, then SIGTERM after 2 s, SIGKILL 2 s later
SECRET = "stdio-secret-" + "7f3a9c1e5b"  # an env value: write-only, never in a response or log
GATEWAY_SECRET = "gateway-only-" + "d41d8cd98f"  # in the gateway's environment only
EVERYTHING = "@modelcontextprotocol/server-everything"


def process_server(**extra: Any) -> dict[str, Any]:
    """The body of a connection running the SDK test server over stdio."""
    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "tests.upstreams.server", "--kind", "process", "--stdio"],
        "cwd": str(REPO_ROOT),
        **extra,
    }


@pytest.fixture(scope="module")
def stdio_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway that runs stdio upstreams, logging at info (stderr lines are info)."""
    shared = Gateway(
        tmp_path_factory.mktemp("stdio-gateway"),
        JUNCTION_ALLOW_STDIO_UPSTREAMS="1",
        JUNCTION_LOG_LEVEL="info",
        UNRELATED_GATEWAY_SECRET=GATEWAY_SECRET,
    ).start(attempts=3)
    yield shared
    shared.stop()


_namespaces = iter(range(1, 1_000_000))


def new_namespace(client: httpx2.Client) -> str:
    ns = f"stdio{next(_namespaces)}"
    assert client.put(f"/namespaces/{ns}").status_code in (200, 201)
    return ns


def call(client: httpx2.Client, ns: str, cid: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/{ns}/{cid}/.tools/{tool}", json=arguments)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert not body.get("isError"), body
    return body


def pid_of(client: httpx2.Client, ns: str, cid: str) -> int:
    return int(call(client, ns, cid, "pid", {})["structuredContent"]["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(what: str, check: Callable[[], Any], within: float) -> Any:
    """Poll `check` (REST or the process table; no event to await) until truthy, or fail."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.02)


def status_of(client: httpx2.Client, ns: str, cid: str) -> dict[str, Any]:
    response = client.get(f"/{ns}/{cid}")
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()["status"]
    return status


def mcp_session(
    gateway: Gateway, ns: str, mode: str, body: Callable[[Client], Any], conn: str | None = None
) -> Any:
    """Run `body` with an SDK client on ``/mcp/{ns}`` (or the passthrough ``/mcp/{ns}/{conn}``)
    in `mode` (``legacy`` or ``auto``)."""

    async def main() -> Any:
        headers = {"Authorization": f"Bearer {gateway.admin_key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=CALL_LIMIT) as http:
            with anyio.fail_after(4 * CALL_LIMIT):
                async with Client(
                    streamable_http_client(gateway.mcp_url(ns, conn), http_client=http),
                    mode=mode,
                    read_timeout_seconds=CALL_LIMIT,
                ) as client:
                    return await body(client)

    return anyio.run(main)


# --- who may run programs -------------------------------------------------------------------------


def test_stdio_connections_are_refused_unless_the_gateway_allows_them(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway()  # allow_stdio_upstreams defaults to off
    with gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        for response in (
            client.post(f"/{ns}", json=process_server()),
            client.put(f"/{ns}/p", json=process_server()),
            client.post(f"/{ns}", json={"command": "/bin/true"}),  # transport implied by command
        ):
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "stdio_disabled"
            assert "allow_stdio_upstreams" in response.json()["message"]
        assert client.get(f"/{ns}").json()["connections"] == []


def test_only_admin_keys_may_create_or_change_stdio_connections(stdio_gateway: Gateway) -> None:
    with stdio_gateway.client(timeout=CALL_LIMIT) as admin:
        ns = new_namespace(admin)
        minted = admin.post("/tokens", json={"policy": [{"ttl": "1h"}]})  # every scope
        assert minted.status_code == 200, minted.text
        token = minted.json()["token"]
        assert admin.put(f"/{ns}/p", json=process_server()).status_code == 201
    with httpx2.Client(
        base_url=stdio_gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=CALL_LIMIT
    ) as client:
        for method, path, body in (
            ("POST", f"/{ns}", process_server()),
            ("PUT", f"/{ns}/q", process_server()),
            ("PUT", f"/{ns}/p", {"env": {"EXTRA": "value1"}}),
            ("PUT", f"/{ns}/p", {"args": ["-c", "print(1)"]}),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == "forbidden", response.text
            assert "admin" in response.json()["message"]
        # What it runs stays the admin's choice; using it is an ordinary tool call.
        assert call(client, ns, "p", "echo", {"text": "hi"})["content"][0]["text"] == "hi"
        renamed = client.put(f"/{ns}/p", json={"name": "renamed"})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["command"] == sys.executable


def test_stdio_input_is_validated(stdio_gateway: Gateway) -> None:
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        for body in (
            {"transport": "stdio"},
            {"transport": "stdio", "command": ""},
            {"transport": "stdio", "command": 5},
            {"transport": "stdio", "command": "x", "args": "not a list"},
            {"transport": "stdio", "command": "x", "args": ["ok", 3]},
            {"transport": "stdio", "command": "x", "args": ["a"] * 1000},
            {"transport": "stdio", "command": "x", "env": ["A=1"]},
            {"transport": "stdio", "command": "x", "env": {"A": 1}},
            {"transport": "stdio", "command": "x", "env": {"BAD-NAME": "v"}},
            {"transport": "stdio", "command": "x", "env": {"A": "v" * 100_000}},
            {"transport": "stdio", "command": "x", "cwd": "relative/dir"},
            {"transport": "stdio", "command": "x", "mcpUrl": "http://127.0.0.1:1/mcp"},
            {"transport": "stdio", "command": "x", "headers": {"x-key": "value1"}},
            {"transport": "http", "command": "x"},
            {"transport": "carrier-pigeon", "command": "x"},
        ):
            response = client.post(f"/{ns}", json=body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"] == "validation_error", response.text
        # Values are never echoed in errors: they may be credentials.
        bad = client.post(f"/{ns}", json={"transport": "stdio", "command": "x", "env": {"A": 12345678}})
        assert "12345678" not in bad.text
        assert client.get(f"/{ns}").json()["connections"] == []
        # A connection keeps its transport.
        assert client.put(f"/{ns}/p", json=process_server()).status_code == 201
        moved = client.put(f"/{ns}/p", json={"mcpUrl": "http://127.0.0.1:1/mcp"})
        assert moved.status_code == 409, moved.text
        assert client.put(f"/{ns}/p", json={"headers": {"x-key": "value1"}}).status_code == 400
        assert client.put(f"/{ns}/h", json={"mcpUrl": "http://127.0.0.1:1/mcp"}).status_code == 201
        assert client.put(f"/{ns}/h", json=process_server()).status_code == 409


# --- the SDK server over stdio --------------------------------------------------------------------


def test_a_stdio_server_works_through_rest_and_the_namespace_endpoint(stdio_gateway: Gateway) -> None:
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        created = client.put(f"/{ns}/p", json=process_server(env={"API_TOKEN": SECRET, "MODE": "test"}))
        assert created.status_code == 201, created.text
        shown = created.json()
        assert shown["transport"] == "stdio"
        assert shown["mcpUrl"] is None  # Smithery's shape: a string, or null for a server without URL
        assert shown["command"] == sys.executable
        assert shown["args"] == ["-m", "tests.upstreams.server", "--kind", "process", "--stdio"]
        assert shown["envNames"] == ["API_TOKEN", "MODE"]
        assert shown["status"] == {"state": "connected"}, shown
        assert shown["serverInfo"]["name"] == "test-process"
        for response in (created, client.get(f"/{ns}/p"), client.get(f"/{ns}")):
            assert SECRET not in response.text and "envSealed" not in response.text

        # The program gets its env, a minimal base (PATH), and nothing else of the gateway's.
        assert call(client, ns, "p", "env", {"name": "API_TOKEN"})["structuredContent"] == {"value": SECRET}
        assert call(client, ns, "p", "env", {"name": "PATH"})["structuredContent"]["value"]
        for name in ("UNRELATED_GATEWAY_SECRET", "JUNCTION_ADMIN_KEY", "JUNCTION_DATA_DIR"):
            assert call(client, ns, "p", "env", {"name": name})["structuredContent"] == {"value": None}

        # env changes like headers: merged, null removes, values still write-only.
        changed = client.put(f"/{ns}/p", json={"env": {"MODE": None, "EXTRA": "second"}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["envNames"] == ["API_TOKEN", "EXTRA"]
        assert call(client, ns, "p", "env", {"name": "EXTRA"})["structuredContent"] == {"value": "second"}
        assert call(client, ns, "p", "env", {"name": "MODE"})["structuredContent"] == {"value": None}

        listed = client.get(f"/{ns}/p/.tools")
        assert {t["name"] for t in listed.json()["tools"]} == {"echo", "env", "pid", "stderr", "exit"}

    for mode in ("legacy", "auto"):

        async def body(session: Client, mode: str = mode) -> tuple[set[str], str]:
            tools = {t.name for t in (await session.list_tools()).tools}
            result = await session.call_tool("p__echo", {"text": f"via {mode}"})
            return tools, result.content[0].text  # type: ignore[union-attr]

        tools, text = mcp_session(stdio_gateway, ns, mode, body)
        assert {"p__echo", "p__env", "p__pid"} <= tools
        assert text == f"via {mode}"

    async def passthrough(session: Client) -> tuple[set[str], str]:
        tools = {t.name for t in (await session.list_tools()).tools}
        result = await session.call_tool("echo", {"text": "one connection"})
        return tools, result.content[0].text  # type: ignore[union-attr]

    tools, text = mcp_session(stdio_gateway, ns, "legacy", passthrough, conn="p")
    assert tools == {"echo", "env", "pid", "stderr", "exit"}
    assert text == "one connection"


def test_stderr_reaches_the_gateway_log_without_env_values(stdio_gateway: Gateway) -> None:
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        assert client.put(f"/{ns}/p", json=process_server(env={"API_TOKEN": SECRET})).status_code == 201
        call(client, ns, "p", "stderr", {"text": f"marker-{ns} token={SECRET}"})
        line = f"{ns}/p stderr: marker-{ns} token=[redacted]"
        wait_until("the stderr line in the log", lambda: line in stdio_gateway.logs(), 5.0)
        assert f"{ns}/p stderr: test-process stdio server pid" in stdio_gateway.logs()
        assert SECRET not in stdio_gateway.logs()


def test_a_process_that_dies_is_reported_and_restarted(stdio_gateway: Gateway) -> None:
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        assert client.put(f"/{ns}/p", json=process_server()).status_code == 201
        first = pid_of(client, ns, "p")
        os.kill(first, signal.SIGKILL)
        status = wait_until(
            "the status shows the kill",
            lambda: (s := status_of(client, ns, "p"))["state"] == "error" and s,
            5.0,
        )
        assert status["message"] == "the stdio server was killed by signal 9 (SIGKILL)"
        # The watcher starts it again after a short backoff, without any call.
        wait_until("connected again", lambda: status_of(client, ns, "p")["state"] == "connected", 15.0)
        second = pid_of(client, ns, "p")
        assert second != first and alive(second)
        assert call(client, ns, "p", "echo", {"text": "back"})["content"][0]["text"] == "back"

        # A server that exits on its own: the caller and the status get its exit code.
        response = client.post(f"/{ns}/p/.tools/exit", json={"code": 3})
        assert response.status_code == 502, response.text
        assert response.json() == {
            "error": "upstream_unavailable",
            "message": "the stdio server exited with code 3",
        }
        wait_until(
            "the exit in the log", lambda: "the stdio server exited with code 3" in stdio_gateway.logs(), 5
        )
        wait_until("connected again", lambda: status_of(client, ns, "p")["state"] == "connected", 15.0)
        assert call(client, ns, "p", "echo", {"text": "again"})["content"][0]["text"] == "again"


def test_a_program_that_cannot_start_or_exits_at_once_says_why(stdio_gateway: Gateway) -> None:
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        missing = client.put(f"/{ns}/m", json={"transport": "stdio", "command": "/nonexistent/mcp-server"})
        assert missing.status_code == 201, missing.text
        assert missing.json()["status"] == {
            "state": "error",
            "message": "cannot start the stdio server '/nonexistent/mcp-server': No such file or directory",
        }
        quits = {"transport": "stdio", "command": sys.executable, "args": ["-c", "import sys; sys.exit(7)"]}
        created = client.put(f"/{ns}/q", json=quits)
        assert created.status_code == 201, created.text
        assert created.json()["status"] == {
            "state": "error",
            "message": "the stdio server exited with code 7",
        }
        response = client.post(f"/{ns}/q/.tools/anything", json={})
        assert response.status_code in (502, 404), response.text


def test_deleting_the_connection_or_namespace_or_stopping_the_gateway_ends_the_process(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway(JUNCTION_ALLOW_STDIO_UPSTREAMS="1")
    with gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        for cid in ("a", "b", "c"):
            assert client.put(f"/{ns}/{cid}", json=process_server()).status_code == 201
        pids = {cid: pid_of(client, ns, cid) for cid in ("a", "b", "c")}
        assert all(alive(pid) for pid in pids.values())

        assert client.delete(f"/{ns}/a").json() == {"success": True}
        wait_until("a's process gone", lambda: not alive(pids["a"]), GONE_WITHIN)
        assert alive(pids["b"]) and alive(pids["c"])

        other = new_namespace(client)
        assert client.put(f"/{other}/d", json=process_server()).status_code == 201
        pids["d"] = pid_of(client, other, "d")
        assert client.delete(f"/namespaces/{other}").status_code == 200
        wait_until("d's process gone with its namespace", lambda: not alive(pids["d"]), GONE_WITHIN)
        assert alive(pids["b"])
    gateway.stop()
    wait_until(
        "b and c gone with the gateway", lambda: not alive(pids["b"]) and not alive(pids["c"]), GONE_WITHIN
    )


def test_turning_the_setting_off_stops_stdio_connections_from_running(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway(JUNCTION_ALLOW_STDIO_UPSTREAMS="1")
    with gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        assert client.put(f"/{ns}/p", json=process_server()).status_code == 201
        pid = pid_of(client, ns, "p")
    gateway.env.pop("JUNCTION_ALLOW_STDIO_UPSTREAMS")
    gateway.restart()
    assert not alive(pid)
    with gateway.client(timeout=CALL_LIMIT) as client:
        status = status_of(client, ns, "p")
        assert status["state"] == "error" and "allow_stdio_upstreams" in status["message"], status
        response = client.post(f"/{ns}/p/.tools/pid", json={})
        assert response.status_code == 502, response.text
        assert "allow_stdio_upstreams" in response.json()["message"]
        assert client.get(f"/{ns}/p").json()["command"] == sys.executable  # kept, still deletable
        assert client.delete(f"/{ns}/p").status_code == 200


# --- a third-party server over stdio --------------------------------------------------------------


def test_server_everything_over_stdio(stdio_gateway: Gateway, tmp_path: Path) -> None:
    node = ensure_everything()
    bin_path = node.bin_path(EVERYTHING, "mcp-server-everything")
    home = tmp_path / "everything-home"
    home.mkdir()
    body = {
        "transport": "stdio",
        "command": node.node,
        "args": [str(bin_path), "stdio"],
        "env": {"HOME": str(home), "EVERYTHING_TOKEN": SECRET},
    }
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
        created = client.put(f"/{ns}/ev", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["status"] == {"state": "connected"}, created.text
        assert created.json()["serverInfo"]["name"] == "mcp-servers/everything"
        assert SECRET not in created.text
        echo = call(client, ns, "ev", "echo", {"message": "over stdio"})
        assert echo["content"][0]["text"] == "Echo: over stdio"
        # get-env answers with its whole environment: ours is there, the gateway's is not.
        env = json.loads(call(client, ns, "ev", "get-env", {})["content"][0]["text"])
        assert env["EVERYTHING_TOKEN"] == SECRET
        assert not any(name.startswith("JUNCTION_") or name == "UNRELATED_GATEWAY_SECRET" for name in env)

    async def session(mcp: Client) -> tuple[set[str], str]:
        tools = {t.name for t in (await mcp.list_tools()).tools}
        result = await mcp.call_tool("ev__get-sum", {"a": 2, "b": 3})
        return tools, result.content[0].text  # type: ignore[union-attr]

    tools, text = mcp_session(stdio_gateway, ns, "auto", session)
    assert {"ev__echo", "ev__get-sum", "ev__get-env"} <= tools, tools
    assert text == "The sum of 2 and 3 is 5."
    assert EVERYTHING_PACKAGES[EVERYTHING]  # the pinned version this ran against


# --- the CLI --------------------------------------------------------------------------------------


def junction(gateway: Gateway, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m proxy ...` against `gateway` with its admin key."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("JUNCTION_")}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env={**base, "JUNCTION_URL": gateway.url, "JUNCTION_API_KEY": gateway.admin_key, **env},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_junction_mcp_add_stdio_runs_a_command(stdio_gateway: Gateway) -> None:
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        ns = new_namespace(client)
    added = junction(
        stdio_gateway,
        *("mcp", "add", "-n", ns, "--id", "p", "--stdio", "--env", "API_TOKEN", "--env", "MODE=cli"),
        *("--cwd", str(REPO_ROOT), "--", sys.executable, "-m", "tests.upstreams.server"),
        *("--kind", "process", "--stdio"),
        API_TOKEN=SECRET,  # `--env NAME` takes this shell's value: it never is on the command line
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert (
        f"url:      stdio: {sys.executable} -m tests.upstreams.server --kind process --stdio" in added.stdout
    )
    assert "env:      API_TOKEN, MODE (values are write-only)" in added.stdout
    assert "status:   connected" in added.stdout
    assert SECRET not in added.stdout + added.stderr
    with stdio_gateway.client(timeout=CALL_LIMIT) as client:
        assert call(client, ns, "p", "env", {"name": "API_TOKEN"})["structuredContent"] == {"value": SECRET}
        assert call(client, ns, "p", "env", {"name": "MODE"})["structuredContent"] == {"value": "cli"}
    listed = junction(stdio_gateway, "mcp", "list", "-n", ns)
    assert "stdio: " in listed.stdout and "connected" in listed.stdout, listed.stdout
    called = junction(stdio_gateway, "tool", "call", "-n", ns, "p", "echo", '{"text": "from the cli"}')
    assert called.returncode == 0 and "from the cli" in called.stdout, called.stdout + called.stderr

    misuse = junction(stdio_gateway, "mcp", "add", "-n", ns, "http://127.0.0.1:1/mcp", "--", "extra")
    assert misuse.returncode == 2 and "for --stdio" in misuse.stderr
    unset = junction(stdio_gateway, "mcp", "add", "-n", ns, "--stdio", "--env", "NOT_SET_ANYWHERE", "cmd")
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE is not set" in unset.stderr
