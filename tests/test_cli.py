"""The `junction` CLI as a user runs it: a real process, against a real gateway and real upstreams."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, Gateway, Upstream, free_port

Result = subprocess.CompletedProcess[str]


class Cli:
    """Runs `python -m proxy ...` with a private config directory; keeps everything it printed."""

    def __init__(self, config_dir: Path, env: dict[str, str]) -> None:
        self.config_dir = config_dir
        self.env = env
        self.transcript: list[str] = []

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.json"

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None, **env: str) -> Result:
        return self.run(args, env, check=check, stdin=stdin)

    def json(self, *args: str, **env: str) -> Any:
        return json.loads(self.run((*args, "--json"), env).stdout)

    def run(
        self, args: tuple[str, ...], env: dict[str, str], *, check: bool = True, stdin: str | None = None
    ) -> Result:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            cwd=REPO_ROOT,
            env={**self.env, **env},
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.transcript += [result.stdout, result.stderr]
        assert "Traceback" not in result.stderr, result.stderr
        if check:
            assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result


def one_line_error(result: Result, exit_code: int = 1) -> str:
    """The single line a failed command printed on stderr."""
    assert result.returncode == exit_code, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUNCTION_", "XDG_CONFIG_HOME"))}
    return {**env, "JUNCTION_CONFIG_DIR": str(tmp_path / "cfg")}


@pytest.fixture
def offline(tmp_path: Path) -> Cli:
    """A CLI pointed at a port where nothing listens (and that does not wait for a gateway to start)."""
    env = {
        **_base_env(tmp_path),
        "JUNCTION_URL": f"http://127.0.0.1:{free_port()}",
        "JUNCTION_CONNECT_WAIT": "0",
    }
    return Cli(tmp_path / "cfg", env)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the whole module (each test uses its own namespaces)."""
    shared = Gateway(tmp_path_factory.mktemp("cli-gateway")).start(attempts=3)
    yield shared
    shared.stop()


@pytest.fixture
def cli(gateway: Gateway, tmp_path: Path) -> Cli:
    """A CLI pointed at the gateway, not logged in."""
    return Cli(tmp_path / "cfg", {**_base_env(tmp_path), "JUNCTION_URL": gateway.url})


