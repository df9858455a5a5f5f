"""`junction mcp add` finishing a connection's setup: a server that needs settings (`input_required`)
is asked for them on a terminal (header values hidden), one that needs OAuth (`auth_required`) gets
its setup URL opened in the browser while the command waits; without a terminal both only say what
is needed. Real gateway, real upstreams: the `config` kind and the OAuth 2.1 upstream."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, Gateway, OAuthUpstream, Upstream
from test_cli import Cli, _base_env, one_line_error


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, config_upstream: Upstream) -> Iterator[Gateway]:
    """One gateway for the module, whose catalog lists the config upstream as `cfg`."""
    catalog = json.dumps([{"name": "cfg", "url": config_upstream.url}])
    shared = Gateway(tmp_path_factory.mktemp("cli-setup-gateway"), JUNCTION_SERVERS=catalog).start(attempts=3)
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def oauth_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthUpstream]:
    upstream = OAuthUpstream(tmp_path_factory.mktemp("cli-setup-oauth")).launch()
    yield upstream
    upstream.stop()


@pytest.fixture
def cli(gateway: Gateway, tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    """A CLI logged in to the gateway, in a namespace of its own (named after the test)."""
    ns = "s-" + request.node.name.removeprefix("test_").replace("_", "-")[:30].strip("-")
    env = {**_base_env(tmp_path), "JUNCTION_URL": gateway.url, "JUNCTION_API_KEY": gateway.admin_key}
    env = {k: v for k, v in env.items() if k not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
    cli = Cli(tmp_path / "cfg", {**env, "JUNCTION_NAMESPACE": ns})
    cli("namespace", "create", ns)
    return cli


def _whoami(cli: Cli, cid: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(cli("tool", "call", cid, "whoami").stdout)
    return answer


def _line_after(text: str, heading: str) -> str:
    """The line that follows the first line containing `heading`."""
    lines = text.splitlines()
    return next(lines[i + 1] for i, line in enumerate(lines) if heading in line)


# --- input_required ------------------------------------------------------------------------------


def test_without_a_terminal_it_says_which_settings_are_missing_and_how_to_give_them(
    cli: Cli, config_upstream: Upstream
) -> None:
    added = cli("mcp", "add", config_upstream.url, "--id", "svc")  # exit 0: saved, needs input
    out = added.stdout
    assert "status:   input_required: missing header x-api-key, query region" in out
    setup = next(line.split()[1] for line in out.splitlines() if line.startswith("setup:"))
    assert "/setup/" in setup and "/svc?t=" in setup
    assert "needs settings: header x-api-key (API key), query region (Region)." in out
    assert f"junction mcp add '{config_upstream.url}?region=<value>' --id svc --headers @headers.json" in out
    assert '{"x-api-key": "<value>"}' in out and added.stderr == ""

    as_json = cli("mcp", "add", config_upstream.url, "--id", "svc", "--json")
    status = json.loads(as_json.stdout)["status"]  # nothing but the JSON
    assert status["state"] == "input_required"
    assert status["missing"] == {"headers": ["x-api-key"], "query": ["region"]}

    # The command it suggests works (the header from stdin, off the command line).
    cli(
        "mcp",
        "add",
        f"{config_upstream.url}?region=us",
        "--id",
        "svc",
        "--headers",
        "-",
        stdin='{"x-api-key": "k-42"}',
    )
    assert cli.json("mcp", "get", "svc")["status"] == {"state": "connected"}
    assert _whoami(cli, "svc") == {"apiKey": "k-42", "region": "us", "authorization": None}


def _controlling_terminal() -> None:
    """In the child: make the pseudo-terminal (its stdin) the controlling terminal, as in a real
    shell, so that getpass reads the hidden answer from it."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _on_a_terminal(cli: Cli, args: list[str], answers: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, typing each answer once its prompt appears."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        env=cli.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_controlling_terminal,  # the child runs no threads before exec
    )
    os.close(slave)
    out = b""
    pending = list(answers)
    seen = 0  # where the next prompt is looked for: after the last one answered
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if pending and (found := out.find(pending[0][0], seen)) >= 0:
                seen = found + len(pending[0][0])
                os.write(master, pending.pop(0)[1] + b"\n")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        return proc.wait(10), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_on_a_terminal_it_asks_for_the_settings_hiding_the_key(cli: Cli, config_upstream: Upstream) -> None:
    code, out = _on_a_terminal(  # Ctrl-C at the first question: saved, and says how to go on
        cli, ["mcp", "add", config_upstream.url, "--id", "svc"], [(b"(header x-api-key, hidden): ", b"\x03")]
    )
    assert code == 130, out
    assert "error: stopped; connection svc is saved but still needs header x-api-key, query region; " in out
    assert "Traceback" not in out

    code, out = _on_a_terminal(
        cli,
        ["mcp", "add", config_upstream.url, "--id", "svc"],
        [(b"(header x-api-key, hidden): ", b"s3cret-key"), (b"(query region): ", b"eu")],
    )
    assert code == 0, out
    assert "Connection svc needs settings:" in out and "Your key for the config test server" in out
    assert "API key (header x-api-key, hidden): " in out and "Region (query region): eu" in out
    assert "s3cret-key" not in out  # not echoed
    assert "status:   connected" in out
    shown = cli.json("mcp", "get", "svc")
    assert shown["status"] == {"state": "connected"} and shown["mcpUrl"] == config_upstream.url + "?region=eu"
    assert _whoami(cli, "svc") == {"apiKey": "s3cret-key", "region": "eu", "authorization": None}


