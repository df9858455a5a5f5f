"""The per-connection endpoint `/mcp/{ns}/{id}` as a faithful proxy, with real clients and servers.

A legacy SDK `ClientSession` that initializes gets its own upstream session: server-everything's
sampling and elicitation requests reach its callbacks, its subscriptions and logs reach it on its
streams, progress arrives, and the session belongs to the key that made it. A 2026-07-28 client
of a 2026-07-28 SDK upstream gets MRTR passed through. Calls without `initialize` keep the
stateless passthrough (tests/test_mcp_endpoint.py, tests/test_smithery_client.py).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from conftest import _SERIAL, Gateway, Upstream, _Process, free_port
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio
_namespaces = itertools.count(1)
LIMIT = 30.0
JSON_AND_SSE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


class MrtrUpstream(Upstream):
    """`tests/upstreams/mrtr_server.py`: a tool that asks its caller a question, in both eras."""

    def __init__(self, log_dir: Path) -> None:
        self.kind = "mrtr"
        self.opts = {}
        self.port = free_port()
        self._process = _Process(f"upstream-mrtr-{next(_SERIAL)}", log_dir)

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "tests.upstreams.mrtr_server", "--port", str(self.port)]


@pytest.fixture
def mrtr_upstream(tmp_path: Path) -> Any:
    upstream = MrtrUpstream(tmp_path / "upstream-logs").launch()
    yield upstream
    upstream.stop()


def add_connection(gateway: Gateway, cid: str, url: str, **settings: Any) -> str:
    """A new namespace holding one connection `cid` to `url`; returns the namespace."""
    ns = f"relay{next(_namespaces)}"
    with gateway.client() as client:
        assert client.put(f"/namespaces/{ns}").status_code in (200, 201)
        response = client.put(f"/{ns}/{cid}", json={"mcpUrl": url, **settings})
        assert response.status_code in (200, 201), response.text
    return ns


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


@asynccontextmanager
async def legacy_session(url: str, key: str, **callbacks: Any) -> AsyncIterator[ClientSession]:
    """An initialized legacy SDK `ClientSession` on `url`, authenticated with `key`."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30, read=300)
    )
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write, **callbacks) as session:
            await session.initialize()
            yield session


# --- server-to-client requests, streams, notifications (server-everything, legacy) -------------------


async def test_sampling_and_elicitation_reach_the_legacy_client_through_its_own_session(
    gateway: Gateway, everything_upstream: Upstream
) -> None:
    ns = add_connection(gateway, "ev", everything_upstream.url)
    asked: list[str] = []

    async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        asked.append(content.text if isinstance(content, types.TextContent) else "")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="SAMPLED-42"), model="test-model"
        )

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace"})

    with anyio.fail_after(LIMIT):
        async with legacy_session(
            gateway.mcp_url(ns, "ev"),
            gateway.admin_key,
            sampling_callback=sample,
            elicitation_callback=elicit,
        ) as session:
            # server-everything offers these tools only to clients that declared the capabilities:
            # the upstream saw this client's own initialize.
            names = {t.name for t in (await session.list_tools()).tools}
            assert {"trigger-sampling-request", "trigger-elicitation-request"} <= names
            sampled = await session.call_tool(
                "trigger-sampling-request", {"prompt": "hello?", "maxTokens": 5}
            )
            elicited = await session.call_tool("trigger-elicitation-request", {})
    assert "SAMPLED-42" in text_of(sampled)
    assert "hello?" in asked[0]
    assert "Name: Ada Lovelace" in text_of(elicited)


async def test_subscriptions_logs_and_progress_reach_the_legacy_client(
    gateway: Gateway, start_everything: Callable[..., Upstream]
) -> None:
    ns = add_connection(gateway, "ev", start_everything().url)
    logs: list[str] = []
    progress: list[float] = []
    updated = anyio.Event()
    updated_uris: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated_uris.append(message.params.uri)
            updated.set()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(LIMIT):
        async with legacy_session(
            gateway.mcp_url(ns, "ev"), gateway.admin_key, logging_callback=on_log, message_handler=on_message
        ) as session:
            uri = (await session.list_resources()).resources[0].uri
            await session.subscribe_resource(str(uri))
            assert any("Received Subscribe Resource request" in line for line in logs), logs
            # Updates come every 5 s, unrelated to any request: on the session's GET stream.
            await session.call_tool("toggle-subscriber-updates", {})
            await updated.wait()
            assert str(uri) in updated_uris
            result = await session.call_tool(
                "trigger-long-running-operation", {"duration": 0.3, "steps": 3}, progress_callback=on_progress
            )
            await session.call_tool("toggle-subscriber-updates", {})  # stop them
    assert not result.is_error
    assert progress == [1, 2, 3]


# --- the session: minted id, binding, DELETE, expiry, restart, removal -------------------------------


def _initialize(client: httpx2.Client, path: str, key: str | None = None) -> str:
    headers = {**JSON_AND_SSE, **({"authorization": f"Bearer {key}"} if key else {})}
    response = client.post(path, json=INITIALIZE, headers=headers)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert client.post(path, json=note, headers={**headers, "mcp-session-id": session}).status_code == 202
    return session


def _call(
    client: httpx2.Client, path: str, session: str, key: str | None = None, text: str = "hi"
) -> httpx2.Response:
    headers = {**JSON_AND_SSE, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text}},
    }
    return client.post(path, json=call, headers=headers)


