"""The gateway's upstream OAuth client against the MCP conformance suite's client auth scenarios.

`@modelcontextprotocol/conformance` (pinned in `_node.CONFORMANCE_PACKAGES`, run by Node 22 from the
npm registry) starts, per scenario, a mock MCP server and authorization server, runs
`tests/conformance_auth_client.py` (which drives `proxy.upstream_auth.oauth_client` the way the
gateway does) against it, and judges what went over the wire. Every `auth/` scenario of the
pinned version runs, one CLI process each (that verdict counts the client's exit code and
timeouts too, which the `--suite` summary does not), a few at a time. The scenarios that fail must
be exactly those listed, with the reason, in `tests/conformance-auth-expected-failures.txt`: a new
failure is a regression, and a listed scenario that passes must leave the list.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from _node import Node, ensure_conformance

pytestmark = pytest.mark.timeout(420)  # the first run installs Node 22 and the conformance suite

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
EXPECTED_FAILURES = TESTS_DIR / "conformance-auth-expected-failures.txt"
CLIENT_COMMAND = f"{shlex.quote(sys.executable)} -m tests.conformance_auth_client"
CLIENT_TIMEOUT_MS = 20_000  # the CLI kills a client that takes longer (a failure)
BUDGET = 150.0  # seconds for all scenarios together
WORKERS = 4
_SCENARIO_LINE = re.compile(r"^\s*-\s+(auth/\S+)")

# The harness's own requests stay on this machine: when `auth/offline-access-scope` stops, it
# fetches the client's metadata document URL (https://conformance-test.local/...); refused here,
# it records that as INFO, as it does for a URL that doesn't resolve.
_LOOPBACK_ONLY = """
const realFetch = globalThis.fetch;
globalThis.fetch = async (resource, init) => {
  const url = new URL(resource instanceof Request ? resource.url : String(resource));
  if (!['localhost', '127.0.0.1', '[::1]'].includes(url.hostname)) {
    throw new TypeError(`refused ${url.href}: the conformance tests stay on loopback`);
  }
  return realFetch(resource, init);
};
"""


@dataclass
class Outcome:
    """One scenario's run: the CLI's verdict (exit code 0: passed) and what explains it."""

    scenario: str
    returncode: int
    output: str = ""  # the CLI's stdout and stderr
    checks: list[dict] = field(default_factory=list)
    client_stderr: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and bool(self.checks)

    @property
    def score(self) -> str:
        match = re.search(r"Passed: (\d+/\d+)", self.output)
        return match[1] if match else "?"

    def describe(self) -> str:
        bad = [c for c in self.checks if c.get("status") in ("FAILURE", "WARNING")]
        lines = [f"{self.scenario}: CLI exit code {self.returncode}, checks passed {self.score}"]
        lines += [
            f"  {c['status']} {c.get('id')}: {c.get('description')}"
            + (f" ({c['errorMessage']})" if c.get("errorMessage") else "")
            for c in bad
        ]
        if "CLIENT" in self.output:  # the CLI's own note: timed out, or exited with an error
            lines += [f"  {line.strip()}" for line in self.output.splitlines() if "CLIENT" in line]
        tail = self.client_stderr.strip().splitlines()[-6:]
        lines += [f"  client: {line}" for line in tail]
        return "\n".join(lines)


def _cli(node: Node, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CONFORMANCE_")}
    env["NO_COLOR"] = "1"
    argv = [node.node, "--import", "data:text/javascript," + quote(_LOOPBACK_ONLY)]
    argv += [str(node.bin_path("@modelcontextprotocol/conformance", "conformance")), *args]
    with subprocess.Popen(
        argv,
        cwd=REPO,  # `python -m tests.conformance_auth_client` imports `proxy` from here
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a timeout, the client under test goes too
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def auth_scenarios(node: Node) -> list[str]:
    """Every client `auth/` scenario of the installed conformance suite."""
    proc = _cli(node, "list", "--client", timeout=60)
    names = [m[1] for line in proc.stdout.splitlines() if (m := _SCENARIO_LINE.match(line))]
    if proc.returncode != 0 or not names:
        pytest.fail(
            f"`conformance list --client` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return names


def run_scenario(node: Node, scenario: str, out: Path, deadline: float) -> Outcome:
    remaining = deadline - time.monotonic()
    if remaining < 5:
        return Outcome(scenario, -1, f"not run: the {BUDGET:.0f} s budget of the whole test was spent")
    args = ["client", "--command", CLIENT_COMMAND, "--scenario", scenario]
    args += ["--timeout", str(CLIENT_TIMEOUT_MS), "-o", str(out)]
    started = time.monotonic()
    try:
        proc = _cli(node, *args, timeout=remaining)
    except subprocess.TimeoutExpired:
        return Outcome(scenario, -1, f"the conformance CLI did not finish within {remaining:.0f} s")
    outcome = Outcome(scenario, proc.returncode, proc.stdout + proc.stderr)
    outcome.seconds = time.monotonic() - started
    results = sorted(out.rglob("checks.json"))
    if results:
        outcome.checks = json.loads(results[-1].read_text())
        client_log = results[-1].parent / "stderr.txt"
        if client_log.exists():
            outcome.client_stderr = client_log.read_text()
    return outcome


def expected_failures() -> set[str]:
    """The scenario names of the expected-failures file (`#` starts a comment, the reason)."""
    names = (line.split("#", 1)[0].strip() for line in EXPECTED_FAILURES.read_text().splitlines())
    return {name for name in names if name}


def test_conformance_auth_scenarios() -> None:
    node = ensure_conformance()
    scenarios = auth_scenarios(node)
    expected = expected_failures()
    unknown = expected - set(scenarios)
    assert not unknown, f"{EXPECTED_FAILURES.name} names scenarios the suite doesn't have: {sorted(unknown)}"

    deadline = time.monotonic() + BUDGET
    with tempfile.TemporaryDirectory(prefix="junction-conformance-") as tmp:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            outcomes = list(
                pool.map(
                    lambda item: run_scenario(node, item[1], Path(tmp) / str(item[0]), deadline),
                    enumerate(scenarios),
                )
            )

    table = "\n".join(
        f"  {'pass' if o.passed else 'FAIL'}  {o.scenario} ({o.score} checks, {o.seconds:.1f} s)"
        for o in outcomes
    )
    print(f"conformance auth scenarios:\n{table}")
    failing = {o.scenario for o in outcomes if not o.passed}
    unexpected = [o.describe() for o in outcomes if o.scenario in failing - expected]
    stale = sorted(expected - failing)
    assert not unexpected and not stale, (
        f"conformance auth scenarios:\n{table}\n\n"
        + (
            "failing, not in " + EXPECTED_FAILURES.name + ":\n" + "\n\n".join(unexpected) + "\n\n"
            if unexpected
            else ""
        )
        + (f"passing now, remove from {EXPECTED_FAILURES.name}: {stale}\n" if stale else "")
    )
