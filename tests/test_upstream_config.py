"""Servers that need configuration: `input_required` with exactly what is missing, the hosted form
that supplies it, and a PUT that does the same. The upstream is a real SDK server (kind `config`)
that serves its schema at `/.well-known/mcp-config`: header `x-api-key` and query `region`."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


def _whoami(client: httpx2.Client, ns: str, cid: str) -> dict[str, Any]:
    answer = client.post(f"/{ns}/{cid}/.tools/whoami", json={})
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = json.loads(answer.json()["content"][0]["text"])
    return data


def test_a_server_needing_a_key_and_a_setting_reports_exactly_what_is_missing(
    gateway, config_upstream
) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        client.put("/namespaces/cfg")
        created = client.put("/cfg/svc", json={"mcpUrl": config_upstream.url})
        assert created.status_code == 201, created.text
        status = created.json()["status"]
        assert status["state"] == "input_required"
        assert status["missing"] == {"headers": ["x-api-key"], "query": ["region"]}
        assert status["http"]["headers"]["x-api-key"] == {
            "label": "API key",
            "description": "Your key for the config test server",
            "required": True,
        }
        assert status["http"]["query"]["region"]["label"] == "Region"
        assert status["http"]["query"]["verbose"]["required"] is False
        assert status["setupUrl"].startswith(gateway.url + "/setup/cfg/svc?")
        # Calls say what is missing: REST 409, MCP -32002 with the schema and `missing`.
        refused = client.post("/cfg/svc/.tools/whoami", json={})
        assert refused.status_code == 409 and refused.json()["error"] == "input_required"
        assert refused.json()["missing"] == status["missing"]

    async def call() -> MCPError:
        headers = {"Authorization": f"Bearer {gateway.admin_key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(
                streamable_http_client(gateway.mcp_url("cfg"), http_client=http), mode="legacy"
            ) as mcp:
                assert (await mcp.list_tools()).tools == []  # its tools are not listed meanwhile
                try:
                    await mcp.call_tool("svc__whoami", {})
                except MCPError as exc:
                    return exc
        raise AssertionError("the call succeeded")

    error = anyio.run(call)
    assert error.code == -32002
    assert error.error.data["missing"] == status["missing"] and "http" in error.error.data


def test_a_put_with_the_missing_values_connects(gateway, config_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        client.put("/namespaces/cfg")
        client.put("/cfg/svc", json={"mcpUrl": config_upstream.url})
        # While input_required, mcpUrl may change its query, not its host or path.
        moved = client.put("/cfg/svc", json={"mcpUrl": config_upstream.base_url + "/other?region=eu"})
        assert moved.status_code == 409 and moved.json()["error"] == "conflict"
        half = client.put("/cfg/svc", json={"mcpUrl": config_upstream.url + "?region=eu"})
        assert half.json()["status"]["missing"] == {"headers": ["x-api-key"], "query": []}
        done = client.put("/cfg/svc", json={"headers": {"x-api-key": "key-123"}})
        assert done.status_code == 200 and done.json()["status"] == {"state": "connected"}, done.text
        assert "key-123" not in done.text  # write-only
        assert _whoami(client, "cfg", "svc") == {"apiKey": "key-123", "region": "eu", "authorization": None}
        # Once connected the URL is fixed again.
        again = client.put("/cfg/svc", json={"mcpUrl": config_upstream.url + "?region=us"})
        assert again.status_code == 409


def test_a_connection_given_everything_up_front_is_connected_at_once(gateway, config_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        client.put("/namespaces/cfg")
        created = client.put(
            "/cfg/svc", json={"mcpUrl": config_upstream.url + "?region=us", "headers": {"X-Api-Key": "k9"}}
        )
        assert created.json()["status"] == {"state": "connected"}, created.text
        assert _whoami(client, "cfg", "svc")["apiKey"] == "k9"


def test_the_hosted_form_asks_for_the_missing_fields_and_connects(gateway, config_upstream) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        client.put("/namespaces/cfg")
        status = client.put(
            "/cfg/svc", json={"mcpUrl": config_upstream.url, "returnUrl": "https://app.example.com/done?x=1"}
        ).json()["status"]
    with httpx2.Client(timeout=30, follow_redirects=False, trust_env=False) as browser:
        form = browser.get(status["setupUrl"])
        assert form.status_code == 200, form.text
        assert 'type="password" name="apiKey"' in form.text  # a header value is a secret
        assert (
            '<select name="region"' in form.text and 'name="verbose"' not in form.text
        )  # only what is missing
        assert "Your key for the config test server" in form.text
        hidden = {k: html.unescape(v) for k, v in _HIDDEN.findall(form.text)}
        action = html.unescape(_ACTION.findall(form.text)[0])
        # Without the page's cookie (another site posting the form): refused, nothing saved.
        with httpx2.Client(timeout=30, trust_env=False) as other:
            forged = other.post(action, data={**hidden, "apiKey": "evil", "region": "us"})
        assert forged.status_code == 403
        # A missing required value: the form again, with an error.
        partial = browser.post(action, data={**hidden, "region": "eu"})
        assert partial.status_code == 400 and "still missing" in partial.text
        done = browser.post(action, data={**hidden, "apiKey": "form-key", "region": "eu"})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == (
            "https://app.example.com/done?x=1&connectionId=svc&namespace=cfg&state=connected"
        )
    with gateway.client() as client:
        assert client.get("/cfg/svc").json()["status"] == {"state": "connected"}
        assert _whoami(client, "cfg", "svc") == {"apiKey": "form-key", "region": "eu", "authorization": None}


def test_a_catalog_server_with_x_to_sends_the_value_where_the_server_wants_it(
    start_gateway, config_upstream
) -> None:  # type: ignore[no-untyped-def]
    schema = {
        "type": "object",
        "required": ["token"],
        "properties": {
            "token": {
                "type": "string",
                "title": "Token",
                "x-from": {"header": "x-token"},
                "x-to": {"header": "Authorization"},
            },
            "region": {"type": "string", "x-from": {"query": "zone"}, "x-to": {"query": "region"}},
        },
    }
    catalog = [{"name": "cfgsrv", "url": config_upstream.url, "config_schema": schema}]
    gateway = start_gateway(JUNCTION_SERVERS=json.dumps(catalog))
    with gateway.client() as client:
        client.put("/namespaces/cat")
        created = client.post("/cat", json={"server": "cfgsrv", "connectionId": "s"})
        assert created.status_code == 201, created.text
        status = created.json()["status"]
        assert created.json()["mcpUrl"] == config_upstream.url
        assert status["missing"] == {"headers": ["x-token"], "query": []}  # the catalog's schema wins
        updated = client.put(
            "/cat/s", json={"mcpUrl": config_upstream.url + "?zone=us", "headers": {"x-token": "Bearer t1"}}
        )
        assert updated.json()["status"] == {"state": "connected"}, updated.text
        assert _whoami(client, "cat", "s") == {"apiKey": None, "region": "us", "authorization": "Bearer t1"}
        unknown = client.post("/cat", json={"server": "nope"})
        assert unknown.status_code == 400 and "cfgsrv" in unknown.json()["message"]
