"""The `junction` CLI, continued: adding without duplicates, partial removals, confirmations,
secrets off the command line, `serve`'s port and readiness, tool paths shared with REST."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from conftest import REPO_ROOT, Gateway, Upstream, free_port
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from test_cli import Cli, _base_env, one_line_error


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the whole module (each test uses its own namespace)."""
    shared = Gateway(tmp_path_factory.mktemp("cli-more-gateway")).start(attempts=3)
    yield shared
    shared.stop()


@pytest.fixture
def cli(gateway: Gateway, tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    """A CLI logged in to the gateway, in a namespace of its own (named after the test)."""
    ns = "m-" + request.node.name.removeprefix("test_").replace("_", "-")[:30].strip("-")
    env = {**_base_env(tmp_path), "JUNCTION_URL": gateway.url, "JUNCTION_API_KEY": gateway.admin_key}
    cli = Cli(tmp_path / "cfg", {**env, "JUNCTION_NAMESPACE": ns})
    cli("namespace", "create", ns)
    return cli


def _ids(cli: Cli) -> list[str]:
    return sorted(c["connectionId"] for c in cli.json("mcp", "list")["connections"])


# --- mcp add / remove ----------------------------------------------------------------------------


def test_add_without_id_reuses_the_connection_that_has_the_url(cli: Cli, modern_upstream: Upstream) -> None:
    first = cli.json("mcp", "add", modern_upstream.url)
    again = cli("mcp", "add", modern_upstream.url, "--name", "Echo", "--headers", '{"X-Api-Key": "k1"}')
    assert f"Updated connection {first['connectionId']}" in again.stderr
    assert _ids(cli) == [first["connectionId"]]
    shown = cli.json("mcp", "get", first["connectionId"])
    assert shown["name"] == "Echo" and shown["headerNames"] == ["X-Api-Key"]

    # Other metadata (another user's connection to the same server) is another connection...
    user = cli.json("mcp", "add", modern_upstream.url, "--metadata", '{"userId": "u1"}')
    assert user["connectionId"] != first["connectionId"] and len(_ids(cli)) == 2
    same_user = cli.json("mcp", "add", modern_upstream.url, "--metadata", '{"userId": "u1"}')
    assert same_user["connectionId"] == user["connectionId"]
    assert len(_ids(cli)) == 2
    # ... and without --metadata two candidates are a question, not a guess.
    ambiguous = one_line_error(cli("mcp", "add", modern_upstream.url, check=False))
    assert "2 connections already use" in ambiguous and "--new" in ambiguous
    assert len(_ids(cli)) == 2
    added = cli.json("mcp", "add", modern_upstream.url, "--new")
    assert added["connectionId"] not in (first["connectionId"], user["connectionId"]) and len(_ids(cli)) == 3
    assert "exclude each other" in one_line_error(
        cli("mcp", "add", modern_upstream.url, "--new", "--id", "x", check=False), exit_code=2
    )


def test_add_exits_1_when_the_connection_cannot_connect(cli: Cli) -> None:
    down_url = f"http://127.0.0.1:{free_port()}/mcp"
    added = cli("mcp", "add", down_url, "--id", "down", check=False)
    assert "status:   error: " in added.stdout
    line = one_line_error(added)
    assert (
        line.startswith("error: connection down is saved but cannot connect: ") and "mcp remove down" in line
    )
    as_json = cli("mcp", "add", down_url, "--id", "down", "--json", check=False)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["status"]["state"] == "error"
    assert _ids(cli) == ["down"]


def test_remove_removes_what_it_can_and_reports_the_rest(cli: Cli, modern_upstream: Upstream) -> None:
    for cid in ("a", "b"):
        cli("mcp", "add", modern_upstream.url, "--id", cid)
    result = cli("mcp", "remove", "a", "ghost", "b", "a", check=False)
    assert result.stdout == "Removed a\nRemoved b\n"
    line = one_line_error(result)
    assert line.startswith("error: could not remove 1 of 3 (ghost: ") and "not found" in line
    assert _ids(cli) == []

    cli("mcp", "add", modern_upstream.url, "--id", "c")
    as_json = cli("mcp", "remove", "ghost", "c", "--json", check=False)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["success"] is False and report["removed"] == ["c"]
    assert [(f["connectionId"], f["error"], f["status"]) for f in report["failed"]] == [
        ("ghost", "not_found", 404)
    ]
    cli("mcp", "add", modern_upstream.url, "--id", "d")
    assert cli.json("mcp", "remove", "d") == {"success": True, "removed": ["d"], "failed": []}


# --- secrets from a file or stdin ----------------------------------------------------------------


def test_headers_and_arguments_from_a_file_or_stdin(
    cli: Cli, modern_upstream: Upstream, tmp_path: Path
) -> None:
    secret_file = tmp_path / "headers.json"
    secret_file.write_text('{"X-Api-Key": "from-a-file"}')
    cli("mcp", "add", modern_upstream.url, "--id", "f", "--headers", f"@{secret_file}")
    header = '{"name": "x-api-key"}'
    assert cli("tool", "call", "f", "headers", header).stdout == "from-a-file\n"

    cli("mcp", "add", modern_upstream.url, "--id", "f", "--headers", "-", stdin='{"X-Api-Key": "from-stdin"}')
    assert cli("tool", "call", "f", "headers", "-", stdin=header).stdout == "from-stdin\n"

    missing = one_line_error(
        cli("mcp", "add", modern_upstream.url, "--headers", "@nope.json", check=False), 2
    )
    assert "cannot read --headers from nope.json" in missing
    secret_file.write_text("X-Api-Key: v")
    bad = one_line_error(
        cli("mcp", "add", modern_upstream.url, "--headers", f"@{secret_file}", check=False), 2
    )
    assert f"--headers (from {secret_file}) is not valid JSON" in bad
    twice = cli(
        "mcp", "add", modern_upstream.url, "--metadata", "-", "--headers", "-", check=False, stdin="{}"
    )
    assert "cannot both be read from stdin" in one_line_error(twice, 2)


# --- namespaces ----------------------------------------------------------------------------------


def _on_a_terminal(cli: Cli, args: list[str], answer: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stdout/stderr, answering its question."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env=cli.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    out = b""
    answered = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not answered and b"[y/N]" in out:
                os.write(master, answer.encode() + b"\n")
                answered = True
        return proc.wait(10), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_namespace_delete_asks_on_a_terminal_and_refuses_without_one(
    cli: Cli, modern_upstream: Upstream
) -> None:
    cli("namespace", "create", "m-doomed")
    cli("mcp", "add", modern_upstream.url, "--id", "x", "-n", "m-doomed")
    refused = one_line_error(cli("namespace", "delete", "m-doomed", check=False), exit_code=2)
    assert "stdin is not a terminal; pass --yes" in refused

    code, out = _on_a_terminal(cli, ["namespace", "delete", "m-doomed"], "n")
    assert "Delete namespace m-doomed and its 1 connection? This cannot be undone. [y/N]" in out
    assert code == 1 and "namespace m-doomed was not deleted" in out
    assert "m-doomed" in [n["name"] for n in cli.json("namespace", "list")["namespaces"]]

    code, out = _on_a_terminal(cli, ["namespace", "delete", "m-doomed"], "y")
    assert code == 0 and "Deleted namespace m-doomed" in out
    assert "m-doomed" not in [n["name"] for n in cli.json("namespace", "list")["namespaces"]]
    code, out = _on_a_terminal(cli, ["namespace", "delete", "m-doomed"], "y")
    assert code == 1 and "not found" in out and "[y/N]" not in out  # nothing to confirm
    assert "not found" in one_line_error(cli("namespace", "delete", "m-gone", "-y", check=False))


def _tool_names(gateway: Gateway, ns: str) -> list[str]:
    async def listing() -> list[str]:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {gateway.admin_key}"}) as http,
            Client(streamable_http_client(gateway.mcp_url(ns), http_client=http)) as client,
        ):
            return sorted(t.name for t in (await client.list_tools()).tools)

    return anyio.run(listing)


def test_namespace_set_tool_names(cli: Cli, gateway: Gateway, dotted_upstream: Upstream) -> None:
    ns = cli.env["JUNCTION_NAMESPACE"]
    cli("mcp", "add", dotted_upstream.url, "--id", "gh")
    assert "gh__repo_search" in _tool_names(gateway, ns)  # safe by default, whoever asks

    assert (
        cli("namespace", "set", ns, "--tool-names", "dotted").stdout == f"Namespace {ns}: tool names dotted\n"
    )
    assert "gh.repo.search" in _tool_names(gateway, ns)
    listed = {n["name"]: n for n in cli.json("namespace", "list")["namespaces"]}
    assert listed[ns]["toolNames"] == "dotted"
    assert cli.json("namespace", "set", ns, "--tool-names", "auto")["toolNames"] == "auto"
    assert "gh__repo_search" in _tool_names(gateway, ns)

    missing = one_line_error(cli("namespace", "set", "m-no-such", "--tool-names", "safe", check=False))
    assert "not found" in missing
    assert "m-no-such" not in [n["name"] for n in cli.json("namespace", "list")["namespaces"]]
    assert "nothing to set" in one_line_error(cli("namespace", "set", ns, check=False), exit_code=2)
    assert "--tool-names" in one_line_error(cli("namespace", "set", ns, "--tool-names", "x", check=False), 2)
    assert (
        cli.json("namespace", "create", "m-created-dotted", "--tool-names", "dotted")["toolNames"] == "dotted"
    )


# --- tool paths: one rule for REST and the CLI ---------------------------------------------------


def test_rest_and_cli_find_slashed_and_dotted_tool_names_alike(
    cli: Cli, gateway: Gateway, fastmcp_upstream: Upstream
) -> None:
    ns = cli.env["JUNCTION_NAMESPACE"]
    cli("mcp", "add", fastmcp_upstream.url, "--id", "fm")
    with gateway.client() as http:
        for path in ("files/read", "files.read", "files%2Fread"):
            assert http.get(f"/{ns}/fm/.tools/{path}").json()["name"] == "files/read", path
            called = http.post(f"/{ns}/fm/.tools/{path}", json={"path": "a"}).json()
            assert called["content"][0]["text"] == "contents of a", path
        for path in ("math.multiply", "math/multiply", "math%2Fmultiply"):
            assert http.get(f"/{ns}/fm/.tools/{path}").json()["name"] == "math.multiply", path
        assert [t["name"] for t in http.get(f"/{ns}/fm/.tools/files").json()["tools"]] == ["files/read"]
        assert http.get(f"/{ns}/fm/.tools/files.nope").status_code == 404
    for name in ("files/read", "files.read"):
        assert cli.json("tool", "get", "fm", name)["name"] == "files/read"
        called = cli.json("tool", "call", "fm", name, '{"path": "b"}')
        assert called["content"][0]["text"] == "contents of b"
    for name in ("math.multiply", "math/multiply"):
        assert cli.json("tool", "call", "fm", name, '{"a": 2, "b": 3}')["isError"] is False
    assert "files/read" in cli("tool", "get", "fm", "files").stdout  # a group lists its tools


# --- serve ---------------------------------------------------------------------------------------


def _serve_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUNCTION_")}
    return {
        **env,
        "JUNCTION_CONFIG": str(tmp_path / "config.toml"),
        "JUNCTION_DATA_DIR": str(tmp_path / "data"),
        "JUNCTION_ADMIN_KEY": "test-admin-serve-" + "x" * 24,
        "JUNCTION_LOG_LEVEL": "warning",
    }


@pytest.mark.parametrize(("args", "env", "says", "code"), [
    (["--port", "0"], {}, "0 is not in the range 1<=x<=65535", 2),
    (["--port", "65536"], {}, "65536 is not in the range 1<=x<=65535", 2),
    (["--port", "http"], {}, "'http' is not a valid integer range", 2),
    ([], {"JUNCTION_PORT": "70000"}, "the port must be between 1 and 65535, got 70000", 1),
])  # fmt: skip
def test_serve_rejects_ports_out_of_range(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str, code: int
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", *args],
        cwd=REPO_ROOT,
        env={**_serve_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    line = one_line_error(result, exit_code=code)
    assert says in line, line
    assert not (tmp_path / "data").exists()  # nothing started


def test_serve_says_listening_only_once_the_port_is_bound(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port)],
            cwd=REPO_ROOT,
            env=_serve_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert busy.returncode != 0
    assert "listening" not in busy.stderr and "already in use" in busy.stderr.lower(), busy.stderr

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=_serve_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "listening" in line:
                break
        assert lines and lines[-1].strip().endswith(f"listening on http://127.0.0.1:{port}"), lines
        # No polling: the line is the promise that a connection is accepted now.
        assert httpx2.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


# --- waiting for a gateway that is starting ------------------------------------------------------


class _Namespaces(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        body = json.dumps({"namespaces": [], "pagination": {}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_commands_wait_a_few_seconds_for_a_gateway_that_is_starting(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    late: dict[str, HTTPServer] = {}

    def start_late() -> None:
        time.sleep(1.0)
        late["server"] = HTTPServer(("127.0.0.1", port), _Namespaces)
        late["server"].serve_forever()

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    cli = Cli(tmp_path / "cfg", {**_base_env(tmp_path), "JUNCTION_URL": url, "JUNCTION_API_KEY": "k"})
    try:
        started = time.monotonic()
        assert cli.json("namespace", "list") == {"namespaces": []}
        assert time.monotonic() - started >= 0.9
    finally:
        deadline = time.monotonic() + 5
        while "server" not in late and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(KeyError):
            late["server"].shutdown()
            late["server"].server_close()

    # The wait is bounded ($JUNCTION_CONNECT_WAIT seconds), then the usual one-line error.
    nobody = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = cli("namespace", "list", check=False, JUNCTION_URL=nobody, JUNCTION_CONNECT_WAIT="1")
    assert (
        one_line_error(result) == f"error: cannot reach the gateway at {nobody}; is `junction serve` running?"
    )
    assert 0.8 <= time.monotonic() - started < 10
    bad = cli("namespace", "list", check=False, JUNCTION_CONNECT_WAIT="soon")
    assert "JUNCTION_CONNECT_WAIT" in one_line_error(bad)
