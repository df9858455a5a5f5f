"""A tool call never reads the database: the hot path runs on cached state."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from proxy.auth.policy import Principal
from proxy.directory import Directory, parse_connection_input
from proxy.gateway.catalog import Catalog
from proxy.settings import Settings
from proxy.store import open_store
from proxy.upstream import ConnectionPool
from proxy.upstream_auth import UpstreamAuth
from proxy.vault import Vault

ADMIN = Principal(kind="api_key", id="test", name="test")


class CountingStore:
    """Wraps a real store and counts every call made to it."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await target(*args, **kwargs)

        return counted


@pytest.mark.anyio
async def test_tool_calls_do_not_touch_the_store(modern_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'j.db'}")
    counting = CountingStore(store)
    upstream_rows = CountingStore(store.upstream)  # the credentials hook's rows count as well
    settings = Settings(allow_private_upstreams=True)
    vault = Vault([os.urandom(32)])
    auth = UpstreamAuth(settings, SimpleNamespace(upstream=upstream_rows), vault)  # type: ignore[arg-type]
    try:
        async with anyio.create_task_group() as tg:
            pool = ConnectionPool(
                tg,
                allow_private=True,
                tools_ttl=300,
                idle_timeout=60,
                credentials_for=lambda key, config: auth.credentials(key, config.url, config.headers),
            )
            directory = Directory(counting, vault, pool, settings, auth)  # type: ignore[arg-type]
            catalog = Catalog(directory)
            await directory.create_namespace("hot-path")
            data = parse_connection_input({"mcpUrl": modern_upstream.url, "headers": {"X-Api-Key": "k"}})
            await directory.create_connection("hot-path", "m", data)
            assert "echo" in {t.name for t in await (await directory.upstream("hot-path", "m")).list_tools()}
            before = list(counting.calls), list(upstream_rows.calls)
            for i in range(20):
                result = await catalog.call("hot-path", ADMIN, "m.echo", {"text": str(i)})
                assert result["content"][0]["text"] == str(i)
            assert (counting.calls, upstream_rows.calls) == before
            await pool.aclose()
            await auth.aclose()
            tg.cancel_scope.cancel()
    finally:
        await store.close()


@pytest.mark.anyio
async def test_idle_sessions_close_and_reconnect_on_next_use(modern_upstream) -> None:  # type: ignore[no-untyped-def]
    from proxy.upstream import UpstreamConfig

    async with anyio.create_task_group() as tg:
        pool = ConnectionPool(tg, allow_private=True, tools_ttl=300, idle_timeout=0.2)
        session = pool.session(("ns", "m"), UpstreamConfig(url=modern_upstream.url))
        first = await session.call_tool("echo", {"text": "a"})
        assert first["content"][0]["text"] == "a" and session.connected
        assert await pool.close_idle() == 0  # just used
        session.last_used -= 1.0  # as if a second had passed without use
        assert await pool.close_idle() == 1
        assert not session.connected
        again = await session.call_tool("echo", {"text": "b"})
        assert again["content"][0]["text"] == "b" and session.connected
        await pool.aclose()
        tg.cancel_scope.cancel()
