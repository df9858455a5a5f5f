"""`junction bridge`, driven the way Claude Desktop drives it.

Each test prints the snippet with `junction bridge --print-config claude`, then starts exactly its
`command`, `args` and `env` with the SDK's stdio client (which, like a desktop agent, passes on only
HOME, PATH and a few more of its own variables), and speaks 2025-era MCP over stdin/stdout to a
real gateway with real upstreams. The gateway is restarted and stopped under a live bridge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp.types as types
import pytest
from conftest import REPO_ROOT, Gateway, Upstream
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio

LIMIT = 60.0  # seconds for a whole conversation: a hang fails the test instead of stalling the run
AGENT = types.Implementation(name="claude-ai", version="0.1.0")  # as Claude Desktop names itself


class Cli:
    """`python -m proxy ...` with a private config directory, as a user runs it in a terminal."""

    def __init__(self, tmp_path: Path, gateway: Gateway) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("JUNCTION_", "XDG_CONFIG_HOME"))}
        self.env = {**base, "JUNCTION_CONFIG_DIR": str(tmp_path / "cfg"), "JUNCTION_URL": gateway.url}
        self.transcript: list[str] = []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.transcript += [result.stdout, result.stderr]
        assert "Traceback" not in result.stderr, result.stderr
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the tests that do not stop it: each works in its own namespace."""
    shared = Gateway(tmp_path_factory.mktemp("bridge-gateway")).start(attempts=3)
    yield shared
    shared.stop()


def setup_namespace(gateway: Gateway, ns: str, **connections: str) -> None:
    with gateway.client() as client:
        assert client.put(f"/namespaces/{ns}").status_code in (200, 201)
        for cid, url in connections.items():
            response = client.put(f"/{ns}/{cid}", json={"mcpUrl": url})
            assert response.status_code in (200, 201), response.text


def logged_in(tmp_path: Path, gateway: Gateway) -> Cli:
    cli = Cli(tmp_path, gateway)
    cli("auth", "login", "--key", gateway.admin_key)
    return cli


def claude_entry(cli: Cli, *args: str) -> dict[str, Any]:
    """The one `mcpServers` entry `junction bridge [args] --print-config claude` prints."""
    printed = cli("bridge", *args, "--print-config", "claude")
    servers = json.loads(printed.stdout)["mcpServers"]
    assert len(servers) == 1
    entry: dict[str, Any] = next(iter(servers.values()))
    return entry


@asynccontextmanager
async def desktop(entry: dict[str, Any], errlog: TextIO, **callbacks: Any) -> AsyncIterator[ClientSession]:
    """Start the configured server as Claude Desktop does and complete the 2025-era handshake."""
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=entry["env"])
    async with (
        stdio_client(params, errlog=errlog) as (read, write),
        ClientSession(read, write, client_info=AGENT, **callbacks) as session,
    ):
        init = await session.initialize()
        assert init.protocol_version in ("2025-06-18", "2025-11-25")
        yield session


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def text_of(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent), result
    return block.text


def tool_named(tools: list[types.Tool], suffix: str) -> str:
    """The exposed (prefixed) name of the one tool whose upstream name is `suffix`."""
    names = [t.name for t in tools if t.name.endswith(f"__{suffix}")]
    assert len(names) == 1, [t.name for t in tools]
    return names[0]


# --- the printed configuration ---------------------------------------------------------------------


def test_print_config_is_a_claude_desktop_entry_without_the_key(tmp_path: Path, gateway: Gateway) -> None:
    setup_namespace(gateway, "desk-config")
    cli = logged_in(tmp_path, gateway)
    printed = cli("bridge", "desk-config", "--print-config", "claude")
    config = json.loads(printed.stdout)
    entry = config["mcpServers"]["desk-config"]
    command = Path(entry["command"])
    assert command.is_absolute() and command.name == "junction" and os.access(command, os.X_OK)
    assert entry["args"] == ["bridge", "desk-config"]
    assert entry["env"]["JUNCTION_URL"] == gateway.url
    assert set(entry["env"]) <= {"JUNCTION_URL", "JUNCTION_CONFIG_DIR"}
    # Where the credential comes from is said on stderr; the credential itself is nowhere.
    assert str(tmp_path / "cfg" / "config.json") in printed.stderr
    assert "claude_desktop_config.json" in printed.stderr
    assert gateway.admin_key not in "".join(cli.transcript)

    # Without a namespace argument: the current one, written out so a later `use` changes nothing.
    cli("namespace", "use", "desk-config")
    assert claude_entry(cli) == entry


