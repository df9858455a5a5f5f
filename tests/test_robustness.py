"""Slow, broken and cancelled upstreams never hurt anyone else; the endpoints promise only what
they deliver. Everything runs against real gateways and real upstream servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

from tests.conftest import Gateway, Upstream

_namespaces = iter(range(1, 1_000_000))
MODERN = "2026-07-28"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "robustness-test", "version": "1"},
    },
}


def new_namespace(client: httpx2.Client) -> str:
    ns = f"rb{next(_namespaces)}"
    assert client.put(f"/namespaces/{ns}").status_code in (200, 201)
    return ns


def put(client: httpx2.Client, ns: str, cid: str, url: str, **fields: Any) -> dict[str, Any]:
    response = client.put(f"/{ns}/{cid}", json={"mcpUrl": url, **fields})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An HTTP URL whose server accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


def tool_call(request_id: int | str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def legacy_session(client: httpx2.Client, path: str) -> dict[str, str]:
    """Headers of a fresh 2025-11-25 session on `path` (initialize + initialized)."""
    response = client.post(
        path,
        headers={"accept": "application/json, text/event-stream"},
        json={**INITIALIZE, "id": 0},
    )
    assert response.status_code == 200, response.text
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    client.post(path, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def sse_messages(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()
    ]


# --- 3: no upstream I/O under a namespace-wide lock -----------------------------------------------
def test_a_hanging_upstream_does_not_hold_up_other_writes_in_its_namespace(
    gateway: Gateway, blackhole: str, modern_upstream: Upstream
) -> None:
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
    results: dict[str, Any] = {}

    def slow_create() -> None:
        with gateway.client(timeout=30) as c:
            results["slow"] = put(c, ns, "hangs", blackhole, timeouts={"connect": 4})

    thread = threading.Thread(target=slow_create)
    thread.start()
    time.sleep(0.3)  # let the slow create reach its upstream connect first
    started = time.monotonic()
    with gateway.client(timeout=30) as client:
        fast = put(client, ns, "quick", modern_upstream.url)
        elapsed = time.monotonic() - started
        listing = client.get(f"/{ns}")
    thread.join(30)
    assert fast["status"] == {"state": "connected"}
    assert elapsed < 2.0, f"the second write waited {elapsed:.1f} s for the hanging upstream"
    assert listing.status_code == 200
    assert results["slow"]["status"]["state"] == "error"


def test_the_tool_catalog_follows_every_change_without_being_told(
    gateway: Gateway, modern_upstream: Upstream, dotted_upstream: Upstream
) -> None:
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "a", modern_upstream.url)
        listed = _mcp_list(client, ns)
        assert "a__echo" in listed
        put(client, ns, "b", dotted_upstream.url)
        assert "b__repo_get" in _mcp_list(client, ns)
        assert client.delete(f"/{ns}/a").status_code in (200, 204)
        after = _mcp_list(client, ns)
        assert "a__echo" not in after and "b__repo_get" in after


def _mcp_list(client: httpx2.Client, ns: str) -> set[str]:
    headers = legacy_session(client, f"/mcp/{ns}")
    response = client.post(
        f"/mcp/{ns}", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    )
    assert response.status_code == 200, response.text
    return {t["name"] for t in response.json()["result"]["tools"]}


# --- 7: cancellation ------------------------------------------------------------------------------
def _cancellations(client: httpx2.Client, ns: str) -> list[float]:
    response = client.post(f"/{ns}/s/.tools/cancellations", json={})
    assert response.status_code == 200, response.text
    return [float(x) for x in json.loads(response.json()["content"][0]["text"])]


def _wait_for(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_caller_who_disconnects_cancels_the_upstream_request(
    gateway: Gateway, start_upstream: Callable[..., Upstream]
) -> None:
    upstream = start_upstream("slow")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "s", upstream.url)
        headers = legacy_session(client, f"/mcp/{ns}")
        call = tool_call(7, "s__sleep", {"seconds": 21})
        with pytest.raises(httpx2.ReadTimeout), gateway.client(timeout=1.0) as impatient:
            impatient.post(
                f"/mcp/{ns}", headers={**headers, "authorization": client.headers["authorization"]}, json=call
            )
        assert _wait_for(lambda: 21.0 in _cancellations(client, ns), 5), "the upstream kept working"


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_notifications_cancelled_and_disconnects_reach_the_upstream(
    gateway: Gateway, start_upstream: Callable[..., Upstream], era: str
) -> None:
    upstream = start_upstream("slow")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "s", upstream.url)
        if era == "legacy":
            headers = legacy_session(client, f"/mcp/{ns}")
            answer: dict[str, Any] = {}

            def call() -> None:
                with gateway.client(timeout=30) as c:
                    answer["response"] = c.post(
                        f"/mcp/{ns}",
                        headers=headers,
                        json=tool_call("c1", "s__sleep", {"seconds": 22}),
                    )

            thread = threading.Thread(target=call)
            thread.start()
            time.sleep(0.5)
            cancel = client.post(
                f"/mcp/{ns}",
                headers=headers,
                json={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c1"}},
            )
            assert cancel.status_code == 202
            thread.join(10)
            assert not thread.is_alive(), "the cancelled call is still waiting"
            assert _wait_for(lambda: 22.0 in _cancellations(client, ns), 5)
        else:
            meta = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
            modern = {
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": MODERN,
                "mcp-method": "tools/call",
                "mcp-name": "s__sleep",
            }
            call = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "s__sleep", "arguments": {"seconds": 23}, "_meta": meta},
            }
            with pytest.raises(httpx2.ReadTimeout), gateway.client(timeout=1.0) as impatient:
                impatient.post(f"/mcp/{ns}", headers=modern, json=call)
            assert _wait_for(lambda: 23.0 in _cancellations(client, ns), 5)


# --- 8: isolation -----------------------------------------------------------------------------------
def test_a_broken_upstream_costs_only_the_first_listing_its_deadline(
    start_gateway: Callable[..., Gateway], modern_upstream: Upstream, blackhole: str
) -> None:
    gateway = start_gateway(JUNCTION_FANOUT_TIMEOUT="1.5", JUNCTION_LISTING_FAILURE_TTL="30")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "ok", modern_upstream.url)
        put(client, ns, "hangs", blackhole, timeouts={"connect": 20, "list": 20})
        times = []
        for _ in range(4):
            started = time.monotonic()
            names = _mcp_list(client, ns)
            times.append(time.monotonic() - started)
            assert "ok__echo" in names
        assert times[0] >= 1.4, times  # the first waits for the fan-out deadline
        assert max(times[1:]) < 1.0, f"later listings still wait for the broken upstream: {times}"


def test_changing_headers_does_not_break_calls_in_flight(gateway: Gateway, modern_upstream: Upstream) -> None:
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "m", modern_upstream.url, headers={"x-version": "one"})
        answer: dict[str, Any] = {}

        def slow_call() -> None:
            with gateway.client(timeout=30) as c:
                answer["response"] = c.post(f"/{ns}/m/.tools/sleep", json={"seconds": 1.5})

        thread = threading.Thread(target=slow_call)
        thread.start()
        time.sleep(0.4)
        put(client, ns, "m", modern_upstream.url, headers={"x-version": "two"})
        seen = client.post(f"/{ns}/m/.tools/headers", json={"name": "x-version"}).json()
        thread.join(10)
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "slept"
    assert seen["content"][0]["text"] == "two"


def test_results_over_the_size_cap_are_a_clear_error(
    start_gateway: Callable[..., Gateway], modern_upstream: Upstream
) -> None:
    gateway = start_gateway(JUNCTION_MAX_RESULT_BYTES="100000")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "m", modern_upstream.url)
        small = client.post(f"/{ns}/m/.tools/blob", json={"size": 1000})
        big = client.post(f"/{ns}/m/.tools/blob", json={"size": 200_000})
        again = client.post(f"/{ns}/m/.tools/blob", json={"size": 1000})
    assert small.status_code == 200 and len(small.json()["content"][0]["text"]) == 1000
    assert big.status_code >= 400 and "100000 bytes" in big.json()["message"], big.text
    assert again.status_code == 200, "the session survives a refused result"


# --- 9 and 10: honest capabilities, pagination ------------------------------------------------------
def test_the_passthrough_advertises_what_it_serves(
    gateway: Gateway, start_everything: Callable[..., Upstream]
) -> None:
    """A client that initializes gets the upstream's own session, so everything the upstream
    offers (subscriptions, list changes) is served; one that does not is answered statelessly and
    is offered nothing it would need a session for."""
    everything = start_everything("streamableHttp")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "ev", everything.url)
        init = client.post(
            f"/mcp/{ns}/ev",
            headers={"accept": "application/json, text/event-stream"},
            json={**INITIALIZE, "id": 1},
        )
        session = init.headers["mcp-session-id"]
        caps = sse_messages(init.text)[0]["result"]["capabilities"]
        assert caps["resources"]["subscribe"] is True, caps
        assert "mcp-session-id" in init.headers
        headers = {"accept": "application/json, text/event-stream", "mcp-session-id": session}
        subscribe = client.post(
            f"/mcp/{ns}/ev",
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 3,
                "method": "resources/subscribe",
                "params": {"uri": "demo://resource/static/document/architecture.md"},
            },
        )
        body = (
            sse_messages(subscribe.text)[-1]
            if subscribe.text.startswith(("event", "id"))
            else subscribe.json()
        )
        assert body.get("result") == {}, body
        stateless = client.post(
            f"/mcp/{ns}/ev", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        ).json()["result"]
        assert not {"resultType", "ttlMs", "cacheScope"} & set(stateless)
        refused = client.post(
            f"/mcp/{ns}/ev",
            json={"jsonrpc": "2.0", "id": 4, "method": "resources/subscribe", "params": {"uri": "demo://x"}},
        ).json()
        assert refused["error"]["code"] == -32601


def test_the_passthrough_checks_2026_requests_like_the_namespace_endpoint(
    gateway: Gateway, modern_upstream: Upstream
) -> None:
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "m", modern_upstream.url)
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}, "_meta": meta},
        }
        good = {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "echo"}
        for path in (f"/mcp/{ns}/m", f"/mcp/{ns}"):
            name = "echo" if path.endswith("/m") else "m__echo"
            body = {**call, "params": {**call["params"], "name": name}}
            ok = client.post(
                path,
                headers={**good, "mcp-name": name, "accept": "application/json, text/event-stream"},
                json=body,
            )
            assert ok.status_code == 200 and ok.json()["result"]["content"][0]["text"] == "x", ok.text
            mismatch = client.post(
                path,
                headers={**good, "mcp-name": "other", "accept": "application/json, text/event-stream"},
                json=body,
            )
            assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020, (
                path,
                mismatch.text,
            )
            no_meta = {**body, "params": {"name": name, "arguments": {"text": "x"}}}
            missing = client.post(
                path,
                headers={**good, "mcp-name": name, "accept": "application/json, text/event-stream"},
                json=no_meta,
            )
            assert missing.status_code == 400, (path, missing.text)


def test_upstream_pages_are_walked_to_the_end_and_bad_cursors_refused(
    gateway: Gateway, paged_upstream: Upstream
) -> None:
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "p", paged_upstream.url)
        names = _mcp_list(client, ns)
        assert {f"p__t{i:02d}" for i in range(25)} <= names
        headers = legacy_session(client, f"/mcp/{ns}")
        bad = client.post(
            f"/mcp/{ns}",
            headers=headers,
            json={"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"cursor": "nope"}},
        ).json()
        assert bad["error"]["code"] == -32602


def test_a_tool_page_limit_is_reported_in_the_status(
    start_gateway: Callable[..., Gateway], paged_upstream: Upstream
) -> None:
    gateway = start_gateway(JUNCTION_MAX_TOOL_PAGES="2")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "p", paged_upstream.url)
        tools = client.get(f"/{ns}/p/.tools").json()["tools"]
        assert len(tools) == 20
        status = client.get(f"/{ns}/p").json()["status"]
        assert "max_tool_pages" in status.get("message", ""), status


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_progress_reaches_the_caller_through_the_passthrough(
    gateway: Gateway, everything_upstream: Upstream, mode: str
) -> None:
    import anyio
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "ev", everything_upstream.url)
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async def main() -> str:
        headers = {"Authorization": f"Bearer {gateway.admin_key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            with anyio.fail_after(30):
                transport = streamable_http_client(gateway.mcp_url(ns, "ev"), http_client=http)
                async with Client(transport, mode=mode) as mcp_client:
                    result = await mcp_client.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 0.3, "steps": 3},
                        progress_callback=on_progress,
                    )
                    return str(result.content[0].text)  # type: ignore[union-attr]

    assert "completed" in anyio.run(main)
    assert seen == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]


def test_legacy_sessions_are_capped(start_gateway: Callable[..., Gateway], modern_upstream: Upstream) -> None:
    gateway = start_gateway(JUNCTION_MAX_LEGACY_SESSIONS="2")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "m", modern_upstream.url)
        legacy_session(client, f"/mcp/{ns}")
        legacy_session(client, f"/mcp/{ns}")
        third = client.post(
            f"/mcp/{ns}",
            headers={"accept": "application/json, text/event-stream"},
            json={**INITIALIZE, "id": 0},
        )
        assert third.status_code == 503 and "error" in third.json(), third.text
        assert client.post(f"/{ns}/m/.tools/echo", json={"text": "still"}).status_code == 200


@pytest.mark.parametrize("kind", ["everything", "tools-only"])
def test_the_namespace_endpoint_advertises_what_its_connections_offer(
    gateway: Gateway, everything_upstream: Upstream, modern_upstream: Upstream, kind: str
) -> None:
    """Resources, prompts, completions and logging are offered only when a connection of the
    namespace offers them; list changes and subscriptions are served by the gateway itself."""
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        upstream = everything_upstream if kind == "everything" else modern_upstream
        put(client, ns, "ev", upstream.url)
        init = client.post(
            f"/mcp/{ns}",
            headers={"accept": "application/json, text/event-stream"},
            json={**INITIALIZE, "id": 1},
        )
        result = (
            sse_messages(init.text)[0]["result"] if init.text.startswith("event") else init.json()["result"]
        )
        assert not {"resultType", "ttlMs", "cacheScope"} & set(result)
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        discover = client.post(
            f"/mcp/{ns}",
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": MODERN,
                "mcp-method": "server/discover",
            },
            json={"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {"_meta": meta}},
        ).json()["result"]
    for caps in (result["capabilities"], discover["capabilities"]):
        if kind == "everything":
            assert caps["tools"] == {"listChanged": True}, caps
            assert caps["resources"] == {"listChanged": True, "subscribe": True}, caps
            assert caps["prompts"] == {"listChanged": True}, caps
            assert "completions" in caps and "logging" in caps, caps
        else:
            assert caps == {"tools": {"listChanged": True}}, caps


def _open_sockets(gateway: Gateway) -> int:
    proc = gateway._process.proc  # noqa: SLF001 - the test harness's own child
    assert proc is not None
    fds = os.listdir(f"/proc/{proc.pid}/fd")
    return sum(1 for fd in fds if os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("socket:"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_cancelled_calls_leave_no_socket_behind(
    gateway: Gateway, start_upstream: Callable[..., Upstream]
) -> None:
    upstream = start_upstream("slow")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "s", upstream.url)
        headers = legacy_session(client, f"/mcp/{ns}")
        client.post(f"/{ns}/s/.tools/echo", json={"text": "warm"})  # the fast lane's first socket
        before = _open_sockets(gateway)
        for i in range(12):
            call = tool_call(100 + i, "s__sleep", {"seconds": 30 + i})
            with pytest.raises(httpx2.ReadTimeout), gateway.client(timeout=0.3) as impatient:
                auth = {"authorization": client.headers["authorization"]}
                impatient.post(f"/mcp/{ns}", headers={**headers, **auth}, json=call)
        assert _wait_for(lambda: len(_cancellations(client, ns)) >= 12, 10), _cancellations(client, ns)
        assert _wait_for(lambda: _open_sockets(gateway) <= before + 2, 10), (before, _open_sockets(gateway))


def test_a_long_call_keeps_its_response_alive(
    start_gateway: Callable[..., Gateway], start_upstream: Callable[..., Upstream]
) -> None:
    gateway = start_gateway(JUNCTION_STREAM_KEEPALIVE="0.3")
    upstream = start_upstream("slow")
    with gateway.client(timeout=30) as client:
        ns = new_namespace(client)
        put(client, ns, "s", upstream.url)
        headers = legacy_session(client, f"/mcp/{ns}")
        call = tool_call(9, "s__sleep", {"seconds": 1.2})
        long = client.post(f"/mcp/{ns}", headers=headers, json=call)
        short = client.post(
            f"/mcp/{ns}",
            headers=headers,
            json={**call, "id": 10, "params": {"name": "s__echo", "arguments": {"text": "quick"}}},
        )
    assert long.status_code == 200 and long.headers["content-type"].startswith("text/event-stream")
    assert long.text.count(": keep-alive") >= 2, long.text
    assert sse_messages(long.text)[-1]["result"]["content"][0]["text"] == "slept"
    assert short.headers["content-type"] == "application/json"  # a quick answer stays plain JSON
