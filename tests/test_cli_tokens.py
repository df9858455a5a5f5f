"""Service tokens through the `junction` CLI: minted with `auth token`, then used as
`JUNCTION_API_KEY=$TOKEN junction ...` against a real gateway, listed and revoked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Gateway, Upstream, free_port
from test_cli import Cli, _base_env, one_line_error

ALICE = '{"namespaces": "app", "metadata": {"userId": "alice"}}'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the whole module."""
    shared = Gateway(tmp_path_factory.mktemp("cli-tokens-gateway")).start(attempts=3)
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def users(gateway: Gateway, modern_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    """Namespace `app` with one connection for alice and one for bob; namespace `other` with one."""
    admin = _cli(gateway, tmp_path_factory.mktemp("cli-tokens-setup"), gateway.admin_key)
    for ns in ("app", "other"):
        admin("namespace", "create", ns)
    for ns, cid, user in (
        ("app", "alice-echo", "alice"),
        ("app", "bob-echo", "bob"),
        ("other", "x", "alice"),
    ):
        metadata = json.dumps({"userId": user})
        admin("mcp", "add", modern_upstream.url, "-n", ns, "--id", cid, "--metadata", metadata)
    return gateway


def _cli(gateway: Gateway, tmp_path: Path, key: str | None = None) -> Cli:
    env = {**_base_env(tmp_path), "JUNCTION_URL": gateway.url}
    if key:
        env["JUNCTION_API_KEY"] = key
    return Cli(tmp_path / "cfg", env)


@pytest.fixture
def admin(users: Gateway, tmp_path: Path) -> Cli:
    """A CLI using the admin API key."""
    return _cli(users, tmp_path / "admin", users.admin_key)


@pytest.fixture
def cli(users: Gateway, tmp_path: Path) -> Cli:
    """A CLI with no credential of its own: each test gives it a token."""
    return _cli(users, tmp_path / "user")


def mint(admin: Cli, *args: str) -> str:
    minted = admin("auth", "token", *args)
    token = minted.stdout.removesuffix("\n")
    assert token and "\n" not in token and " " not in token, minted.stdout  # TOKEN=$(...) works
    assert minted.stderr.startswith("Expires at "), minted.stderr
    return token


# --- without a gateway ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ('{"namespaces": "app"', "--policy is not valid JSON"),
        ('"app"', "--policy must be a JSON object or a non-empty list of objects"),
        ("[]", "--policy must be a JSON object or a non-empty list of objects"),
        ('[{"namespaces": "app"}, 1]', "--policy must be a JSON object or a non-empty list of objects"),
    ],
)
def test_a_policy_that_is_not_json_constraints_fails_before_any_request(
    tmp_path: Path, policy: str, says: str
) -> None:
    # Nothing listens and there is no credential: the policy is refused before either matters.
    env = {
        **_base_env(tmp_path),
        "JUNCTION_URL": f"http://127.0.0.1:{free_port()}",
        "JUNCTION_CONNECT_WAIT": "0",
    }
    offline = Cli(tmp_path / "cfg", env)
    line = one_line_error(
        offline("auth", "token", "--policy", '{"ttl": "1h"}', "--policy", policy, check=False), 2
    )
    assert says in line and "--help" in line


# --- against a gateway ---------------------------------------------------------------------------


def test_a_user_token_sees_and_uses_only_that_users_connections(
    admin: Cli, cli: Cli, modern_upstream: Upstream
) -> None:
    token = mint(admin, "--policy", ALICE, "--ttl", "1h")
    cli.env.update({"JUNCTION_API_KEY": token, "JUNCTION_NAMESPACE": "app"})

    assert [c["connectionId"] for c in cli.json("mcp", "list")["connections"]] == ["alice-echo"]
    listing = cli("mcp", "list").stdout
    assert "alice-echo" in listing and "bob-echo" not in listing
    assert cli.json("mcp", "get", "alice-echo")["metadata"] == {"userId": "alice"}
    assert "echo" in cli("tool", "list", "alice-echo").stdout
    assert cli("tool", "call", "alice-echo", "echo", '{"text": "hi alice"}').stdout.strip() == "hi alice"

    # Bob's connections do not exist for her: the same error as a missing one.
    for args in (
        ["mcp", "get", "bob-echo"],
        ["tool", "list", "bob-echo"],
        ["tool", "call", "bob-echo", "echo"],
    ):
        line = one_line_error(cli(*args, check=False))
        assert "not found" in line and "(404 not_found)" in line, line
    # Beyond her policy: one line naming what this credential may not do, and no traceback.
    other = one_line_error(cli("mcp", "list", "-n", "other", check=False))
    assert other == "error: permission denied: this credential may not read connections in namespace 'other'"
    assert one_line_error(cli("keys", "list", check=False)).startswith("error: permission denied: ")
    refused = one_line_error(cli("mcp", "add", modern_upstream.url, "--new", check=False))
    assert refused.startswith("error: permission denied: ")
    # She may add a connection of her own.
    added = cli.json("mcp", "add", modern_upstream.url, "--new", "--metadata", '{"userId": "alice"}')
    assert added["metadata"] == {"userId": "alice"}
    assert len(cli.json("mcp", "list")["connections"]) == 2
    cli("mcp", "remove", added["connectionId"])
    assert token not in "".join(cli.transcript[1::2])  # never echoed on stderr


