"""The fast lane obeys the SDK path's rules: credentials from one hook (401 -> refresh -> one retry)
and a per-upstream connection cap. Against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.upstream._http1 import Http1Pool
from proxy.upstream.credentials import Challenge, CredentialsAuth, StaticCredentials
from proxy.upstream.fastlane import FastLane, Unauthorized
from proxy.upstream.relay import SessionRelay

pytestmark = pytest.mark.anyio


class Upstream:
    """Accepts `Authorization: Bearer <token>`, answers tools/call after `delay` seconds."""

    def __init__(self, token: str, delay: float = 0.0):
        self.token = token
        self.delay = delay
        self.active = 0
        self.most_active = 0
        self.seen: list[str | None] = []

    async def mcp(self, request: Request) -> Response:
        self.seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Response("no", status_code=401)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            body = json.loads(await request.body())
            await anyio.sleep(self.delay)
            answer = {
                "jsonrpc": "2.0",
                "id": body["id"],
                "result": {"content": [{"type": "text", "text": "ok"}]},
            }
            return Response(json.dumps(answer), media_type="application/json")
        finally:
            self.active -= 1


class Rotating:
    """Credentials that are stale until refreshed once (as an OAuth token past its expiry)."""

    problem = None
    failure = None

    def __init__(self, fixes: bool = True):
        self.version = 0
        self.fixes = fixes
        self.refreshes = 0
        self.challenges: list[Challenge] = []

    def headers(self) -> Mapping[str, str]:
        return {"authorization": f"Bearer {'new' if self.version else 'old'}"}

    async def prepare(self) -> None:
        return None

    async def rejected(self, version: int, challenge: Challenge) -> bool:
        self.refreshes += 1
        self.challenges.append(challenge)
        if not self.fixes:
            return False
        if version == self.version:
            self.version += 1
        return True


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Upstream]]:
    upstream: Upstream = request.param
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/mcp", upstream.mcp, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        for _ in range(500):  # uvicorn offers no event for "listening": poll, bounded
            if server.started:
                break
            await anyio.sleep(0.01)
        assert server.started
        yield f"http://127.0.0.1:{port}/mcp", upstream
        server.should_exit = True


def lane(url: str, credentials: Any, max_connections: int = 100) -> FastLane:
    http = Http1Pool(url, {}, 5.0, None, allow_private=True, max_connections=max_connections)
    return FastLane(http, "2026-07-28", None, credentials, 1_000_000, SessionRelay(lambda v: v, lambda: 1))


def deadline() -> float:
    return asyncio.get_running_loop().time() + 10


@pytest.mark.parametrize("served", [Upstream("new")], indirect=True)
async def test_a_401_refreshes_the_credentials_and_retries_once(served: tuple[str, Upstream]) -> None:
    url, upstream = served
    credentials = Rotating()
    fast = lane(url, credentials)
    assert (await fast.call_tool("echo", {}, deadline()))["content"][0]["text"] == "ok"
    assert upstream.seen == ["Bearer old", "Bearer new"]
    assert credentials.refreshes == 1
    await fast.call_tool("echo", {}, deadline())  # the new head is kept: no second refresh
    assert credentials.refreshes == 1 and upstream.seen[-1] == "Bearer new"
    fast.http.close()


@pytest.mark.parametrize("served", [Upstream("never")], indirect=True)
async def test_credentials_that_cannot_be_fixed_are_refused_after_one_retry(
    served: tuple[str, Upstream],
) -> None:
    url, upstream = served
    fast = lane(url, Rotating(fixes=False))
    with pytest.raises(Unauthorized):
        await fast.call_tool("echo", {}, deadline())
    assert len(upstream.seen) == 1  # a refresh that says no: no pointless retry
    fixed_but_wrong = lane(url, Rotating())
    with pytest.raises(Unauthorized):
        await fixed_but_wrong.call_tool("echo", {}, deadline())
    assert len(upstream.seen) == 3  # one retry, never a loop
    fast.http.close()
    fixed_but_wrong.http.close()


@pytest.mark.parametrize("served", [Upstream("k", delay=0.2)], indirect=True)
async def test_the_connection_cap_holds_under_load(served: tuple[str, Upstream]) -> None:
    url, upstream = served
    fast = lane(url, StaticCredentials({"authorization": "Bearer k"}), max_connections=2)
    results: list[dict[str, Any]] = []

    async def one() -> None:
        results.append(await fast.call_tool("echo", {}, deadline()))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert len(results) == 6
    assert upstream.most_active == 2
    fast.http.close()


@pytest.mark.parametrize("served", [Upstream("new")], indirect=True)
async def test_the_sdk_path_uses_the_same_hook(served: tuple[str, Upstream]) -> None:
    url, upstream = served
    credentials = Rotating()
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}
    async with httpx2.AsyncClient(auth=CredentialsAuth(credentials)) as client:
        response = await client.post(url, json=body)
    assert response.status_code == 200
    assert upstream.seen == ["Bearer old", "Bearer new"]
