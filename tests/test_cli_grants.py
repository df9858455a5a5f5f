"""OAuth grants through the `junction` CLI: a client logs in through the gateway's authorization
server (real HTTP), then `junction grants list` shows the grant and `junction grants revoke` ends it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Gateway
from test_cli import Cli, _base_env, one_line_error
from test_oauth_server import gw, login, register, rpc
from test_tokens import mint

__all__ = ["gw"]  # the fixture: namespaces `team` and `other` on a fresh gateway


def _cli(gateway: Gateway, tmp_path: Path, key: str) -> Cli:
    env = {**_base_env(tmp_path), "JUNCTION_URL": gateway.url, "JUNCTION_API_KEY": key}
    return Cli(tmp_path / "cfg", env)


@pytest.fixture
def admin(gw: Gateway, tmp_path: Path) -> Cli:
    """A CLI using the admin API key."""
    return _cli(gw, tmp_path / "admin", gw.admin_key)


def _row(listing: str, grant_id: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(grant_id))


def test_a_grant_is_listed_as_a_table_and_as_the_apis_json(gw: Gateway, admin: Cli) -> None:
    assert admin("grants", "list").stdout == "(none)\n"
    assert admin.json("grants", "list") == {"grants": []}

    client = register(gw, client_name="Claude Desktop")["client_id"]
    login(gw, client, "team", gw.admin_key)

    listed = admin.json("grants", "list")
    with gw.client() as rest:
        assert listed == rest.get("/oauth/grants").json()
    (grant,) = listed["grants"]
    assert grant["clientId"] == client and grant["clientName"] == "Claude Desktop"
    assert grant["namespace"] == "team" and grant["id"].startswith("grt_")

    rows = admin("grants", "list").stdout.splitlines()
    assert rows[0].split() == ["ID", "CLIENT", "NAMESPACE", "SCOPE", "SUBJECT", "EXPIRES"]
    row = _row("\n".join(rows), grant["id"])
    for shown in ("Claude Desktop", "team", "read execute", grant["subject"], grant["expiresAt"]):
        assert shown in row, row


def test_revoking_a_grant_removes_it_and_ends_its_tokens_at_once(gw: Gateway, admin: Cli) -> None:
    client = register(gw, client_name="Cursor")["client_id"]
    kept_client = register(gw, client_name="Kept")["client_id"]
    tokens = login(gw, client, "team", gw.admin_key)
    kept = login(gw, kept_client, "team", gw.admin_key)
    assert rpc(gw, "/mcp/team", tokens["access_token"], "tools/list").status_code == 200
    by_client = {g["clientId"]: g["id"] for g in admin.json("grants", "list")["grants"]}
    grant_id = by_client[client]

    assert admin("grants", "revoke", grant_id).stdout == f"Revoked {grant_id}\n"
    remaining = admin.json("grants", "list")["grants"]
    assert [g["id"] for g in remaining] == [by_client[kept_client]]
    assert grant_id not in admin("grants", "list").stdout
    assert rpc(gw, "/mcp/team", tokens["access_token"], "tools/list").status_code == 401
    assert rpc(gw, "/mcp/team", kept["access_token"], "tools/list").status_code == 200  # only that one

    # Revoking it again is refused like an unknown token: one line, exit 1, no traceback.
    again = one_line_error(admin("grants", "revoke", grant_id, check=False))
    assert again == (
        f"error: could not revoke 1 of 1 ({grant_id}: grant {grant_id!r} not found (404 not_found))"
    )


def test_unknown_ids_are_reported_and_the_others_still_revoked(gw: Gateway, admin: Cli) -> None:
    unknown = one_line_error(admin("grants", "revoke", "grt_nope", check=False))
    assert unknown == "error: could not revoke 1 of 1 (grt_nope: grant 'grt_nope' not found (404 not_found))"

    client = register(gw)["client_id"]
    tokens = login(gw, client, "team", gw.admin_key)
    (grant,) = admin.json("grants", "list")["grants"]
    mixed = admin("grants", "revoke", "grt_nope", grant["id"], check=False)
    assert mixed.stdout == f"Revoked {grant['id']}\n"
    line = one_line_error(mixed)
    assert line.startswith("error: could not revoke 1 of 2 (grt_nope: ") and "not found" in line
    assert rpc(gw, "/mcp/team", tokens["access_token"], "tools/list").status_code == 401

    as_json = admin("grants", "revoke", "grt_nope", "--json", check=False)
    assert as_json.returncode == 1 and as_json.stderr.startswith("error: could not revoke 1 of 1")
    assert '"success": false' in as_json.stdout and '"status": 404' in as_json.stdout
    # No id at all is a usage error (exit 2), as for `tokens revoke`.
    assert "Missing argument" in one_line_error(admin("grants", "revoke", check=False), 2)


def test_a_service_token_and_an_access_token_see_only_their_own_grants(
    gw: Gateway, admin: Cli, tmp_path: Path
) -> None:
    with gw.client() as rest:
        user_token = mint(rest, {"namespaces": "team", "metadata": {"userId": "alice"}})
    by_admin = login(gw, register(gw, client_name="Admin's")["client_id"], "team", gw.admin_key)
    by_alice = login(gw, register(gw, client_name="Alice's")["client_id"], "team", user_token)
    names = {g["clientName"]: g["id"] for g in admin.json("grants", "list")["grants"]}
    assert set(names) == {"Admin's", "Alice's"}

    alice = _cli(gw, tmp_path / "alice", user_token)
    assert [g["clientName"] for g in alice.json("grants", "list")["grants"]] == ["Alice's"]
    assert "Admin's" not in alice("grants", "list").stdout
    # Another's grant does not exist for her: the same error as an unknown id.
    refused = one_line_error(alice("grants", "revoke", names["Admin's"], check=False))
    assert "not found (404 not_found)" in refused
    assert rpc(gw, "/mcp/team", by_admin["access_token"], "tools/list").status_code == 200

    # A client's own access token sees, and may revoke, its own grant only.
    own = _cli(gw, tmp_path / "own", by_alice["access_token"])
    alices = names["Alice's"]
    assert [g["id"] for g in own.json("grants", "list")["grants"]] == [alices]
    assert own("grants", "revoke", alices).stdout == f"Revoked {alices}\n"
    gone = one_line_error(own("grants", "list", check=False))
    assert gone.startswith("error: the credential in $JUNCTION_API_KEY is invalid, expired or revoked")
    assert [g["clientName"] for g in admin.json("grants", "list")["grants"]] == ["Admin's"]