def test_policies_add_up_and_no_policy_means_the_callers_rights(admin: Cli, cli: Cli) -> None:
    minted = admin.json(
        "auth", "token", "--policy", ALICE,
        "--policy", '[{"namespaces": "other", "operations": "read", "ttl": "10m"}]',
    )  # fmt: skip
    assert set(minted) == {"token", "expiresAt", "id"}
    cli.env["JUNCTION_API_KEY"] = minted["token"]
    assert [c["connectionId"] for c in cli.json("mcp", "list", "-n", "app")["connections"]] == ["alice-echo"]
    assert [c["connectionId"] for c in cli.json("mcp", "list", "-n", "other")["connections"]] == ["x"]
    call = cli("tool", "call", "-n", "other", "x", "echo", '{"text": "no"}', check=False)
    assert one_line_error(call).startswith("error: permission denied: ")

    listed = {t["id"]: t for t in admin.json("tokens", "list")["tokens"]}
    alice, other = listed[minted["id"]]["policy"]
    assert other["namespaces"] == ["other"] and other["expiresAt"] < alice["expiresAt"]  # 10m, not 1h

    everything = mint(admin)
    names = {n["name"] for n in cli.json("namespace", "list", JUNCTION_API_KEY=everything)["namespaces"]}
    assert {"app", "other"} <= names


def test_login_accepts_a_token_that_may_not_list_namespaces(admin: Cli, cli: Cli, users: Gateway) -> None:
    token = mint(admin, "--policy", '{"namespaces": "app", "resources": "connections"}')
    assert users.url in cli("auth", "login", "--key", token).stdout
    assert json.loads(cli.config_file.read_text())["apiKey"] == token
    used = cli("namespace", "use", "app")
    assert used.stdout == "Using namespace app\n" and "may not list namespaces" in used.stderr
    assert {c["connectionId"] for c in cli.json("mcp", "list")["connections"]} == {"alice-echo", "bob-echo"}
    assert one_line_error(cli("namespace", "list", check=False)).startswith("error: permission denied: ")
    bad = one_line_error(cli("auth", "login", "--key", token[:-8] + "AAAAAAAA", check=False))
    assert bad == f"error: invalid API key for {users.url}"
    # whoami names a stored token by its id (every token starts alike), never by its secret part.
    minted = admin.json("auth", "token", "--policy", '{"namespaces": "app"}', "--json")
    cli("auth", "login", "--key", minted["token"])
    shown = cli.json("auth", "whoami")["apiKey"]
    assert shown == f"service token {minted['id']}"
    assert minted["token"].split(".")[2] not in cli("auth", "whoami").stdout


def test_tokens_are_listed_without_secrets_and_revoked_with_their_children(admin: Cli, cli: Cli) -> None:
    parent = admin.json("auth", "token", "--policy", ALICE)
    cli.env.update({"JUNCTION_API_KEY": parent["token"], "JUNCTION_NAMESPACE": "app"})
    child = cli.json("auth", "token", "--policy", '{"operations": "read"}')
    too_long = one_line_error(cli("auth", "token", "--ttl", "2h", check=False))
    assert too_long.startswith("error: permission denied: ")

    table = admin("tokens", "list").stdout
    rows = table.splitlines()
    assert rows[0].split() == ["ID", "PARENT", "EXPIRES", "POLICY"]
    row = next(r for r in rows if r.startswith(parent["id"]))
    assert "ns=app meta=userId:alice" in row
    child_row = next(r for r in cli("tokens", "list").stdout.splitlines() if r.startswith(child["id"]))
    assert child_row.split()[1] == parent["id"] and "ops=read" in child_row
    listed = table + admin("tokens", "list", "--json").stdout + cli("tokens", "list", "--json").stdout
    assert parent["token"] not in listed and child["token"] not in listed

    assert cli("mcp", "list", JUNCTION_API_KEY=child["token"]).returncode == 0
    assert admin("tokens", "revoke", parent["id"]).stdout == f"Revoked {parent['id']}\n"
    for token in (parent["token"], child["token"]):
        line = one_line_error(cli("mcp", "list", check=False, JUNCTION_API_KEY=token))
        assert line.startswith("error: the credential in $JUNCTION_API_KEY is invalid, expired or revoked")
        assert "401" in line and "junction auth token" in line
    again = one_line_error(admin("tokens", "revoke", parent["id"], check=False))
    assert "could not revoke 1 of 1" in again and "not found" in again


def test_a_revoked_stored_token_is_named_as_the_stored_credential(admin: Cli, cli: Cli) -> None:
    minted = admin.json("auth", "token", "--policy", ALICE)
    cli("auth", "login", "--key", minted["token"])
    assert admin.json("tokens", "revoke", minted["id"]) == {
        "success": True,
        "revoked": [minted["id"]],
        "failed": [],
    }
    line = one_line_error(cli("mcp", "list", "-n", "app", check=False))
    assert line.startswith("error: the stored credential is invalid, expired or revoked (401 unauthorized)")


def test_only_an_admin_key_rotates_the_signing_key(admin: Cli, cli: Cli) -> None:
    before = mint(admin, "--policy", ALICE)
    refused = one_line_error(cli("tokens", "rotate-key", check=False, JUNCTION_API_KEY=before))
    assert refused.startswith("error: permission denied: ")
    kid = admin.json("tokens", "rotate-key")["kid"]
    rotated = admin("tokens", "rotate-key").stdout
    assert rotated.startswith("New signing key ") and kid not in rotated  # a new key each time
    after = mint(admin, "--policy", ALICE)
    for token in (before, after):  # tokens signed with a retired key keep working until they expire
        assert cli.json("mcp", "list", "-n", "app", JUNCTION_API_KEY=token)["connections"]
