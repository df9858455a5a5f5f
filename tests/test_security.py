"""Security promises a user can check from outside: revoking a key is immediate, stored credentials
never come back out (responses, statuses, logs, the CLI), a wrong master key is refused in one
line, and operators see when keys were last used without the database's statement spam."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
import pytest
from conftest import REPO_ROOT, Gateway, Upstream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from proxy.auth.keys import LAST_USED_FLUSH_INTERVAL, ApiKeys
from proxy.store import open_store
from proxy.vault import Vault

# --- 12: revoking a key is immediate ------------------------------------------------------------


class GatedStore:
    """A real store whose `find_api_key` can be held after it has read the row, like a slow read
    that is still in flight when the key is revoked."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.gate: anyio.Event | None = None
        self.reached = anyio.Event()
        self.finds = 0
        self.touches: list[dict[str, Any]] = []
        self.touched = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def find_api_key(self, key_hash: str) -> Any:
        self.finds += 1
        row = await self._inner.find_api_key(key_hash)
        if self.gate is not None:
            self.reached.set()
            await self.gate.wait()
        return row

    async def touch_api_keys(self, used: Any) -> None:
        self.touches.append(dict(used))
        await self._inner.touch_api_keys(used)
        self.touched.set()


@pytest.mark.anyio
async def test_a_check_in_flight_during_a_revoke_cannot_keep_the_key_valid(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    try:
        gated = GatedStore(store)
        keys = ApiKeys(gated)  # type: ignore[arg-type]
        issued = await keys.create("soon revoked")
        gated.gate = anyio.Event()
        seen: list[Any] = []

        async def check() -> None:
            seen.append(await keys.verify(issued.key))

        async with anyio.create_task_group() as tg:
            tg.start_soon(check)
            await gated.reached.wait()  # the check has read the (still valid) row ...
            assert await keys.revoke(issued.record.id)  # ... the revoke completes ...
            gated.gate.set()  # ... and only then does the check finish
        assert seen[0] is not None and seen[0].id == issued.record.id  # it started first: may pass
        gated.gate = None
        assert await keys.verify(issued.key) is None  # but it did not bring the key back
        assert await keys.verify(issued.key) is None
    finally:
        await store.close()


async def _revoke_while_in_use(
    http: httpx2.AsyncClient, admin: dict[str, str], key: str, key_id: str
) -> list[int]:
    """Use a key from several tasks at once and revoke it meanwhile; the statuses of the requests
    that started after the revoke had returned."""
    revoked_at: float | None = None
    after: list[int] = []

    async def use() -> None:
        done_after = 0
        while done_after < 3:
            started = time.monotonic()
            status = (await http.get("/namespaces", headers={"Authorization": f"Bearer {key}"})).status_code
            if revoked_at is not None and started > revoked_at:
                after.append(status)
                done_after += 1

    async def revoke() -> None:
        nonlocal revoked_at
        response = await http.delete(f"/keys/{key_id}", headers=admin)
        assert response.status_code == 200, response.text
        revoked_at = time.monotonic()

    async with anyio.create_task_group() as tg:
        for _ in range(USES_PER_KEY):
            tg.start_soon(use)
        tg.start_soon(revoke)  # while the first uses of the key are still being checked
    return after


USES_PER_KEY = 4


async def _record(results: dict[str, list[int]], key_id: str, work: Awaitable[list[int]]) -> None:
    results[key_id] = await work


async def _rounds(gateway: Gateway, rounds: int, keys_per_round: int) -> list[str]:
    problems: list[str] = []
    admin = {"Authorization": f"Bearer {gateway.admin_key}"}
    size = keys_per_round * (USES_PER_KEY + 1) + 4
    limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx2.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as http:
        for round_ in range(rounds):
            keys = []
            for i in range(keys_per_round):
                created = await http.post("/keys", json={"name": f"revoked-{round_}-{i}"}, headers=admin)
                assert created.status_code == 201, created.text
                keys.append((created.json()["key"], created.json()["id"]))
            results: dict[str, list[int]] = {}
            async with anyio.create_task_group() as tg:
                for key, key_id in keys:
                    tg.start_soon(_record, results, key_id, _revoke_while_in_use(http, admin, key, key_id))
            for key_id, after in results.items():
                late = [status for status in after if status != 401]
                if late:
                    problems.append(
                        f"round {round_}, {key_id}: {len(late)} of {len(after)} later requests got {late[:3]}"
                    )
    return problems


def test_a_revoked_key_is_refused_by_every_request_that_starts_after_the_revoke(gateway: Gateway) -> None:
    problems = anyio.run(_rounds, gateway, 4, 20)
    assert not problems, problems


# --- 21: lastUsedAt, cheaply; debug logs are ours --------------------------------------------------


@pytest.mark.anyio
async def test_last_used_is_kept_in_memory_and_written_once_per_flush(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    try:
        counting = GatedStore(store)
        keys = ApiKeys(counting)  # type: ignore[arg-type]
        a, b, idle = await keys.create("a"), await keys.create("b"), await keys.create("idle")
        for _ in range(500):
            assert await keys.verify(a.key) is not None
        await keys.verify(b.key)
        assert counting.finds == 2  # the store is read once per key, then the cache answers
        assert counting.touches == []  # nothing is written on the request path
        listed = {r.id: r.last_used_at for r in await keys.list()}
        assert listed[a.record.id] is not None and listed[b.record.id] is not None
        assert listed[idle.record.id] is None

        assert await keys.flush_last_used() == 2
        assert len(counting.touches) == 1 and set(counting.touches[0]) == {a.record.id, b.record.id}
        assert await keys.flush_last_used() == 0  # unused since: nothing to write
        stored = {r.id: r.last_used_at for r in await store.list_api_keys()}
        assert stored[a.record.id] is not None and stored[idle.record.id] is None
        assert LAST_USED_FLUSH_INTERVAL >= 60  # at most one write a minute per key

        counting.touched = anyio.Event()
        async with anyio.create_task_group() as tg:  # the background flusher writes on its own
            tg.start_soon(keys.run_flusher, 0.01)
            await keys.verify(b.key)
            with anyio.fail_after(5):
                await counting.touched.wait()
            tg.cancel_scope.cancel()
        assert set(counting.touches[1]) == {b.record.id}
    finally:
        await store.close()


def test_keys_list_shows_when_each_key_was_last_used(gateway: Gateway) -> None:
    with gateway.client() as admin:
        used = admin.post("/keys", json={"name": "used"}).json()
        unused = admin.post("/keys", json={"name": "unused"}).json()
        with gateway.client(headers={"Authorization": f"Bearer {used['key']}"}) as client:
            assert client.get("/namespaces").status_code == 200
        listed = {k["id"]: k for k in admin.get("/keys").json()["keys"]}
    assert listed[used["id"]]["lastUsedAt"] is not None
    assert listed[unused["id"]]["lastUsedAt"] is None
    gateway.restart()  # what was pending is written at shutdown
    with gateway.client() as admin:
        listed = {k["id"]: k for k in admin.get("/keys").json()["keys"]}
    assert listed[used["id"]]["lastUsedAt"] is not None
    assert listed[unused["id"]]["lastUsedAt"] is None


def test_debug_logging_does_not_log_database_statements(
    start_gateway: Callable[..., Gateway], modern_upstream: Upstream
) -> None:
    gateway = start_gateway(JUNCTION_LOG_LEVEL="debug")
    with gateway.client() as client:
        client.put("/namespaces/debug-logs")
        created = client.put("/debug-logs/echo", json={"mcpUrl": modern_upstream.url})
        assert created.status_code == 201, created.text
        assert client.get("/debug-logs").status_code == 200
        assert client.get("/keys").status_code == 200
    gateway.stop()
    logs = gateway.logs()
    for noisy in ("sqlalchemy", "aiosqlite", "SELECT ", "INSERT INTO", "BEGIN (implicit)"):
        assert noisy not in logs, f"{noisy!r} in the debug log:\n{logs[-3000:]}"


# --- 13: stored credentials never come back out ------------------------------------------------


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        base64.b64encode(raw).decode().rstrip("="),
        base64.b64encode(b"Bearer " + raw).decode()[:-4],
    ]


def _cli(gateway: Gateway, tmp_path: Path, namespace: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUNCTION_", "XDG_CONFIG_HOME"))}
    env |= {
        "JUNCTION_URL": gateway.url,
        "JUNCTION_API_KEY": gateway.admin_key,
        "JUNCTION_NAMESPACE": namespace,
        "JUNCTION_CONFIG_DIR": str(tmp_path / "cli-config"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


async def _mcp_call(url: str, key: str, mode: str, tool: str) -> str:
    """Everything an MCP client learns from listing and calling `tool`, as text."""
    seen: list[str] = []
    try:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            async with Client(
                streamable_http_client(url, http_client=http),
                mode=mode,
                client_info=types.Implementation(name="pytest", version="1"),
            ) as client:
                seen.append(repr(await client.list_tools()))
                try:
                    seen.append(repr(await client.call_tool(tool, {"text": "hi"})))
                except MCPError as exc:
                    seen.append(f"{exc!r} {exc.error!r}")
    except Exception as exc:  # whatever the failure, what it says must not carry the secret
        seen.append(repr(exc))
    return "\n".join(seen)


@pytest.mark.parametrize("where", ["initialize", "call", "http", "http-json"])
def test_an_upstream_echoing_its_credentials_never_shows_them(
    where: str, start_upstream: Callable[..., Upstream], start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    upstream = start_upstream("modern", echo_auth_errors=where)
    gateway = start_gateway(JUNCTION_LOG_LEVEL="debug", JUNCTION_ACCESS_LOG="1")
    secret = "sk-test-" + secrets.token_hex(16)
    ns, cid = "echoes", "careless"
    seen: dict[str, str] = {}
    with gateway.client() as client:
        client.put(f"/namespaces/{ns}")
        created = client.put(
            f"/{ns}/{cid}", json={"mcpUrl": upstream.url, "headers": {"Authorization": f"Bearer {secret}"}}
        )
        seen["PUT connection"] = created.text
        seen["GET namespace"] = client.get(f"/{ns}").text
        seen["GET connection"] = client.get(f"/{ns}/{cid}").text
        seen["GET tools"] = client.get(f"/{ns}/{cid}/.tools").text
        seen["GET namespace tools"] = client.get(f"/{ns}/.tools").text
        seen["REST call"] = client.post(f"/{ns}/{cid}/.tools/echo", json={"text": "hi"}).text
        seen["REST call again"] = client.post(f"/{ns}/{cid}/.tools/echo", json={"text": "hi"}).text
        passthrough = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {}},
        }
        seen["passthrough call"] = client.post(
            f"/mcp/{ns}/{cid}", json=passthrough, headers={"accept": "application/json, text/event-stream"}
        ).text
        for mode in ("legacy", "auto"):
            seen[f"MCP {mode}"] = anyio.run(
                _mcp_call, gateway.mcp_url(ns), gateway.admin_key, mode, f"{cid}.echo"
            )
        seen["GET connection after calls"] = client.get(f"/{ns}/{cid}").text
    for args in (
        ("mcp", "get", cid),
        ("mcp", "get", cid, "--json"),
        ("mcp", "list"),
        ("tool", "call", cid, "echo", "{}"),
    ):
        seen["CLI " + " ".join(args)] = _cli(gateway, tmp_path, ns, *args)
    gateway.stop()
    seen["gateway log"] = gateway.logs()

    # The upstream did echo it, so the test means something: the credential reached the gateway.
    assert secret in upstream.logs() or where != "initialize" or "[redacted]" in seen["GET connection"]
    leaks = [name for name, text in seen.items() if any(form in text for form in _forms(secret))]
    assert not leaks, {name: seen[name][-2000:] for name in leaks}


async def _mcp_tool_names(url: str, key: str) -> set[str]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="auto") as client:
            return {t.name for t in (await client.list_tools()).tools}


# --- 17: a master key that cannot open the stored rows ------------------------------------------


def _master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_the_vault_says_whether_a_row_opens_without_raising() -> None:
    old, new = Vault([os.urandom(32)]), Vault([os.urandom(32)])
    sealed = old.seal({"X-Api-Key": "v"}, namespace="n", connection_id="c", field="headers")
    assert old.opens(sealed, namespace="n", connection_id="c", field="headers")
    assert not new.opens(sealed, namespace="n", connection_id="c", field="headers")
    assert not old.opens(sealed, namespace="n", connection_id="other", field="headers")
    key_id = sealed.split(".")[1]
    for broken in ("garbage", "v1.x.!!", f"v1.{key_id}.", f"v1.{key_id}.AAAA"):  # truncated or malformed
        assert not old.opens(broken, namespace="n", connection_id="c", field="headers"), broken


def test_a_wrong_master_key_is_refused_in_one_line_unless_told_to_go_on(
    start_gateway: Callable[..., Gateway], modern_upstream: Upstream
) -> None:
    first, second = _master_key(), _master_key()
    gateway = start_gateway(JUNCTION_MASTER_KEY=first)
    with gateway.client() as client:
        client.put("/namespaces/vaulted")
        client.put("/namespaces/elsewhere")
        for ns, cid, body in (
            ("vaulted", "sealed", {"mcpUrl": modern_upstream.url, "headers": {"X-Api-Key": "old-secret"}}),
            ("vaulted", "plain", {"mcpUrl": modern_upstream.url}),
            ("elsewhere", "other", {"mcpUrl": modern_upstream.url, "headers": {"X-Api-Key": "other-secret"}}),
        ):
            response = client.put(f"/{ns}/{cid}", json=body)
            assert response.status_code == 201 and response.json()["status"]["state"] == "connected", (
                response.text
            )
    gateway.stop()

    # Another key: the gateway refuses to start, and says why in one line.
    gateway.env["JUNCTION_MASTER_KEY"] = second
    refused = subprocess.run(
        gateway.command(), cwd=REPO_ROOT, env=gateway.env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, refused.stderr
    assert errors[0].startswith("error: the master key cannot decrypt the stored headers of 2 connection(s)")
    assert "elsewhere/other" in errors[0] and "vaulted/sealed" in errors[0]
    assert "JUNCTION_ALLOW_UNDECRYPTABLE_ROWS=1" in errors[0]
    assert "old-secret" not in refused.stderr + refused.stdout

    # Told to go on: the rows it cannot open are errors, everything else works.
    gateway.env["JUNCTION_ALLOW_UNDECRYPTABLE_ROWS"] = "1"
    gateway.start()
    with gateway.client() as client:
        listing = client.get("/vaulted")
        assert listing.status_code == 200, listing.text
        states = {c["connectionId"]: c["status"] for c in listing.json()["connections"]}
        assert states["sealed"]["state"] == "error" and "master key" in states["sealed"]["message"]
        assert states["plain"]["state"] == "connected"
        assert client.get("/vaulted/sealed").json()["status"] == states["sealed"]
        assert client.get("/vaulted/sealed").json()["headerNames"] == ["X-Api-Key"]

        echoed = client.post("/vaulted/plain/.tools/echo", json={"text": "still here"})
        assert echoed.status_code == 200 and "still here" in echoed.text, echoed.text
        tools = client.get("/vaulted/.tools")
        assert tools.status_code == 200, tools.text
        by_connection = {c["connectionId"]: c for c in tools.json()["connections"]}
        assert "echo" in {t["name"] for t in by_connection["plain"]["tools"]}
        assert "cannot be decrypted" in json.dumps(by_connection["sealed"])
        listed = anyio.run(_mcp_tool_names, gateway.mcp_url("vaulted"), gateway.admin_key)
        assert "plain.echo" in listed or "plain__echo" in listed, listed
        refused_call = client.post("/vaulted/sealed/.tools/echo", json={"text": "x"})
        assert refused_call.status_code >= 400 and "cannot be decrypted" in refused_call.text, (
            refused_call.text
        )

        renamed = client.put("/vaulted/sealed", json={"name": "Renamed"})  # writes work ...
        assert renamed.status_code == 200 and renamed.json()["name"] == "Renamed", renamed.text
        assert renamed.json()["status"]["state"] == "error"
        healed = client.put("/vaulted/sealed", json={"headers": {"X-Api-Key": "new-secret"}})  # ... and heal
        assert healed.status_code == 200 and healed.json()["status"] == {"state": "connected"}, healed.text
        sent = client.post("/vaulted/sealed/.tools/headers", json={"name": "x-api-key"})
        assert sent.status_code == 200 and "new-secret" in sent.text, sent.text
        assert client.get("/elsewhere").json()["connections"][0]["status"]["state"] == "error"
        assert client.delete("/elsewhere/other").status_code == 200  # deletes work too
    gateway.stop()
    assert "Traceback" not in gateway.logs()
    assert "old-secret" not in gateway.logs() and "new-secret" not in gateway.logs()

    # Once every stored row opens with the key, no override is needed.
    del gateway.env["JUNCTION_ALLOW_UNDECRYPTABLE_ROWS"]
    gateway.start()
    with gateway.client() as client:
        assert client.get("/vaulted/sealed").json()["status"]["state"] == "connected"