def _result(response: httpx2.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads([d for d in data if d][-1])  # type: ignore[no-any-return]
    return response.json()  # type: ignore[no-any-return]


def test_a_session_belongs_to_the_key_that_made_it_and_delete_ends_it(
    gateway: Gateway, modern_upstream: Upstream
) -> None:
    ns = add_connection(gateway, "m", modern_upstream.url)
    path = f"/mcp/{ns}/m"
    with gateway.client() as client:
        other_key = client.post("/keys", json={"name": "another admin"}).json()["key"]
        session = _initialize(client, path)
        assert session.startswith("mcpj-")  # ours, not the upstream's
        assert _result(_call(client, path, session))["result"]["content"][0]["text"] == "hi"
        # Another key, even one allowed on the connection, does not see the session.
        stolen = _call(client, path, session, key=other_key)
        assert stolen.status_code == 404 and stolen.json()["error"]["message"].startswith("session not found")
        deleted = client.delete(path, headers={"mcp-session-id": session})
        assert deleted.status_code == 200
        after = _call(client, path, session)
        assert after.status_code == 404
        # Without a session the stateless passthrough still answers (the Smithery SDK's way).
        stateless = _call(client, path, "smithery-stateless")
        assert stateless.json()["result"]["content"][0]["text"] == "hi"


def test_an_idle_session_expires(start_gateway: Callable[..., Gateway], modern_upstream: Upstream) -> None:
    gateway = start_gateway(JUNCTION_SESSION_IDLE_TIMEOUT="1")
    ns = add_connection(gateway, "m", modern_upstream.url)
    path = f"/mcp/{ns}/m"
    with gateway.client() as client:
        session = _initialize(client, path)
        assert _call(client, path, session).status_code == 200
        time.sleep(1.5)  # the idle time itself is what is tested
        expired = _call(client, path, session)
        assert expired.status_code == 404, expired.text  # the client must initialize again


async def test_a_gateway_restart_loses_the_session_and_the_client_initializes_again(
    start_gateway: Callable[..., Gateway], modern_upstream: Upstream
) -> None:
    gateway = start_gateway()
    ns = add_connection(gateway, "m", modern_upstream.url)
    url = gateway.mcp_url(ns, "m")
    with anyio.fail_after(LIMIT):
        async with legacy_session(url, gateway.admin_key) as session:
            assert text_of(await session.call_tool("echo", {"text": "before"})) == "before"
            await anyio.to_thread.run_sync(gateway.restart)
            with pytest.raises(MCPError) as lost:
                await session.call_tool("echo", {"text": "lost"})
            assert "session" in str(lost.value).lower()
        async with legacy_session(url, gateway.admin_key) as session:
            assert text_of(await session.call_tool("echo", {"text": "after"})) == "after"


def test_deleting_the_connection_ends_its_sessions_and_their_streams(
    gateway: Gateway, modern_upstream: Upstream
) -> None:
    ns = add_connection(gateway, "m", modern_upstream.url)
    path = f"/mcp/{ns}/m"
    with gateway.client(timeout=httpx2.Timeout(LIMIT)) as client:
        session = _initialize(client, path)
        headers = {
            "accept": "text/event-stream",
            "mcp-session-id": session,
            "mcp-protocol-version": "2025-11-25",
        }
        with client.stream("GET", path, headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert client.delete(f"/{ns}/m").status_code == 200
            ended = time.monotonic()
            for _ in stream.iter_raw():  # returns once the gateway ends the stream
                pass
            assert time.monotonic() - ended < LIMIT


def test_credentials_are_added_upstream_and_cleaned_from_what_it_says(
    gateway: Gateway, modern_upstream: Upstream
) -> None:
    secret = "Bearer upstream-secret-" + "x" * 12
    ns = add_connection(gateway, "m", modern_upstream.url, headers={"Authorization": secret})
    path = f"/mcp/{ns}/m"
    with gateway.client() as client:
        session = _initialize(client, path)
        headers = {**JSON_AND_SSE, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "headers", "arguments": {"name": "authorization"}},
        }
        answer = client.post(path, json=call, headers=headers)
    seen = _result(answer)["result"]["content"][0]["text"]
    assert seen == "[redacted]"  # the upstream got the connection's token, and we never see it
    assert "upstream-secret" not in answer.text and gateway.admin_key not in answer.text


# --- 2026-07-28: MRTR through the relay --------------------------------------------------------------


async def test_a_modern_client_gets_mrtr_through_unchanged(gateway: Gateway, mrtr_upstream: Upstream) -> None:
    ns = add_connection(gateway, "r", mrtr_upstream.url)
    url = gateway.mcp_url(ns, "r")
    questions: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        questions.append(params.message)
        return types.ElicitResult(action="accept", content={"quantity": 3})

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {gateway.admin_key}"}, timeout=30)
    with anyio.fail_after(LIMIT):
        async with (
            http,
            Client(
                streamable_http_client(url, http_client=http), mode="2026-07-28", elicitation_callback=answer
            ) as client,
        ):
            first = await client.session.call_tool("reserve", {"title": "Dune"}, allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult)
            assert first.request_state == "asked:Dune"  # the upstream's own state, byte for byte
            assert set(first.input_requests or {}) == {"quantity"}
            done = await client.call_tool("reserve", {"title": "Dune"})  # the SDK drives the rounds
    assert text_of(done) == "Reserved 3 of 'Dune'."
    assert questions == ["How many copies?"]


async def test_a_legacy_client_answers_the_same_question_on_its_stream(
    gateway: Gateway, mrtr_upstream: Upstream
) -> None:
    ns = add_connection(gateway, "r", mrtr_upstream.url)

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"quantity": 2})

    with anyio.fail_after(LIMIT):
        async with legacy_session(
            gateway.mcp_url(ns, "r"), gateway.admin_key, elicitation_callback=answer
        ) as s:
            done = await s.call_tool("reserve", {"title": "Emma"})
    assert text_of(done) == "Reserved 2 of 'Emma'."