def test_bad_namespace_is_a_clear_error(tmp_path: Path, gateway: Gateway) -> None:
    setup_namespace(gateway, "real")
    cli = logged_in(tmp_path, gateway)
    missing = cli("bridge", "nope", "--print-config", "claude", check=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.splitlines() == [
        "error: namespace 'nope' does not exist; create it with `junction namespace create nope`"
    ]
    unnamed = cli("bridge", "--print-config", "claude", check=False)
    assert unnamed.returncode == 1 and "junction namespace use" in unnamed.stderr

    # A bridge configured for a namespace that is gone: the agent's initialize fails with the reason.
    entry = claude_entry(cli, "real")
    entry["args"][-1] = "nope"

    async def main() -> str:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            try:
                async with desktop(entry, errlog):
                    pass
            except BaseExceptionGroup as group:  # the session's task groups wrap it
                errors = [str(e) for e in leaves(group) if isinstance(e, MCPError)]
                assert len(errors) == 1, group
                return errors[0]
        raise AssertionError("the bridge initialized a session for a namespace that does not exist")

    message = anyio.run(main)
    assert "nope" in message and "not found" in message.lower()
    log = (tmp_path / "bridge.log").read_text()
    assert "refused initialize" in log and gateway.admin_key not in log


# --- tools through the bridge ----------------------------------------------------------------------


def test_tools_of_every_connection_through_the_bridge(
    tmp_path: Path, gateway: Gateway, modern_upstream: Upstream, everything_upstream: Upstream
) -> None:
    setup_namespace(gateway, "desk-tools", echo=modern_upstream.url, ev=everything_upstream.url)
    entry = claude_entry(logged_in(tmp_path, gateway), "desk-tools")
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async def main() -> tuple[list[str], str, str, str, dict[str, Any] | None]:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            async with desktop(entry, errlog) as session:
                tools = (await session.list_tools()).tools
                echoed = await session.call_tool("echo__echo", {"text": "hello"})
                ev_echo = await session.call_tool("ev__echo", {"message": "hi"})
                long = await session.call_tool(
                    "ev__trigger-long-running-operation",
                    {"duration": 0.3, "steps": 3},
                    progress_callback=on_progress,  # type: ignore[call-overload]
                )
                added = await session.call_tool("echo__add", {"a": 2, "b": 3})
        assert isinstance(echoed, types.CallToolResult) and isinstance(ev_echo, types.CallToolResult)
        assert isinstance(long, types.CallToolResult) and isinstance(added, types.CallToolResult)
        names = [t.name for t in tools]
        return names, text_of(echoed), text_of(ev_echo), text_of(long), added.structured_content

    names, echoed, ev_echo, long, added = anyio.run(main)
    assert {"echo__echo", "echo__add", "ev__echo", "ev__get-sum"} <= set(names)
    assert echoed == "hello" and ev_echo == "Echo: hi" and added == {"sum": 5}
    assert long.startswith("Long running operation completed") and progress == [1, 2, 3]
    assert gateway.admin_key not in (tmp_path / "bridge.log").read_text()


# --- the gateway goes away -------------------------------------------------------------------------


def test_the_bridge_survives_gateway_restarts(
    tmp_path: Path, start_gateway: Callable[..., Gateway], start_upstream: Callable[..., Upstream]
) -> None:
    gateway = start_gateway()
    setup_namespace(gateway, "desk", echo=start_upstream("modern").url)
    entry = claude_entry(logged_in(tmp_path, gateway), "desk")

    async def call(session: ClientSession, text: str) -> str:
        result = await session.call_tool("echo__echo", {"text": text})
        assert isinstance(result, types.CallToolResult)
        return text_of(result)

    async def main() -> list[str]:
        answers = []
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            async with desktop(entry, errlog) as session:
                answers.append(await call(session, "before"))
                # Restarted between two calls: the legacy session is gone; the agent sees nothing.
                await anyio.to_thread.run_sync(gateway.restart)
                answers.append(await call(session, "after a restart"))
                assert len((await session.list_tools()).tools) >= 2
                # Down while the agent calls: the call waits for the gateway and then succeeds.
                await anyio.to_thread.run_sync(gateway.stop)
                async with anyio.create_task_group() as tg:

                    async def waiting_call() -> None:
                        answers.append(await call(session, "while it was down"))

                    tg.start_soon(waiting_call)
                    await anyio.sleep(0.5)  # the call is retrying now (no event to await in another process)
                    await anyio.to_thread.run_sync(gateway.start)
                answers.append(await call(session, "same process"))
        return answers

    assert anyio.run(main) == ["before", "after a restart", "while it was down", "same process"]
    log = (tmp_path / "bridge.log").read_text()
    assert "reconnected" in log and gateway.admin_key not in log


def test_a_gateway_down_for_good_is_a_clear_error_not_a_hang(
    tmp_path: Path, start_gateway: Callable[..., Gateway], start_upstream: Callable[..., Upstream]
) -> None:
    gateway = start_gateway()
    setup_namespace(gateway, "desk", echo=start_upstream("modern").url)
    entry = claude_entry(logged_in(tmp_path, gateway), "desk")
    entry["env"]["JUNCTION_BRIDGE_RETRY_FOR"] = "2"  # the user's patience, shortened for the test

    async def main() -> tuple[str, float, str, float, str]:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            async with desktop(entry, errlog) as session:
                await session.call_tool("echo__echo", {"text": "up"})
                await anyio.to_thread.run_sync(gateway.stop)
                started = time.monotonic()
                with pytest.raises(MCPError) as first:
                    await session.call_tool("echo__echo", {"text": "down"})
                waited = time.monotonic() - started
                started = time.monotonic()
                with pytest.raises(MCPError) as second:  # known down: no second wait
                    await session.list_tools()
                fast = time.monotonic() - started
                await anyio.to_thread.run_sync(gateway.start)
                back = await session.call_tool("echo__echo", {"text": "back"})
                assert isinstance(back, types.CallToolResult)
        return first.value.error.message, waited, second.value.error.message, fast, text_of(back)

    first, waited, second, fast, back = anyio.run(main)
    assert f"the gateway at {gateway.url}/mcp/desk is unreachable" in first and "junction serve" in first
    assert 1.5 <= waited < 10 and fast < 1.5
    assert "unreachable" in second
    assert back == "back"
    assert gateway.admin_key not in (tmp_path / "bridge.log").read_text()


def test_a_tool_call_cut_off_by_a_crash_is_not_run_twice(
    tmp_path: Path, start_gateway: Callable[..., Gateway], start_upstream: Callable[..., Upstream]
) -> None:
    gateway = start_gateway()
    setup_namespace(gateway, "desk", slow=start_upstream("modern").url)
    entry = claude_entry(logged_in(tmp_path, gateway), "desk")

    def crash() -> None:
        time.sleep(1.0)  # the 30 s call is in the gateway's hands by then (another process: no event)
        process = gateway._process.proc  # noqa: SLF001  (conftest only stops gracefully)
        assert process is not None
        process.kill()  # SIGKILL: no graceful end for the call in flight
        process.wait(10)
        gateway.stop()

    async def main() -> tuple[str, float, str]:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            async with desktop(entry, errlog) as session:
                await session.call_tool("slow__echo", {"text": "warm"})
                started = time.monotonic()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, crash)
                    with pytest.raises(MCPError) as cut:
                        await session.call_tool("slow__sleep", {"seconds": 30})
                took = time.monotonic() - started
                await anyio.to_thread.run_sync(gateway.start)
                after = await session.call_tool("slow__echo", {"text": "next"})
        assert isinstance(after, types.CallToolResult)
        return str(cut.value), took, text_of(after)

    cut, took, after = anyio.run(main)
    assert "may or may not have run, so it was not sent again" in cut
    assert took < 10 and after == "next"


