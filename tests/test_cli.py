"""The `junction` CLI as a user runs it: a real process against a real gateway and upstreams."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT


class Cli:
    def __init__(self, config_dir: Path, env: dict[str, str]):
        self.config_dir = config_dir
        self.env = env

    def __call__(self, *args: str, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            cwd=REPO_ROOT,
            env={**self.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from conftest import Gateway

    shared = Gateway(tmp_path_factory.mktemp("cli-gateway")).start(attempts=3)
    yield shared
    shared.stop()


@pytest.fixture
def cli(gateway, tmp_path: Path) -> Cli:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUNCTION_")}
    env.update({"JUNCTION_CONFIG_DIR": str(tmp_path / "cfg"), "JUNCTION_URL": gateway.url})
    return Cli(tmp_path / "cfg", env)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.stdout
    return lines[-1]


def test_login_stores_the_key_owner_only_and_rejects_bad_keys(cli: Cli, gateway) -> None:  # type: ignore[no-untyped-def]
    bad = cli("auth", "login", "--key", "nope", check=False)
    assert "invalid API key" in _one_line_error(bad) and bad.returncode == 1
    cli("auth", "login", "--key", gateway.admin_key)
    config = cli.config_dir / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["apiKey"] == gateway.admin_key
    whoami = cli("auth", "whoami").stdout
    assert gateway.url in whoami and gateway.admin_key not in whoami


def test_the_whole_flow(cli: Cli, gateway, modern_upstream, dotted_upstream) -> None:  # type: ignore[no-untyped-def]
    cli("auth", "login", "--key", gateway.admin_key)
    cli("namespace", "create", "cli-flow")
    assert "cli-flow" in cli("namespace", "list").stdout
    assert "does not exist" in _one_line_error(cli("namespace", "use", "nope-nope", check=False))
    cli("namespace", "use", "cli-flow")
    assert cli("namespace", "show").stdout.strip() == "cli-flow"

    added = cli(
        "mcp", "add", modern_upstream.url, "--id", "echo", "--name", "Echo",
        "--metadata", '{"userId": "u1"}', "--headers", '{"X-Api-Key": "cli-secret"}', "--json",
    )  # fmt: skip
    connection = json.loads(added.stdout)
    assert connection["status"] == {"state": "connected"} and connection["headerNames"] == ["X-Api-Key"]
    assert "cli-secret" not in added.stdout
    cli("mcp", "add", dotted_upstream.url, "--id", "gh", "--metadata", '{"userId": "u2"}')

    listing = cli("mcp", "list").stdout
    assert "echo" in listing and "gh" in listing and "connected" in listing
    only_u1 = json.loads(cli("mcp", "list", "--metadata", '{"userId": "u1"}', "--json").stdout)
    assert [c["connectionId"] for c in only_u1["connections"]] == ["echo"]
    assert "Echo" in cli("mcp", "get", "echo").stdout

    tools = cli("tool", "list", "gh").stdout
    assert "repo.search" in tools and "issues.create" in tools
    assert "repo.get" not in cli("tool", "list", "gh", "issues.").stdout
    schema = cli("tool", "get", "gh", "repo.search").stdout
    assert "repo.search" in schema and "query" in schema
    assert cli("tool", "call", "gh", "repo.search", '{"query": "mcp"}').stdout.strip() == "search:mcp"
    assert json.loads(cli("tool", "call", "gh", "issues.create", '{"title": "t"}').stdout) == {"created": "t"}
    assert cli("tool", "call", "echo", "headers", '{"name": "x-api-key"}').stdout.strip() == "cli-secret"
    full = json.loads(cli("tool", "call", "echo", "add", '{"a": 1, "b": 2}', "--json").stdout)
    assert full["structuredContent"] == {"sum": 3}

    failed = cli("tool", "call", "echo", "fail", check=False)
    assert failed.returncode == 1 and "boom" in failed.stdout

    cli("mcp", "remove", "gh")
    assert "not found" in _one_line_error(cli("mcp", "get", "gh", check=False))


def test_user_mistakes_are_one_line_errors(cli: Cli, gateway, modern_upstream) -> None:  # type: ignore[no-untyped-def]
    env = {"JUNCTION_API_KEY": gateway.admin_key}
    assert "namespace" in _one_line_error(cli("mcp", "list", check=False, **env))
    cli("namespace", "create", "cli-errors", **env)
    ns = ["-n", "cli-errors"]
    assert "JSON object" in _one_line_error(cli("mcp", "add", modern_upstream.url, "--metadata", "[1]", *ns, check=False, **env))
    bad_args = cli("tool", "call", "x", "echo", "{oops", *ns, check=False, **env)
    assert bad_args.returncode == 2 and "JSON object" in _one_line_error(bad_args)
    assert "not found" in _one_line_error(cli("tool", "list", "missing", *ns, check=False, **env))
    assert "mcpUrl" in _one_line_error(cli("mcp", "add", "ftp://nowhere", *ns, check=False, **env))
    unreachable = cli("namespace", "list", check=False, JUNCTION_URL="http://127.0.0.1:9", **env)
    assert "cannot reach the gateway" in _one_line_error(unreachable)
    assert "API key" in _one_line_error(cli("namespace", "list", check=False))


def test_keys_commands(cli: Cli, gateway) -> None:  # type: ignore[no-untyped-def]
    env = {"JUNCTION_API_KEY": gateway.admin_key}
    created = json.loads(cli("keys", "create", "--name", "ci", "--json", **env).stdout)
    assert created["key"].startswith("jct_")
    assert created["id"] in cli("keys", "list", **env).stdout
    assert created["key"] not in cli("keys", "list", "--json", **env).stdout
    assert cli("namespace", "list", JUNCTION_API_KEY=created["key"]).returncode == 0
    cli("keys", "revoke", created["id"], **env)
    assert "401" in _one_line_error(cli("namespace", "list", check=False, JUNCTION_API_KEY=created["key"]))
