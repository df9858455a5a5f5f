"""Two clients nobody here wrote, given only a namespace URL (no header, no token), log in through
the gateway's own authorization server and then list and call that namespace's tools:
`mcp-remote` (the stdio bridge desktop agents use) and the MCP Inspector's CLI.

Each finds the server wants a login (401 and `WWW-Authenticate`), reads the protected resource and
authorization server metadata, registers itself (RFC 7591), and hands an authorization URL to the
browser while it listens for the redirect on a loopback port. The test is the person: it signs in
with a key and allows (tests/_oauth.py), then delivers the redirect to the client's listener the way
the browser would. The gateway logs every request it answers, so the tests check the flow from its
side, and its grant list shows whom it gave a token to.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from _node import FENCE, Run, ensure_inspector, ensure_mcp_remote
from _oauth import Person, query
from conftest import Gateway, Upstream, free_port
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

pytestmark = pytest.mark.timeout(420)  # the first run installs mcp-remote, Node 22 and the Inspector

LIMIT = 90.0  # seconds for one client to log in and answer
INSPECTOR = "@modelcontextprotocol/inspector"
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    """A gateway that logs each request it answers: what crossed the wire, from its side."""
    return start_gateway(JUNCTION_ACCESS_LOG="1", JUNCTION_LOG_LEVEL="info")


@pytest.fixture
def namespace(gateway: Gateway, modern_upstream: Upstream) -> str:
    with gateway.client() as admin:
        assert admin.put("/namespaces/team").status_code in (200, 201)
        assert admin.put("/team/main", json={"mcpUrl": modern_upstream.url}).status_code == 201
    return "team"


# --- the person and the browser ----------------------------------------------------------------
class Browser:
    """The browser a client opens: `$BROWSER`, reached through xdg-open, records each URL it is
    given and shows nothing. The environment makes xdg-open use `$BROWSER` (a generic desktop with
    no display), so no real browser opens on a developer's machine either."""

    def __init__(self, root: Path):
        self.log = root / "browser-opened.txt"
        self.script = root / "browser.sh"
        self.script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{self.log}"\n')
        self.script.chmod(0o755)

    @property
    def env(self) -> dict[str, str]:
        return {
            "BROWSER": str(self.script),
            "XDG_CURRENT_DESKTOP": "X-Generic",
            "DISPLAY": "",
            "WAYLAND_DISPLAY": "",
        }

    def opened(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def wait_for(
    what: str, found: Callable[[], str | None], running: Callable[[], bool], story: Callable[[], str]
) -> str:
    """Poll `found` until it answers, the client stops, or LIMIT seconds pass."""
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        value = found()
        if value is not None:
            return value
        if not running():
            pytest.fail(f"the client stopped before {what}\n{story()}")
        time.sleep(0.05)
    pytest.fail(f"no {what} within {LIMIT:.0f}s\n{story()}")


@dataclass
class Visit:
    """What the person did in the browser."""

    authorize_url: str
    redirect: str  # where the gateway sent the browser: the client's callback with the code
    callback: httpx2.Response  # what the client's listener answered

    @property
    def params(self) -> dict[str, str]:
        return query(self.authorize_url)


def visit(gateway: Gateway, authorize_url: str) -> Visit:
    """Sign in with the admin key, allow, and follow the redirect to the client's listener."""
    person = Person(gateway.url)
    try:
        redirect = person.authorize(authorize_url, gateway.admin_key)
    finally:
        person.close()
    with httpx2.Client(timeout=30.0, trust_env=False) as browser:
        callback = browser.get(redirect)
    return Visit(authorize_url, redirect, callback)


# --- the gateway's side of the wire ------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    method: str
    path: str  # without the query
    status: int

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


def wire(gateway: Gateway) -> list[Hit]:
    """The requests the gateway answered, in order, from its access log (health checks left out)."""
    hits = [Hit(m[1], urlsplit(m[2]).path, int(m[3])) for m in _ACCESS.finditer(gateway.logs())]
    return [hit for hit in hits if hit.path != "/health"]


def answered(gateway: Gateway) -> str:
    return "the gateway answered:\n" + "\n".join(f"  {hit}" for hit in wire(gateway))


def login_flow(ns: str) -> list[tuple[str | None, str, int]]:
    """The gateway's view of a login from nothing but the namespace URL, in order."""
    return [
        (None, f"/mcp/{ns}", 401),  # GET or POST, by client
        ("GET", f"/.well-known/oauth-protected-resource/mcp/{ns}", 200),
        ("GET", "/.well-known/oauth-authorization-server", 200),
        ("POST", "/register", 201),
        ("GET", "/authorize", 200),  # the person's browser from here
        ("POST", "/authorize/login", 200),
        ("POST", "/authorize/consent", 303),
        ("POST", "/token", 200),  # the client again: code for tokens
        ("POST", f"/mcp/{ns}", 200),
    ]


def assert_in_order(hits: list[Hit], expected: list[tuple[str | None, str, int]]) -> None:
    remaining = iter(hits)
    for method, path, status in expected:
        want = f"{method or '*'} {path} -> {status}"
        if not any(
            (method is None or hit.method == method) and hit.path == path and hit.status == status
            for hit in remaining
        ):
            seen = "\n".join(f"  {hit}" for hit in hits)
            pytest.fail(f"the gateway never answered {want} in the expected order; it answered:\n{seen}")


def assert_nothing_failed(hits: list[Hit], ns: str) -> None:
    """Only the MCP endpoint's 401s (the login prompt) may be errors."""
    failed = [hit for hit in hits if hit.status >= 400 and (hit.path, hit.status) != (f"/mcp/{ns}", 401)]
    assert not failed, "the gateway refused:\n" + "\n".join(f"  {hit}" for hit in hits)


def grants(gateway: Gateway) -> list[dict[str, Any]]:
    with gateway.client() as admin:
        answer = admin.get("/oauth/grants")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["grants"])