# --- everything else the namespace endpoint serves (issue 10, points 1-3) --------------------------


def test_resources_and_prompts_through_the_bridge(
    tmp_path: Path, gateway: Gateway, everything_upstream: Upstream
) -> None:
    setup_namespace(gateway, "desk-resources", ev=everything_upstream.url)
    entry = claude_entry(logged_in(tmp_path, gateway), "desk-resources")

    async def main() -> tuple[str, list[types.PromptMessage]]:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            async with desktop(entry, errlog) as session:
                resources = (await session.list_resources()).resources
                [doc] = [r for r in resources if str(r.uri).endswith("architecture.md")]
                read = await session.read_resource(doc.uri)
                prompts = (await session.list_prompts()).prompts
                [simple] = [p.name for p in prompts if p.name.endswith("simple-prompt")]
                prompt = await session.get_prompt(simple)
        assert isinstance(prompt, types.GetPromptResult)
        contents = read.contents[0]
        assert isinstance(contents, types.TextResourceContents)
        return contents.text, prompt.messages

    text, messages = anyio.run(main)
    assert text.strip() and messages and messages[0].role == "user"


def test_sampling_and_elicitation_reach_the_desktop_agent(
    tmp_path: Path, gateway: Gateway, everything_upstream: Upstream
) -> None:
    setup_namespace(gateway, "desk-sampling", ev=everything_upstream.url)
    entry = claude_entry(logged_in(tmp_path, gateway), "desk-sampling")
    asked: list[str] = []

    async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="BRIDGE-SAMPLED"),
            model="desk-model",
        )

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"color": "BRIDGE-ELICITED"})

    async def main() -> tuple[str, str]:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            callbacks = {"sampling_callback": sample, "elicitation_callback": elicit}
            async with desktop(entry, errlog, **callbacks) as session:
                tools = (await session.list_tools()).tools
                sampled = await session.call_tool(
                    tool_named(tools, "trigger-sampling-request"), {"prompt": "hi", "maxTokens": 10}
                )
                elicited = await session.call_tool(tool_named(tools, "trigger-elicitation-request"), {})
        assert isinstance(sampled, types.CallToolResult) and isinstance(elicited, types.CallToolResult)
        return json.dumps(sampled.model_dump(mode="json")), json.dumps(elicited.model_dump(mode="json"))

    sampled, elicited = anyio.run(main)
    assert "BRIDGE-SAMPLED" in sampled and "BRIDGE-ELICITED" in elicited
    assert asked == ["sampling", "elicitation"]


