"""The MCP Inspector's CLI (the official debugging client) against `/mcp/{ns}`, in both eras.

Node 22 and `@modelcontextprotocol/inspector` are pinned in tests/_node.py and installed from the
npm registry on first use. The Inspector talks only to the gateway (the fence refuses any other
origin) and keeps its state in a scratch HOME.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from typing import Any

import pytest
from _node import Node, Run, ensure_inspector

pytestmark = pytest.mark.timeout(420)  # the first run installs Node 22 and the Inspector

INSPECTOR = "@modelcontextprotocol/inspector"


@pytest.fixture(scope="session")
def inspector() -> Node:
    return ensure_inspector()


def _run(inspector: Node, gateway: Any, url: str, *args: str) -> Run:
    with tempfile.TemporaryDirectory(prefix="junction-inspector-") as home:
        env = {"HOME": home, "SMITHERY_BASE_URL": gateway.url}
        return inspector.bin(INSPECTOR, "mcp-inspector", "--cli", url, "--transport", "http", *args, env=env)


def _json(run: Run) -> Any:
    """The JSON document the Inspector printed (it may log lines before it)."""
    text = run.stdout.strip()
    try:
        return json.loads(text)
    except ValueError:
        start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
        if start < 0:
            pytest.fail(f"no JSON in the Inspector's output\n{run.describe()}")
        return json.loads(text[start:])


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_lists_prefixed_tools_and_calls_them(
    inspector: Node, gateway: Any, modern_upstream: Any, dotted_upstream: Any, era: str
) -> None:
    ns = f"insp-{uuid.uuid4().hex[:8]}"
    with gateway.client() as http:
        assert http.put(f"/namespaces/{ns}").status_code in (200, 201)
        for cid, upstream in (("echo", modern_upstream), ("gh", dotted_upstream)):
            created = http.put(f"/{ns}/{cid}", json={"mcpUrl": upstream.url})
            assert created.status_code in (200, 201), created.text
    url = gateway.mcp_url(ns)
    auth = ("--header", f"Authorization: Bearer {gateway.admin_key}", "--protocol-era", era)

    listing = _run(inspector, gateway, url, *auth, "--method", "tools/list", "--format", "json").ok()
    names = {tool["name"] for tool in _json(listing)["result"]["tools"]}
    assert {"echo__echo", "echo__add", "gh__repo_search", "gh__issues_create"} <= names, names
    assert all(name.startswith(("echo__", "gh__")) for name in names)

    called = _run(
        inspector,
        gateway,
        url,
        *auth,
        "--method",
        "tools/call",
        "--tool-name",
        "gh__repo_search",  # the Inspector calls only names it was given by tools/list
        "--tool-arg",
        "query=junction",
        "--format",
        "json",
    ).ok()
    result = _json(called)["result"]
    texts = [part.get("text") for part in result.get("content", [])]
    assert texts == ["search:junction"], called.describe()
    assert any(r["path"] == f"/mcp/{ns}" and r["method"] == "POST" for r in called.requests)


def test_inspector_without_a_key_is_told_to_authenticate(inspector: Node, gateway: Any) -> None:
    ns = f"insp-{uuid.uuid4().hex[:8]}"
    with gateway.client() as http:
        assert http.put(f"/namespaces/{ns}").status_code in (200, 201)
    run = _run(inspector, gateway, gateway.mcp_url(ns), "--stored-auth-only", "--method", "tools/list")
    # Exit code 3 and `auth_required` are how the Inspector's CLI reports a server that wants a login.
    assert run.returncode == 3 and '"auth_required"' in run.stderr, run.describe()
    assert any(r["path"] == f"/mcp/{ns}" and r["status"] == 401 for r in run.requests), run.describe()


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_sees_resources_and_prompts_of_every_connection(
    inspector: Node, gateway: Any, everything_upstream: Any, modern_upstream: Any, era: str
) -> None:
    """Resources and prompts of a third-party server come through `/mcp/{ns}` with their
    connection in the URI and the name, and read and get through those exposed forms."""
    ns = f"insp-{uuid.uuid4().hex[:8]}"
    with gateway.client() as http:
        assert http.put(f"/namespaces/{ns}").status_code in (200, 201)
        for cid, upstream in (("ev", everything_upstream), ("echo", modern_upstream)):
            created = http.put(f"/{ns}/{cid}", json={"mcpUrl": upstream.url})
            assert created.status_code in (200, 201), created.text
    url = gateway.mcp_url(ns)
    auth = ("--header", f"Authorization: Bearer {gateway.admin_key}", "--protocol-era", era)

    listing = _json(
        _run(inspector, gateway, url, *auth, "--method", "resources/list", "--format", "json").ok()
    )
    resources = listing["result"]["resources"]
    assert resources and all("://ev." in r["uri"] for r in resources), resources
    uri = resources[0]["uri"]
    read = _json(
        _run(
            inspector, gateway, url, *auth, "--method", "resources/read", "--uri", uri, "--format", "json"
        ).ok()
    )
    assert read["result"]["contents"][0]["uri"] == uri

    prompts = _json(_run(inspector, gateway, url, *auth, "--method", "prompts/list", "--format", "json").ok())
    names = {p["name"] for p in prompts["result"]["prompts"]}
    assert "ev__simple-prompt" in names, names
    got = _run(
        inspector,
        gateway,
        url,
        *auth,
        "--method",
        "prompts/get",
        "--prompt-name",
        "ev__args-prompt",
        "--prompt-args",
        "city=Paris",
        "--format",
        "json",
    ).ok()
    assert "Paris" in got.stdout, got.describe()
