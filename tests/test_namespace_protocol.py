"""The whole protocol through `/mcp/{ns}`: resources, prompts, completions, change
notifications, and an upstream's requests (sampling, elicitation, roots) relayed to the client
whose call caused them.

The upstreams are real: the MCP project's ``server-everything`` (TypeScript SDK, 2025 era) and
SDK-built servers from ``tests/upstreams/server.py``. The clients are the SDK's, in both eras.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from conftest import Gateway, Upstream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from proxy.gateway import uris

pytestmark = pytest.mark.anyio
LIMIT = 20.0  # seconds for any one exchange: a hang fails the test instead of stalling the run
_namespaces = iter(range(1, 1_000_000))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    shared = Gateway(tmp_path_factory.mktemp("namespace-protocol")).start(attempts=3)
    yield shared
    shared.stop()


def namespace_with(gateway: Gateway, connections: dict[str, str]) -> str:
    ns = f"np{next(_namespaces)}"
    with gateway.client() as client:
        assert client.put(f"/namespaces/{ns}").status_code in (200, 201)
        for cid, url in connections.items():
            response = client.put(f"/{ns}/{cid}", json={"mcpUrl": url})
            assert response.status_code in (200, 201), response.text
    return ns


@asynccontextmanager
async def client_of(
    gateway: Gateway, ns: str, mode: str = "legacy", **callbacks: Any
) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {gateway.admin_key}"}, timeout=httpx2.Timeout(LIMIT, read=60)
    )
    async with (
        http,
        Client(streamable_http_client(gateway.mcp_url(ns), http_client=http), mode=mode, **callbacks) as c,
    ):
        yield c


async def test_resources_prompts_and_completion_of_every_connection(
    gw: Gateway, everything_upstream: Upstream
) -> None:
    ns = namespace_with(gw, {"ev": everything_upstream.url, "ev2": everything_upstream.url})
    with anyio.fail_after(LIMIT * 3):
        async with client_of(gw, ns) as client:
            caps = client.server_capabilities
            assert caps is not None and caps.resources is not None and caps.prompts is not None
            assert caps.completions is not None
            resources = (await client.list_resources()).resources
            by_connection = {uris.resolve(r.uri)[0] for r in resources}  # type: ignore[index]
            assert by_connection == {"ev", "ev2"}
            first = next(r for r in resources if r.uri.startswith("demo://ev.") or "://ev." in r.uri)
            read = await client.read_resource(first.uri)
            assert read.contents and read.contents[0].uri == first.uri  # exposed URIs come back
            templates = (await client.list_resource_templates()).resource_templates
            assert templates and all("://ev" in t.uri_template for t in templates)

            prompts = (await client.list_prompts()).prompts
            names = {p.name for p in prompts}
            assert "ev__simple-prompt" in names and "ev2__simple-prompt" in names, names
            got = await client.get_prompt("ev2__simple-prompt")
            assert got.messages
            args_prompt = next(p for p in prompts if p.name == "ev__args-prompt")
            assert args_prompt.arguments
            completion = await client.complete(
                types.PromptReference(type="ref/prompt", name="ev__completable-prompt"),
                {"name": "department", "value": "E"},
            )
            assert completion.completion.values, completion


async def test_sampling_and_elicitation_reach_the_calling_client(
    gw: Gateway, everything_upstream: Upstream
) -> None:
    ns = namespace_with(gw, {"ev": everything_upstream.url})
    seen: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="SAMPLED-42"), model="test-model"
        )

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        seen.append("elicitation")
        return types.ElicitResult(action="accept", content={"color": "teal"})

    with anyio.fail_after(LIMIT * 3):
        async with client_of(gw, ns, sampling_callback=sampling, elicitation_callback=elicitation) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            # server-everything offers these only to a client that declared the capability.
            assert {"ev__trigger-sampling-request", "ev__trigger-elicitation-request"} <= tools, tools
            sampled = await client.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
            assert "SAMPLED-42" in json.dumps(sampled.model_dump(mode="json")), sampled
            elicited = await client.call_tool("ev__trigger-elicitation-request", {})
            assert "teal" in json.dumps(elicited.model_dump(mode="json")), elicited
    assert seen == ["sampling", "elicitation"]


async def test_three_concurrent_clients_each_answer_their_own_elicitation(
    gw: Gateway, everything_upstream: Upstream
) -> None:
    ns = namespace_with(gw, {"ev": everything_upstream.url})
    results: dict[str, str] = {}
    asked: dict[str, int] = {}

    async def one(name: str) -> None:
        async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            asked[name] = asked.get(name, 0) + 1
            await anyio.sleep(0.05)  # overlap the three round trips
            return types.ElicitResult(action="accept", content={"color": f"ANSWER-{name}"})

        async with client_of(gw, ns, elicitation_callback=elicitation) as client:
            result = await client.call_tool("ev__trigger-elicitation-request", {})
            results[name] = json.dumps(result.model_dump(mode="json"))

    with anyio.fail_after(LIMIT * 3):
        async with anyio.create_task_group() as tg:
            for name in "ABC":
                tg.start_soon(one, name)
    assert asked == {"A": 1, "B": 1, "C": 1}
    for name in "ABC":
        assert f"ANSWER-{name}" in results[name]
        assert all(f"ANSWER-{other}" not in results[name] for other in "ABC" if other != name)


async def test_a_client_without_the_capability_is_not_asked(
    gw: Gateway, everything_upstream: Upstream
) -> None:
    ns = namespace_with(gw, {"ev": everything_upstream.url})
    with anyio.fail_after(LIMIT * 2):
        async with client_of(gw, ns) as client:
            result = await client.call_tool("ev__trigger-sampling-request", {"prompt": "hi"})
            text = json.dumps(result.model_dump(mode="json"))
            assert result.is_error or "sampling" in text.lower(), text


async def test_list_changes_reach_legacy_and_modern_clients(
    gw: Gateway, everything_upstream: Upstream, modern_upstream: Upstream
) -> None:
    ns = namespace_with(gw, {"ev": everything_upstream.url})
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    with anyio.fail_after(LIMIT * 2):
        async with client_of(gw, ns, message_handler=on_message) as client:
            await client.list_tools()
            with gw.client() as rest:
                assert rest.put(f"/{ns}/more", json={"mcpUrl": modern_upstream.url}).status_code in (200, 201)
            await changed.wait()
            names = {t.name for t in (await client.list_tools()).tools}
            assert any(n.startswith("more__") for n in names)


async def test_a_2026_client_answers_through_input_required_results(
    gw: Gateway, everything_upstream: Upstream
) -> None:
    """A 2026-07-28 client has no back-channel: the question of a 2025 upstream comes back as an
    `input_required` result, the SDK client answers and retries, and the held call finishes."""
    ns = namespace_with(gw, {"ev": everything_upstream.url})
    asked: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="MODERN-SAMPLE"), model="m"
        )

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"color": "MODERN-ANSWER"})

    with anyio.fail_after(LIMIT * 3):
        async with client_of(
            gw, ns, mode="2026-07-28", sampling_callback=sampling, elicitation_callback=elicitation
        ) as client:
            assert client.protocol_version == "2026-07-28"
            elicited = await client.call_tool("ev__trigger-elicitation-request", {})
            assert "MODERN-ANSWER" in json.dumps(elicited.model_dump(mode="json")), elicited
            sampled = await client.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
            assert "MODERN-SAMPLE" in json.dumps(sampled.model_dump(mode="json")), sampled
    assert asked == ["elicitation", "sampling"]


async def test_a_forged_or_foreign_request_state_is_refused(
    gw: Gateway, everything_upstream: Upstream
) -> None:
    ns = namespace_with(gw, {"ev": everything_upstream.url})
    headers = {
        "Authorization": f"Bearer {gw.admin_key}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "ev__trigger-elicitation-request",
    }
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "ev__trigger-elicitation-request", "arguments": {}, "_meta": meta},
    }
    with httpx2.Client(timeout=LIMIT) as http:
        first = http.post(gw.mcp_url(ns), json=body, headers=headers)
        assert first.status_code == 200, first.text
        result = first.json()["result"]
        assert result["resultType"] == "input_required"
        (key,) = result["inputRequests"]
        assert result["inputRequests"][key]["method"] == "elicitation/create"
        state = result["requestState"]
        answer = {"action": "accept", "content": {"color": "RAW"}}
        forged = {
            **body,
            "id": 2,
            "params": {
                **body["params"],
                "requestState": state[:-4] + "AAAA",
                "inputResponses": {key: answer},
            },
        }
        refused = http.post(gw.mcp_url(ns), json=forged, headers=headers).json()
        assert refused["error"]["code"] == -32602, refused
        other = {**forged, "params": {**forged["params"], "name": "ev__echo", "requestState": state}}
        refused = http.post(gw.mcp_url(ns), json=other, headers={**headers, "mcp-name": "ev__echo"}).json()
        assert refused["error"]["code"] == -32602, refused  # bound to the tool it was issued for
        good = {**forged, "params": {**forged["params"], "requestState": state}}
        done = http.post(gw.mcp_url(ns), json=good, headers=headers)
        assert "RAW" in done.text, done.text


@pytest.mark.parametrize("upstream_mode", ["legacy", "modern"])
async def test_an_upstreams_new_tool_is_announced_to_both_eras(
    gw: Gateway, start_upstream: Any, upstream_mode: str
) -> None:
    """An upstream announces a new tool (on its session stream, or on its subscriptions/listen
    stream when it speaks 2026-07-28); a legacy client hears it on its GET stream, a 2026-07-28
    client on its own subscriptions/listen stream, and both then list the new tool."""
    upstream = start_upstream("changing_legacy" if upstream_mode == "legacy" else "changing")
    ns = namespace_with(gw, {"ch": upstream.url})
    legacy_heard = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            legacy_heard.set()

    with anyio.fail_after(LIMIT * 2):
        async with (
            client_of(gw, ns, message_handler=on_message) as legacy,
            client_of(gw, ns, mode="2026-07-28") as modern,
        ):
            assert {t.name for t in (await legacy.list_tools()).tools} == {"ch__echo", "ch__grow", "ch__log"}
            async with modern.listen(tools_list_changed=True) as feed:
                grown = await legacy.call_tool("ch__grow", {})
                new_tool = "ch__" + grown.content[0].text  # type: ignore[union-attr]
                await legacy_heard.wait()
                async for _event in feed:
                    break
            assert new_tool in {t.name for t in (await modern.list_tools()).tools}
            assert new_tool in {t.name for t in (await legacy.list_tools()).tools}


@pytest.mark.parametrize("asks", [False, True], ids=["fast-path", "sdk-path"])
async def test_an_upstreams_log_message_reaches_the_caller_at_its_level(
    gw: Gateway, start_upstream: Any, asks: bool
) -> None:
    upstream = start_upstream("changing_legacy")
    ns = namespace_with(gw, {"ch": upstream.url})
    heard: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        heard.append(str(params.data))

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    extra = {"elicitation_callback": elicitation} if asks else {}
    with anyio.fail_after(LIMIT * 2):
        async with client_of(gw, ns, logging_callback=on_log, **extra) as client:
            result = await client.call_tool("ch__log", {"text": "first"})
            assert not result.is_error, result
            await client.session.set_logging_level("error")  # warnings are below it now
            await client.call_tool("ch__log", {"text": "second"})
    assert heard == ["first"]


async def test_a_subscribed_resource_update_reaches_the_subscriber(
    gw: Gateway, start_everything: Any
) -> None:
    """server-everything sends `resources/updated` for subscribed URIs every 5 s once toggled on;
    the subscriber hears it under the exposed URI, a client that did not subscribe does not."""
    everything = start_everything("streamableHttp")
    ns = namespace_with(gw, {"ev": everything.url})
    updates: list[str] = []
    others: list[str] = []
    updated = anyio.Event()

    async def subscriber(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(message.params.uri)
            updated.set()

    async def bystander(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            others.append(message.params.uri)

    with anyio.fail_after(LIMIT * 2):
        async with (
            client_of(gw, ns, message_handler=subscriber) as client,
            client_of(gw, ns, message_handler=bystander) as other,
        ):
            resources = (await client.list_resources()).resources
            uri = resources[0].uri
            await client.session.subscribe_resource(uri)
            await other.list_resources()
            await client.call_tool("ev__toggle-subscriber-updates", {})
            await updated.wait()
            await client.session.unsubscribe_resource(uri)
            await client.call_tool("ev__toggle-subscriber-updates", {})
    assert updates and set(updates) == {uri}
    assert others == []


async def test_an_mcp_app_is_shown_and_served_through_the_namespace(
    gw: Gateway, apps_upstream: Upstream
) -> None:
    """A tool's `_meta.ui.resourceUri` points at its `ui://` resource as the namespace names it,
    that resource reads through the gateway, the app's own bare tool name still calls the tool,
    and the extension capability is passed through."""
    ns = namespace_with(gw, {"wx": apps_upstream.url})
    with anyio.fail_after(LIMIT * 2):
        async with client_of(gw, ns) as client:
            caps = client.server_capabilities
            assert caps is not None and caps.extensions and "io.modelcontextprotocol/ui" in caps.extensions
            (tool,) = [t for t in (await client.list_tools()).tools if t.name == "wx__weather"]
            assert tool.meta is not None
            ui_uri = tool.meta["ui"]["resourceUri"]
            assert ui_uri == "ui://wx.weather/app.html"
            html = await client.read_resource(ui_uri)
            assert "<title>Weather</title>" in html.contents[0].text  # type: ignore[union-attr]
            assert "mcp-app" in (html.contents[0].mime_type or "")
            bare = await client.call_tool("weather", {"city": "Oslo"})  # what the app's HTML calls
            assert "sunny in Oslo" in bare.content[0].text  # type: ignore[union-attr]


async def test_requests_on_a_shared_stream_reach_only_the_caller_in_flight(
    gw: Gateway, start_everything: Any
) -> None:
    """Over HTTP+SSE every upstream request arrives on one stream, whoever caused it. The client
    whose call reopened the upstream session is not asked for later callers' requests: a request
    reaches the one interactive call in flight, and nobody when two could have caused it."""
    everything = start_everything("sse")
    ns = namespace_with(gw, {"ev": everything.url})
    asked: list[str] = []

    def answering(name: str) -> Any:
        async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            asked.append(name)
            return types.ElicitResult(action="accept", content={"color": f"ANSWER-{name}"})

        return elicitation

    with anyio.fail_after(LIMIT * 3):
        async with client_of(gw, ns, elicitation_callback=answering("A")) as a:
            first = await a.call_tool("ev__trigger-elicitation-request", {})
            assert "ANSWER-A" in json.dumps(first.model_dump(mode="json"))
            everything.restart()  # A's next call opens the upstream session again
            again = await a.call_tool("ev__trigger-elicitation-request", {})
            assert "ANSWER-A" in json.dumps(again.model_dump(mode="json"))
            async with client_of(gw, ns, elicitation_callback=answering("B")) as b:
                second = await b.call_tool("ev__trigger-elicitation-request", {})
    text = json.dumps(second.model_dump(mode="json"))
    assert "ANSWER-B" in text and "ANSWER-A" not in text, text
    assert asked == ["A", "A", "B"]


def _token(gateway: Gateway, policy: list[dict[str, Any]]) -> str:
    with gateway.client() as client:
        minted = client.post("/tokens", json={"policy": policy})
        assert minted.status_code == 200, minted.text
        return str(minted.json()["token"])


@asynccontextmanager
async def client_with(gateway: Gateway, ns: str, token: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(LIMIT, read=60)
    )
    async with (
        http,
        Client(streamable_http_client(gateway.mcp_url(ns), http_client=http), mode="legacy") as c,
    ):
        yield c


async def test_a_scoped_token_sees_and_uses_only_its_connections_resources_and_prompts(
    gw: Gateway, everything_upstream: Upstream
) -> None:
    """A token scoped to `metadata.team = a` lists, reads and gets only team a's resources and
    prompts; team b's exposed URIs and prompt names are "not found" for it. A token that may only
    list team b (execute only on team a) may not read team b's resource by its bare URI either."""
    ns = f"np{next(_namespaces)}"
    with gw.client() as client:
        assert client.put(f"/namespaces/{ns}").status_code in (200, 201)
        for cid, team in (("mine", "a"), ("theirs", "b")):
            body = {"mcpUrl": everything_upstream.url, "metadata": {"team": team}}
            assert client.put(f"/{ns}/{cid}", json=body).status_code in (200, 201)
    scoped = _token(gw, [{"namespaces": ns, "metadata": {"team": "a"}}])
    with anyio.fail_after(LIMIT * 2):
        async with client_with(gw, ns, scoped) as client:
            uris_seen = {r.uri for r in (await client.list_resources()).resources}
            assert uris_seen and all("://mine." in u for u in uris_seen), uris_seen
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            assert prompts and all(p.startswith("mine__") for p in prompts), prompts
            theirs = next(iter(uris_seen)).replace("://mine.", "://theirs.")
            with pytest.raises(Exception, match="not found"):
                await client.read_resource(theirs)
            with pytest.raises(Exception, match="not found"):
                await client.get_prompt("theirs__simple-prompt")
            assert (await client.read_resource(next(iter(uris_seen)))).contents
    split = _token(
        gw,
        [
            {"namespaces": ns, "operations": ["execute"], "metadata": {"team": "a"}},
            {"namespaces": ns, "operations": ["read"], "metadata": {"team": "b"}},
        ],
    )
    with gw.client() as client:
        assert client.delete(f"/{ns}/mine").status_code in (200, 204)
    with anyio.fail_after(LIMIT * 2):
        async with client_with(gw, ns, split) as client:
            bare = "demo://resource/static/document/architecture.md"
            with pytest.raises(Exception, match="not found|does not allow"):
                await client.read_resource(bare)