def test_list_changed_reaches_the_desktop_agent(
    tmp_path: Path, gateway: Gateway, modern_upstream: Upstream, everything_upstream: Upstream
) -> None:
    setup_namespace(gateway, "desk-changes", echo=modern_upstream.url)
    entry = claude_entry(logged_in(tmp_path, gateway), "desk-changes")
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async def main() -> list[str]:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            async with desktop(entry, errlog, message_handler=on_message) as session:
                await session.list_tools()
                await anyio.to_thread.run_sync(
                    lambda: setup_namespace(gateway, "desk-changes", ev=everything_upstream.url)
                )
                with anyio.fail_after(10):
                    await changed.wait()
                return [t.name for t in (await session.list_tools()).tools]

    assert "ev__echo" in anyio.run(main)


@pytest.mark.parametrize(("mode", "version"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
def test_the_bridge_relays_either_protocol_era(
    tmp_path: Path, gateway: Gateway, modern_upstream: Upstream, mode: str, version: str
) -> None:
    """Desktop agents speak 2025-era MCP today; a 2026-07-28 client (no session, `_meta` on every
    request) is relayed too, and the bridge's process ends soon after the agent closes stdin."""
    setup_namespace(gateway, f"desk-{mode}", echo=modern_upstream.url)
    entry = claude_entry(logged_in(tmp_path, gateway), f"desk-{mode}")
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=entry["env"])

    async def main() -> tuple[str | None, str, float]:
        with (tmp_path / "bridge.log").open("w") as errlog, anyio.fail_after(LIMIT):
            async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:  # type: ignore[arg-type]
                result = await client.call_tool("echo__echo", {"text": f"via {mode}"})
                protocol = client.protocol_version
                closing = time.monotonic()
            return protocol, text_of(result), time.monotonic() - closing

    protocol, echoed, closed_in = anyio.run(main)
    assert protocol == version and echoed == f"via {mode}"
    assert closed_in < 2.0  # the stdio client would have to kill a bridge that lingers
