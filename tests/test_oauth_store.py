"""The authorization server's rows in a real SQLite file: single use under concurrency, and
pruning what can no longer be used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from proxy.store import AuthCodeRecord, OAuthClientRecord, OAuthGrantRecord, open_store

pytestmark = pytest.mark.anyio


def _grant(grant_id: str, now: datetime, **changes: object) -> OAuthGrantRecord:
    values: dict[str, object] = dict(
        id=grant_id,
        client_id="jc_test",
        client_name="Test",
        redirect_uri="http://127.0.0.1:9/cb",
        resource="http://127.0.0.1:1/mcp/team",
        namespace="team",
        scope="read execute",
        key_id="key_1",
        login={"subject": "API key test", "tokenIds": [], "claims": [], "expiresAt": None},
        created_at=now,
        expires_at=now + timedelta(days=30),
    )
    values.update(changes)
    return OAuthGrantRecord(**values)  # type: ignore[arg-type]


async def test_a_code_and_a_refresh_token_are_used_once_even_when_raced(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'j.db'}")
    try:
        now = datetime.now(UTC)
        await store.oauth.add_grant(_grant("grt_a", now))
        await store.oauth.add_code(AuthCodeRecord("c" * 64, "grt_a", "x" * 43, now + timedelta(minutes=1)))
        await store.oauth.add_refresh_token("r" * 64, "grt_a", now)
        outcomes: list[str] = []

        async def use_both() -> None:
            outcomes.append((await store.oauth.use_code("c" * 64, now))[0])
            outcomes.append((await store.oauth.use_refresh_token("r" * 64, "jc_test", now))[0])

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(use_both)
        assert sorted(outcomes) == ["ok"] * 2 + ["used"] * 8
        assert (await store.oauth.use_code("d" * 64, now))[0] == "unknown"
    finally:
        await store.close()


async def test_prune_removes_spent_codes_and_the_refresh_tokens_of_ended_grants(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'j.db'}")
    try:
        now = datetime.now(UTC)
        await store.oauth.add_grant(_grant("grt_live", now))
        await store.oauth.add_grant(_grant("grt_gone", now))
        await store.oauth.add_grant(
            _grant("grt_old", now - timedelta(days=40), expires_at=now - timedelta(days=1))
        )
        await store.oauth.revoke_grant("grt_gone", now)
        await store.oauth.add_code(AuthCodeRecord("e" * 64, "grt_live", "x" * 43, now - timedelta(seconds=1)))
        await store.oauth.add_code(AuthCodeRecord("f" * 64, "grt_live", "x" * 43, now + timedelta(minutes=1)))
        for token, grant in (("1", "grt_live"), ("2", "grt_gone"), ("3", "grt_old")):
            await store.oauth.add_refresh_token(token * 64, grant, now)
        await store.oauth.use_refresh_token("1" * 64, "jc_test", now)  # used, but its grant lives: kept
        # Another client cannot spend a token that is not its own.
        assert (await store.oauth.use_refresh_token("1" * 64, "jc_other", now)) == ("unknown", None)
        day_old = now - timedelta(days=2)
        for client_id in ("jc_test", "jc_unused", "jc_new"):
            created = now if client_id == "jc_new" else day_old
            await store.oauth.add_client(OAuthClientRecord(client_id, {"redirect_uris": []}, created))
        assert await store.oauth.prune(now) == 4  # a code, two refresh tokens, jc_unused
        assert await store.oauth.client("jc_unused") is None
        assert (
            await store.oauth.client("jc_test") is not None and await store.oauth.client("jc_new") is not None
        )
        assert (await store.oauth.use_code("e" * 64, now))[0] == "unknown"
        assert (await store.oauth.use_code("f" * 64, now))[0] == "ok"
        assert (await store.oauth.use_refresh_token("1" * 64, "jc_test", now))[0] == "used"
        assert (await store.oauth.use_refresh_token("2" * 64, "jc_test", now))[0] == "unknown"
        assert (await store.oauth.use_refresh_token("3" * 64, "jc_test", now))[0] == "unknown"
        assert [g.id for g in await store.oauth.grants(None, now)] == ["grt_live"]
    finally:
        await store.close()