def assert_one_grant(gateway: Gateway, seen: Visit, url: str, ns: str) -> dict[str, Any]:
    """The gateway gave a token to this client, once, for this namespace and its URL only."""
    given = grants(gateway)
    assert len(given) == 1, given
    grant = given[0]
    assert grant["clientId"] == seen.params["client_id"], grant
    assert grant["clientId"].startswith("jc_"), grant  # registered here, by RFC 7591
    assert grant["namespace"] == ns and grant["resource"] == url, grant
    assert grant["redirectUri"] == seen.params["redirect_uri"], grant
    assert grant["scope"] == "read execute", grant
    return grant


def assert_authorize_request(seen: Visit, gateway: Gateway, url: str) -> None:
    params = seen.params
    assert seen.authorize_url.startswith(gateway.url + "/authorize?"), seen.authorize_url
    assert params["response_type"] == "code" and params["code_challenge_method"] == "S256", params
    assert params["resource"] == url and params["scope"] == "read execute", params
    back = query(seen.redirect)
    assert seen.redirect.startswith(params["redirect_uri"] + "?"), seen.redirect
    assert back["state"] == params["state"] and back["iss"] == gateway.url and back["code"], back


# --- mcp-remote --------------------------------------------------------------------------------
def test_mcp_remote_logs_in_from_the_namespace_url_then_lists_and_calls(
    gateway: Gateway, namespace: str, tmp_path: Path
) -> None:
    node = ensure_mcp_remote()
    url = gateway.mcp_url(namespace)
    browser = Browser(tmp_path)
    stderr = tmp_path / "mcp-remote.stderr"
    stderr.touch()
    # It listens for the redirect on 127.0.0.1 at this port, path /oauth/callback; the redirect URI
    # it registers names the host `localhost`. A loopback http URL needs no --allow-http. The fence
    # sees only its discovery requests (the rest go through undici's own fetch): the gateway's log
    # is the record of the wire here.
    callback_port = free_port()
    params = StdioServerParameters(
        command=node.node,
        args=[
            "--import",
            FENCE.as_uri(),
            str(node.bin_path("mcp-remote", "mcp-remote")),
            url,
            str(callback_port),
            "--transport",
            "http-only",
            "--auth-timeout",
            str(int(LIMIT)),
        ],
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "MCP_REMOTE_CONFIG_DIR": str(tmp_path / "mcp-remote"),
            "SMITHERY_BASE_URL": gateway.url,
            **browser.env,
        },
    )
    prompt = re.compile(r"Please authorize this client by visiting:\s*(\S+)")
    visits: list[Visit] = []
    bridge_done = threading.Event()

    def person() -> None:
        authorize_url = wait_for(
            "the authorization URL on stderr",
            lambda: m[1] if (m := prompt.search(stderr.read_text())) else None,
            lambda: not bridge_done.is_set(),
            stderr.read_text,
        )
        visits.append(visit(gateway, authorize_url))

    async def main() -> tuple[list[str], Any]:
        with stderr.open("w") as errlog, anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, person)
                try:
                    # Initialization waits on the bridge, which waits for the person.
                    async with Client(stdio_client(params, errlog=errlog)) as client:
                        names = sorted(tool.name for tool in (await client.list_tools()).tools)
                        result = await client.call_tool("main__echo", {"text": "hi"})
                finally:
                    bridge_done.set()
        return names, result

    try:
        names, result = anyio.run(main)
    except BaseException as exc:
        exc.add_note(f"mcp-remote stderr:\n{stderr.read_text()}")
        exc.add_note(answered(gateway))
        raise

    assert "main__echo" in names, names
    assert result.is_error is False and [part.text for part in result.content] == ["hi"], result
    [seen] = visits
    assert seen.callback.status_code == 200 and "Authorization successful" in seen.callback.text, (
        seen.callback.text
    )
    assert_authorize_request(seen, gateway, url)
    assert seen.params["redirect_uri"] == f"http://localhost:{callback_port}/oauth/callback"
    # The same URL went to the browser (re-encoded: `scope=read%20execute`).
    assert [query(opened) for opened in browser.opened()] == [seen.params]
    hits = wire(gateway)
    assert_in_order(hits, login_flow(namespace))
    assert_nothing_failed(hits, namespace)
    assert sum(hit.path == "/register" for hit in hits) == 1
    grant = assert_one_grant(gateway, seen, url, namespace)
    assert grant["clientName"] == "MCP CLI Proxy", grant