# --- auth_required -------------------------------------------------------------------------------


def test_without_a_terminal_it_prints_the_setup_url(cli: Cli, oauth_upstream: OAuthUpstream) -> None:
    added = cli("mcp", "add", oauth_upstream.url, "--id", "o")
    assert "status:   auth_required" in added.stdout
    setup = _line_after(added.stdout, "To authorize connection o, open this URL in a browser")
    assert setup.startswith(cli.env["JUNCTION_URL"] + "/setup/") and "/o?t=" in setup
    assert added.stderr == ""
    as_json = json.loads(cli("mcp", "add", oauth_upstream.url, "--id", "o", "--json").stdout)
    assert as_json["status"]["state"] == "auth_required" and as_json["status"]["setupUrl"]
    refused = cli("mcp", "add", oauth_upstream.url, "--json", "--interactive", check=False)
    assert "exclude each other" in one_line_error(refused, exit_code=2)


def _browser_script(tmp_path: Path) -> tuple[Path, Path]:
    """An executable for $BROWSER that records the URL it is given and plays the person who
    approves at the authorization server (`authorize` of test_upstream_oauth)."""
    opened, script = tmp_path / "opened.txt", tmp_path / "browser.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, traceback\n"
        "null = os.open(os.devnull, os.O_RDWR)\n"
        "for fd in (0, 1, 2):\n"
        "    os.dup2(null, fd)  # the CLI's output is not ours to hold open\n"
        f"sys.path[:0] = [{str(REPO_ROOT / 'tests')!r}, {str(REPO_ROOT)!r}]\n"
        f"with open({str(opened)!r}, 'a') as fh:\n"
        "    fh.write(sys.argv[1] + '\\n')\n"
        "try:\n"
        "    from test_upstream_oauth import authorize\n"
        "    authorize(sys.argv[1])\n"
        "except BaseException:\n"
        f"    with open({str(opened)!r}, 'a') as fh:\n"
        "        fh.write(traceback.format_exc())\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, opened


def test_on_a_terminal_it_opens_the_browser_and_waits_until_connected(
    cli: Cli, oauth_upstream: OAuthUpstream, tmp_path: Path
) -> None:
    script, opened = _browser_script(tmp_path)
    added = cli(
        "mcp", "add", oauth_upstream.url, "--id", "o", "--interactive", "--wait", "30", BROWSER=str(script)
    )
    setup = _line_after(added.stdout, "Authorize connection o in your browser at:")
    assert opened.read_text() == setup + "\n"  # the browser got the setup URL, and no error
    assert "Waiting up to 30 s for authorization" in added.stdout
    assert added.stdout.rstrip().endswith("status:   connected") and added.stderr == ""
    assert cli.json("mcp", "get", "o")["status"] == {"state": "connected"}
    assert '"scope"' in cli("tool", "call", "o", "whoami").stdout


def test_waiting_gives_up_after_wait_seconds_or_on_ctrl_c(cli: Cli, oauth_upstream: OAuthUpstream) -> None:
    link = f"{cli.env['JUNCTION_URL']}/setup/{cli.env['JUNCTION_NAMESPACE']}/late?t="  # fresh on every read
    started = time.monotonic()
    late = cli(
        "mcp",
        "add",
        oauth_upstream.url,
        "--id",
        "late",
        "--interactive",
        "--no-browser",
        "--wait",
        "2",
        check=False,
    )
    assert time.monotonic() - started < 15
    line = one_line_error(late)
    assert _line_after(late.stdout, "Authorize connection late in your browser at:").startswith(link)
    assert line.startswith(f"error: connection late was not authorized within 2 s: open {link}")
    assert "junction mcp get late" in line
    assert "(opening your browser)" not in late.stdout
    assert cli.json("mcp", "get", "late")["status"]["state"] == "auth_required"  # still saved

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "mcp",
            "add",
            oauth_upstream.url,
            "--id",
            "late",
            "--interactive",
            "--no-browser",
        ],
        cwd=REPO_ROOT,
        env=cli.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        out = ""
        while "Waiting up to 300 s" not in out:
            line = proc.stdout.readline()
            assert line, out
            out += line
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + rest + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stopped waiting; connection late is saved"), err
    assert "Traceback" not in err


# --- the catalog ---------------------------------------------------------------------------------


def test_a_catalog_name_connects_the_server_it_names(cli: Cli, config_upstream: Upstream) -> None:
    added = cli.json("mcp", "add", "cfg", "--id", "c")
    assert added["mcpUrl"] == config_upstream.url and added["status"]["state"] == "input_required"
    again = cli("mcp", "add", "cfg", "--id", "c", "--name", "Config")  # --id: updates it
    assert "name:     Config" in again.stdout and "input_required" in again.stdout
    unknown = one_line_error(cli("mcp", "add", "nope", check=False))
    assert "'nope' is not in the gateway's catalog" in unknown and "cfg" in unknown
    assert [c["connectionId"] for c in cli.json("mcp", "list")["connections"]] == ["c"]