# --- without a gateway ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tool", "call", "-n", "ns", "conn", "echo", "{oops"], "ARGS_JSON is not valid JSON"),
        (["tool", "call", "-n", "ns", "conn", "echo", "[1, 2]"], "ARGS_JSON must be a JSON object"),
        (["mcp", "add", "-n", "ns", "http://x/mcp", "--metadata", "[1]"], "--metadata must be a JSON object"),
        (["mcp", "add", "-n", "ns", "http://x/mcp", "--headers", "X-Key: v"], "--headers is not valid JSON"),
        (["mcp", "list", "-n", "ns", "--metadata", '"u1"'], "--metadata must be a JSON object"),
        (["mcp", "list", "-n", "ns", "--limit", "0"], "--limit"),
        (["mcp", "add", "-n", "ns"], "Missing argument 'URL'"),
        (["mcp", "remove", "-n", "ns"], "Missing argument"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(offline: Cli, args: list[str], says: str) -> None:
    result = offline(*args, check=False)
    line = one_line_error(result, exit_code=2)
    assert says in line and "--help" in line
    assert result.stdout == ""


def test_missing_login_or_namespace_says_what_to_run(offline: Cli) -> None:
    assert "junction auth login" in one_line_error(offline("keys", "list", check=False))
    assert "junction auth login" in one_line_error(offline("mcp", "list", "-n", "ns", check=False))
    no_namespace = one_line_error(offline("mcp", "list", check=False, JUNCTION_API_KEY="k"))
    assert "junction namespace use <name>" in no_namespace
    assert "junction namespace use" in one_line_error(offline("namespace", "show", check=False))


def test_an_unreachable_gateway_is_one_line_error(offline: Cli) -> None:
    url = offline.env["JUNCTION_URL"]
    listing = offline("namespace", "list", check=False, JUNCTION_API_KEY="k")
    expected = f"error: cannot reach the gateway at {url}; is `junction serve` running?"
    assert one_line_error(listing) == expected
    assert one_line_error(offline("auth", "login", "--key", "k", check=False)) == expected
    assert not offline.config_file.exists()
    bad_url = offline("namespace", "list", check=False, JUNCTION_API_KEY="k", JUNCTION_URL="localhost:8080")
    assert "http://" in one_line_error(bad_url)


def test_stored_settings_follow_xdg_and_yield_to_the_environment(offline: Cli, tmp_path: Path) -> None:
    env = {k: v for k, v in offline.env.items() if k not in ("JUNCTION_CONFIG_DIR", "JUNCTION_URL")}
    key = "jct_" + "s3cret" * 6
    stored = {"url": "http://gateway.example:8080", "apiKey": key, "namespace": "stored-ns"}
    xdg = tmp_path / "xdg"
    (xdg / "junction").mkdir(parents=True)
    (xdg / "junction" / "config.json").write_text(json.dumps(stored))
    cli = Cli(xdg / "junction", {**env, "XDG_CONFIG_HOME": str(xdg)})

    assert cli.json("auth", "whoami") == {
        "url": "http://gateway.example:8080",
        "apiKey": key[:8] + "…",
        "namespace": "stored-ns",
    }
    assert key not in cli("auth", "whoami").stdout
    assert cli.json("auth", "whoami", JUNCTION_URL="http://other:1/")["url"] == "http://other:1"
    assert cli("namespace", "show").stdout == "stored-ns\n"
    assert cli.json("namespace", "show", JUNCTION_NAMESPACE="env-ns") == {"namespace": "env-ns"}

    home = Cli(tmp_path / "home" / ".config" / "junction", {**env, "HOME": str(tmp_path / "home")})
    assert "no API key" in one_line_error(home("auth", "whoami", check=False))
    home.config_dir.mkdir(parents=True)
    home.config_file.write_text(json.dumps(stored))
    assert home.json("auth", "whoami")["namespace"] == "stored-ns"


def test_logout_forgets_only_the_key(offline: Cli) -> None:
    offline.config_dir.mkdir()
    offline.config_file.write_text(json.dumps({"url": "http://g:1", "apiKey": "k" * 30, "namespace": "n"}))
    assert offline.json("auth", "logout") == {"success": True, "loggedOut": True}
    assert json.loads(offline.config_file.read_text()) == {"url": "http://g:1", "namespace": "n"}
    assert stat.S_IMODE(offline.config_file.stat().st_mode) == 0o600
    assert offline("auth", "logout").stdout == "Not logged in\n"
    assert "no API key" in one_line_error(offline("auth", "whoami", check=False))


def test_a_damaged_config_file_is_one_line_error(offline: Cli) -> None:
    offline.config_dir.mkdir()
    offline.config_file.write_text("{not json")
    assert str(offline.config_file) in one_line_error(offline("namespace", "show", check=False))


# --- against a gateway ---------------------------------------------------------------------------


def test_login_stores_the_key_owner_only_and_rejects_bad_keys(cli: Cli, gateway: Gateway) -> None:
    bad = one_line_error(cli("auth", "login", "--key", "not-a-key", check=False))
    assert bad == f"error: invalid API key for {gateway.url}"
    assert not cli.config_file.exists()

    assert gateway.url in cli("auth", "login", "--key", gateway.admin_key).stdout
    assert stat.S_IMODE(cli.config_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(cli.config_file.stat().st_mode) == 0o600
    assert json.loads(cli.config_file.read_text()) == {"url": gateway.url, "apiKey": gateway.admin_key}

    relogin = cli("auth", "login", "--json", stdin=gateway.admin_key + "\n")
    assert json.loads(relogin.stdout)["url"] == gateway.url and relogin.stderr == ""
    assert "no API key given" in one_line_error(cli("auth", "login", check=False, stdin=""))

    # Later commands need neither the URL nor the key in the environment.
    env = {k: v for k, v in cli.env.items() if k != "JUNCTION_URL"}
    stored = Cli(cli.config_dir, env)
    whoami = stored("auth", "whoami").stdout
    assert gateway.url in whoami and gateway.admin_key[:8] in whoami
    assert stored.json("namespace", "list")["namespaces"] is not None
    assert gateway.admin_key not in "".join(cli.transcript + stored.transcript)


def test_namespaces_and_connections(cli: Cli, gateway: Gateway, modern_upstream: Upstream) -> None:
    cli("auth", "login", "--key", gateway.admin_key)
    assert cli.json("namespace", "create", "cli-conns")["name"] == "cli-conns"
    cli("namespace", "create", "cli-other")
    names = [n["name"] for n in cli.json("namespace", "list")["namespaces"]]
    assert {"cli-conns", "cli-other"} <= set(names)
    assert "does not exist" in one_line_error(cli("namespace", "use", "nope-nope", check=False))
    assert cli("namespace", "use", "cli-conns").stdout == "Using namespace cli-conns\n"
    assert cli("namespace", "show").stdout == "cli-conns\n"
    starred = [line.split()[0] for line in cli("namespace", "list").stdout.splitlines() if line.endswith("*")]
    assert starred == ["cli-conns"]

    added = cli(
        "mcp", "add", modern_upstream.url, "--id", "echo", "--name", "Echo",
        "--metadata", '{"userId": "u1", "tier": 2}', "--headers", '{"X-Api-Key": "cli-secret"}', "--json",
    )  # fmt: skip
    connection = json.loads(added.stdout)
    assert connection["connectionId"] == "echo" and connection["status"] == {"state": "connected"}
    assert connection["metadata"] == {"userId": "u1", "tier": 2}
    assert connection["headerNames"] == ["X-Api-Key"]
    generated = cli("mcp", "add", modern_upstream.url, "--metadata", '{"userId": "u2"}').stdout
    assert "status:   connected" in generated and f"url:      {modern_upstream.url}" in generated
    generated_id = generated.split()[1]
    down_url = f"http://127.0.0.1:{free_port()}/mcp"
    down = cli("mcp", "add", down_url, "--id", "down", "--metadata", '{"userId": "u3"}', check=False)
    assert "status:   error: " in down.stdout  # the state and why, and a failed exit
    assert one_line_error(down).startswith("error: connection down is saved but cannot connect: ")

    listing = cli("mcp", "list").stdout.splitlines()
    assert listing[0].split() == ["ID", "NAME", "STATUS", "URL"] and len(listing) == 4
    assert any(line.startswith("echo ") and "connected" in line for line in listing)
    by_user = cli.json("mcp", "list", "--metadata", '{"userId": "u1"}')["connections"]
    assert [c["connectionId"] for c in by_user] == ["echo"]
    by_number = cli.json("mcp", "list", "--metadata", '{"userId": "u1", "tier": 2}')["connections"]
    assert [c["connectionId"] for c in by_number] == ["echo"]
    assert len(cli.json("mcp", "list", "--limit", "2")["connections"]) == 2
    assert cli.json("mcp", "list", "-n", "cli-other") == {"connections": []}
    assert cli("mcp", "list", JUNCTION_NAMESPACE="cli-other").stdout == "(none)\n"

    shown = cli("mcp", "get", "echo").stdout
    assert "name:     Echo" in shown and "X-Api-Key" in shown and "cli-secret" not in shown
    assert cli.json("mcp", "get", "down")["status"]["state"] == "error"

    assert cli("mcp", "remove", "down", generated_id).stdout.count("Removed") == 2
    assert [c["connectionId"] for c in cli.json("mcp", "list")["connections"]] == ["echo"]
    missing = one_line_error(cli("mcp", "get", "down", check=False))
    assert "not found" in missing and "404" in missing
    assert "cli-secret" not in "".join(cli.transcript)

    cli("namespace", "delete", "cli-other", "--yes")
    assert "cli-other" not in [n["name"] for n in cli.json("namespace", "list")["namespaces"]]


def test_tools(cli: Cli, gateway: Gateway, modern_upstream: Upstream, dotted_upstream: Upstream) -> None:
    env = {"JUNCTION_API_KEY": gateway.admin_key, "JUNCTION_NAMESPACE": "cli-tools"}
    cli.env.update(env)
    cli("namespace", "create", "cli-tools")
    cli("mcp", "add", modern_upstream.url, "--id", "echo", "--headers", '{"X-Api-Key": "cli-secret"}')
    cli("mcp", "add", dotted_upstream.url, "--id", "gh")

    tools = cli("tool", "list", "gh").stdout
    assert "repo.search" in tools and "issues.create" in tools
    assert "repo.get" not in cli("tool", "list", "gh", "issues.").stdout
    assert [t["name"] for t in cli.json("tool", "list", "gh", "repo.search")["tools"]] == ["repo.search"]

    shown = cli("tool", "get", "gh", "repo.search").stdout
    assert shown.startswith("repo.search\n") and '"query"' in shown
    schema = cli.json("tool", "get", "gh", "repo.search")
    assert schema["name"] == "repo.search" and "query" in schema["inputSchema"]["properties"]

    assert cli("tool", "call", "gh", "repo.search", '{"query": "mcp"}').stdout == "search:mcp\n"
    assert cli.json("tool", "call", "gh", "issues.create", '{"title": "t"}')["structuredContent"] == {
        "created": "t"
    }
    assert json.loads(cli("tool", "call", "gh", "issues.create", '{"title": "t"}').stdout) == {"created": "t"}
    assert cli("tool", "call", "echo", "headers", '{"name": "x-api-key"}').stdout == "cli-secret\n"
    assert json.loads(cli("tool", "call", "echo", "add", '{"a": 1, "b": 2}').stdout) == {"sum": 3}

    failed = cli("tool", "call", "echo", "fail", check=False)
    assert failed.returncode == 1 and "boom" in failed.stdout
    failed_json = cli("tool", "call", "echo", "fail", "--json", check=False)
    assert failed_json.returncode == 1 and json.loads(failed_json.stdout)["isError"] is True


def test_gateway_errors_are_one_line(cli: Cli, gateway: Gateway) -> None:
    cli.env.update({"JUNCTION_API_KEY": gateway.admin_key, "JUNCTION_NAMESPACE": "cli-errors"})
    cli("namespace", "create", "cli-errors")
    for args in (["tool", "list", "missing"], ["tool", "call", "missing", "x"], ["mcp", "get", "missing"]):
        line = one_line_error(cli(*args, check=False))
        assert "not found" in line and "(404 not_found)" in line, line
    assert "mcpUrl" in one_line_error(cli("mcp", "add", "ftp://nowhere", check=False))
    assert "401" in one_line_error(cli("namespace", "list", check=False, JUNCTION_API_KEY="wrong"))


def test_keys(cli: Cli, gateway: Gateway) -> None:
    cli.env["JUNCTION_API_KEY"] = gateway.admin_key
    created = cli("keys", "create", "--name", "ci")
    assert "not shown again" in created.stderr
    key = created.stdout.split()[-1]
    assert key.startswith("jct_")
    by_json = cli.json("keys", "create", "--name", "ci-json")
    listing = cli("keys", "list").stdout
    assert by_json["id"] in listing and "ci-json" in listing
    assert key not in listing and by_json["key"] not in cli("keys", "list", "--json").stdout
    assert "ci" in [k["name"] for k in cli.json("keys", "list")["keys"]]

    assert cli("namespace", "list", JUNCTION_API_KEY=key).returncode == 0
    ids = {k["name"]: k["id"] for k in cli.json("keys", "list")["keys"]}
    assert cli.json("keys", "revoke", ids["ci"]) == {"success": True}
    assert "401" in one_line_error(cli("namespace", "list", check=False, JUNCTION_API_KEY=key))