# --- the MCP Inspector's CLI -------------------------------------------------------------------
def test_inspector_cli_logs_in_from_the_namespace_url_then_lists_and_calls(
    gateway: Gateway, namespace: str, tmp_path: Path
) -> None:
    inspector = ensure_inspector()
    url = gateway.mcp_url(namespace)
    browser = Browser(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),  # it keeps the OAuth state in ~/.mcp-inspector
        "SMITHERY_BASE_URL": gateway.url,  # the fence lets it reach the gateway only
        # Without a TTY its CLI refuses an interactive login unless told a browser may be opened.
        "MCP_AUTO_OPEN_ENABLED": "true",
        # No OS keychain here: keep the tokens in a file under HOME so the second run finds them.
        "MCP_INSPECTOR_SECRET_STORE": "file",
        **browser.env,
    }
    callback_url = f"http://127.0.0.1:{free_port()}/oauth/callback"

    # 1. A login, then tools/list, in one run: it prints the URL and hands it to the browser, and
    # waits on its callback listener.
    with ThreadPoolExecutor(1) as pool:
        login: Future[Run] = pool.submit(
            inspector.bin,
            INSPECTOR,
            "mcp-inspector",
            "--cli",
            url,
            "--transport",
            "http",
            "--callback-url",
            callback_url,
            "--method",
            "tools/list",
            "--format",
            "json",
            env=env,
            timeout=LIMIT,
        )
        authorize_url = wait_for(
            "an authorization URL handed to the browser",
            lambda: next(iter(browser.opened()), None),
            lambda: not login.done(),
            lambda: (login.result().describe() if login.done() else "") + "\n" + answered(gateway),
        )
        seen = visit(gateway, authorize_url)
        listed = login.result().ok()

    assert f"Please navigate to: {authorize_url}" in listed.stderr, listed.describe()
    assert seen.callback.status_code == 200 and "OAuth complete" in seen.callback.text, seen.callback.text
    assert_authorize_request(seen, gateway, url)
    assert seen.params["redirect_uri"] == callback_url
    names = {tool["name"] for tool in _json(listed)["result"]["tools"]}
    assert "main__echo" in names, listed.describe()
    login_hits = wire(gateway)
    assert_in_order(login_hits, login_flow(namespace))
    assert_nothing_failed(login_hits, namespace)
    grant = assert_one_grant(gateway, seen, url, namespace)
    assert grant["clientName"] == "MCP Inspector", grant

    # 2. tools/call with the stored login: no second sign-in, no second registration.
    called = inspector.bin(
        INSPECTOR,
        "mcp-inspector",
        "--cli",
        "--server-url",
        url,
        "--transport",
        "http",
        "--use-stored-auth",
        "--method",
        "tools/call",
        "--tool-name",
        "main__echo",
        "--tool-arg",
        "text=hi",
        "--format",
        "json",
        env=env,
        timeout=LIMIT,
    ).ok()
    result = _json(called)["result"]
    assert result.get("isError") is False, called.describe()
    assert [part.get("text") for part in result["content"]] == ["hi"], called.describe()
    later = wire(gateway)[len(login_hits) :]
    assert not [hit for hit in later if hit.path in ("/register", "/authorize")], later
    assert_nothing_failed(later, namespace)
    assert any(hit.path == f"/mcp/{namespace}" and hit.status == 200 for hit in later), later
    assert browser.opened() == [authorize_url]
    assert_one_grant(gateway, seen, url, namespace)  # a refresh stays within the one grant


def _json(run: Run) -> Any:
    """The JSON document the Inspector printed on stdout."""
    text = run.stdout.strip()
    try:
        return json.loads(text[text.find("{") :])
    except ValueError:
        pytest.fail(f"no JSON in the Inspector's output\n{run.describe()}")
