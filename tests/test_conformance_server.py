"""The gateway against the MCP conformance suite's server scenarios, in both protocol eras.

`@modelcontextprotocol/conformance` acts as an MCP client and judges what a server answers. Its
scenarios call the conformance "everything server" contract, which `tests/upstreams/everything.py`
implements with the official SDK. The suite runs against three targets, each with its own upstream
process (the scenarios' list changes and subscriptions must not reach another target's run):

- ``upstream``     the upstream itself: the baseline, what a faithful proxy must match;
- ``passthrough``  the gateway's per-connection endpoint ``/mcp/{ns}/{connectionId}``;
- ``namespace``    the namespace endpoint ``/mcp/{ns}`` of a namespace holding only that
                   connection, with ``toolNames: "bare"`` so the tools keep the names the suite calls.

in both eras, in three runs:

- ``2025-11-25``        the 0.1.16 suite's active scenarios (stateful sessions, GET streams,
                        server-to-client requests on the request's stream);
- ``2025-11-25-alpha``  the scenarios the 2025-11-25 revision requires as 0.2.0-alpha.12 checks them
                        (more checks each), plus what it runs for visibility: session lifecycle
                        (DELETE, 404 for an ended session), SSE polling (priming events, ``retry``,
                        resuming with Last-Event-ID) and JSON Schema 2020-12;
- ``2026-07-28``        the scenarios the 2026-07-28 revision requires, from 0.2.0-alpha.12
                        (stateless requests, ``subscriptions/listen``, MRTR, header checks, caching
                        hints), plus its pending ones; its optional extensions (tasks) run but are
                        not judged.

The suite cannot send headers, so the gateway targets are reached through `tests/upstreams/auth_hop.py`,
which adds the bearer key and passes everything else through.

A scenario fails when one of its checks fails. For the gateway targets a scenario that fails only
with checks that also fail against the upstream directly counts as passed: the gateway is judged
on what it adds. The failing scenarios of each target and era must be exactly those listed in
`tests/conformance-server-expected-failures/<target>-<era>.txt` (one per line, ``#`` starts the
reason): an unlisted failure is a regression, a listed scenario that passes must leave the list,
so the lists only shrink. The passthrough's lists are to end up empty (a faithful proxy).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _node import Node, ensure_conformance, ensure_conformance_alpha
from conftest import Gateway, Upstream, _Process, _track, free_port

pytestmark = pytest.mark.timeout(600)  # the first run installs Node 22 and both suite versions

TESTS_DIR = Path(__file__).resolve().parent
EXPECTED_DIR = TESTS_DIR / "conformance-server-expected-failures"
TARGETS = ("upstream", "passthrough", "namespace")
CONNECTION = "everything"
SCENARIO_TIMEOUT_MS = 8_000  # per scenario: a request the gateway never answers costs this much
RUN_TIMEOUT = 240.0  # one CLI invocation (a target's scenarios of one era)
_RUN_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
_SUMMARY_LINE = re.compile(r"^[✓✗]\s+(?P<scenario>\S+):\s+(?P<passed>\d+) passed, (?P<failed>\d+) failed")


@dataclass(frozen=True)
class Era:
    """One conformance run per target: which suite version and which of its scenarios."""

    name: str
    ensure: Callable[[], Node]
    args: tuple[str, ...]


ERAS = (
    Era("2025-11-25", ensure_conformance, ()),  # 0.1.16's active suite (it has no --timeout)
    Era(
        "2025-11-25-alpha",
        ensure_conformance_alpha,
        ("--requirements", "2025-11-25", "--timeout", str(SCENARIO_TIMEOUT_MS)),
    ),
    Era(
        "2026-07-28",
        ensure_conformance_alpha,
        ("--requirements", "2026-07-28", "--timeout", str(SCENARIO_TIMEOUT_MS)),
    ),
)


# --- the processes --------------------------------------------------------------------------------


class EverythingConformanceUpstream(Upstream):
    """`tests/upstreams/everything.py`: the conformance contract over Streamable HTTP at ``/mcp``."""

    def __init__(self, log_dir: Path, name: str) -> None:
        self.kind = f"conformance-{name}"
        self.opts = {}
        self.port = free_port()
        self._process = _Process(f"upstream-{self.kind}", log_dir)

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "tests.upstreams.everything", "--port", str(self.port)]

    def __repr__(self) -> str:
        return f"EverythingConformanceUpstream(url={self.url!r}, running={self.running})"


class AuthHop(Upstream):
    """`tests/upstreams/auth_hop.py` in front of ``gateway``: ``url_for(path)`` is the hop's URL of a
    gateway path; requests through it carry the gateway's admin key."""

    def __init__(self, log_dir: Path, gateway: Gateway) -> None:
        self.kind = "auth-hop"
        self.opts = {}
        self.port = free_port()
        self.gateway = gateway
        self._process = _Process("auth-hop", log_dir)

    def url_for(self, path: str) -> str:
        return self.base_url + path

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.upstreams.auth_hop",
            "--port",
            str(self.port),
            "--target",
            self.gateway.url,
        ]

    def _env(self) -> Mapping[str, str]:
        return {**os.environ, "JUNCTION_HOP_KEY": self.gateway.admin_key}

    def __repr__(self) -> str:
        return f"AuthHop(url={self.base_url!r}, gateway={self.gateway.url!r}, running={self.running})"


@dataclass
class Targets:
    """Each target's MCP URL, and every process behind them (their logs go into a failure report)."""

    urls: dict[str, str]
    processes: dict[str, list[Upstream | Gateway]]


def _add_connection(gateway: Gateway, ns: str, url: str, tool_names: str | None = None) -> None:
    """A namespace ``ns`` holding one connection to ``url``, connected before any scenario runs."""
    with gateway.client() as client:
        body = {"toolNames": tool_names} if tool_names else {}
        response = client.put(f"/namespaces/{ns}", json=body)
        assert response.status_code in (200, 201), response.text
        response = client.put(f"/{ns}/{CONNECTION}", json={"mcpUrl": url})
        assert response.status_code in (200, 201), response.text
        tools = client.get(f"/{ns}/{CONNECTION}/.tools")  # connects the upstream session
        assert tools.status_code == 200, tools.text


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    logs = tmp_path_factory.mktemp("conformance-server-logs")
    upstreams = {name: EverythingConformanceUpstream(logs, name).spawn() for name in TARGETS}
    gateway = Gateway(tmp_path_factory.mktemp("conformance-server-gateway"))
    hop = AuthHop(logs, gateway)
    processes: list[Upstream | Gateway] = [*upstreams.values(), gateway, hop]
    try:
        for upstream in upstreams.values():
            upstream.launch()
        gateway.start(attempts=3)
        hop.launch()
        _add_connection(gateway, "conf-passthrough", upstreams["passthrough"].url)
        _add_connection(gateway, "conf-namespace", upstreams["namespace"].url, tool_names="bare")
        yield Targets(
            urls={
                "upstream": upstreams["upstream"].url,
                "passthrough": hop.url_for(f"/mcp/conf-passthrough/{CONNECTION}"),
                "namespace": hop.url_for("/mcp/conf-namespace"),
            },
            processes={
                "upstream": [upstreams["upstream"]],
                "passthrough": [upstreams["passthrough"], gateway, hop],
                "namespace": [upstreams["namespace"], gateway, hop],
            },
        )
    finally:
        for process in reversed(processes):
            process.stop()


# --- running the suite ----------------------------------------------------------------------------


@dataclass
class Scenario:
    """One scenario's checks as `checks.json` recorded them (none: it never finished)."""

    name: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    recorded: bool = False

    @property
    def failing_checks(self) -> list[dict[str, Any]]:
        """Failures, and warnings: a SHOULD the upstream meets and the gateway loses (SSE priming
        and ``retry``, say) makes the gateway a worse proxy, though the CLI's summary passes it."""
        return [c for c in self.checks if c.get("status") in ("FAILURE", "WARNING")]

    @property
    def failing_ids(self) -> set[str]:
        return {str(c.get("id")) for c in self.failing_checks}

    @property
    def passed(self) -> bool:
        return self.recorded and not self.failing_checks

    def score(self) -> str:
        judged = [c for c in self.checks if c.get("status") in ("SUCCESS", "FAILURE", "WARNING")]
        return f"{len(judged) - len(self.failing_checks)}/{len(judged)}"

    def describe(self, inherited: set[str] | frozenset[str] = frozenset()) -> str:
        if not self.recorded:
            return f"{self.name}: no checks.json (the scenario crashed or timed out)"
        lines = [f"{self.name}: {self.score()} checks passed"]
        for check in self.failing_checks:
            said = check.get("errorMessage") or json.dumps(check.get("details"), sort_keys=True)
            message = " ".join(str(said).split())
            message = message if len(message) <= 400 else message[:400] + "..."
            also = " [fails upstream too]" if str(check.get("id")) in inherited else ""
            status = "" if check.get("status") == "FAILURE" else f" ({check.get('status')})"
            lines.append(
                f"    {check.get('id')}{status}{also}: {check.get('description')}\n        -> {message}"
            )
        return "\n".join(lines)


@dataclass
class Run:
    """One CLI invocation: a target's scenarios of one era."""

    target: str
    era: str
    returncode: int
    output: str
    scenarios: dict[str, Scenario]
    seconds: float
    results: Path


def _extensions(prefix: Path) -> set[str]:
    """Server scenarios the requirement sets run without scoring as optional extensions."""
    sets = prefix / "node_modules" / "@modelcontextprotocol" / "conformance" / "requirements"
    return {
        entry["scenario"]
        for path in sorted(sets.glob("*.yaml"))
        for entry in yaml.safe_load(path.read_text()).get("not_scored", [])
        if entry.get("leg") == "server" and entry.get("reason") == "extension"
    }


def run_suite(node: Node, era: Era, target: str, url: str, out: Path) -> Run:
    argv = [node.node, str(node.bin_path("@modelcontextprotocol/conformance", "conformance")), "server"]
    argv += ["--url", url, *era.args, "-o", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CONFORMANCE_")} | {"NO_COLOR": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = -1
        output = f"{exc.stdout or ''}{exc.stderr or ''}\n[the CLI did not finish within {RUN_TIMEOUT:.0f} s]"
    scenarios: dict[str, Scenario] = {}
    for line in output.splitlines():
        if match := _SUMMARY_LINE.match(line.strip()):
            scenarios[match["scenario"]] = Scenario(match["scenario"])
    for directory in sorted(out.iterdir()) if out.exists() else []:
        match = _RUN_DIR.match(directory.name)
        checks_file = directory / "checks.json"
        if match and checks_file.exists():
            name = match["scenario"]
            scenarios[name] = Scenario(name, json.loads(checks_file.read_text()), recorded=True)
    return Run(target, era.name, returncode, output, scenarios, time.monotonic() - started, out)


@pytest.fixture(scope="module")
def runs(targets: Targets, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Run]:
    """Every target in both eras: targets in parallel, a target's eras one after the other.

    Each run's `checks.json` files stay in pytest's temporary directory (the last runs are kept),
    under ``conformance-server-results*/<target>-<era>/``, with every request and answer of a check.
    """
    nodes = {era.name: era.ensure() for era in ERAS}
    results: dict[tuple[str, str], Run] = {}
    root = tmp_path_factory.mktemp("conformance-server-results")

    def one_target(target: str) -> None:
        for era in ERAS:
            out = root / f"{target}-{era.name}"
            results[target, era.name] = run_suite(nodes[era.name], era, target, targets.urls[target], out)

    with ThreadPoolExecutor(max_workers=len(TARGETS)) as pool:
        list(pool.map(one_target, TARGETS))
    ignored = _extensions(nodes["2026-07-28"].prefix)
    for run in results.values():
        for name in ignored:
            run.scenarios.pop(name, None)
    return results


# --- the verdict ----------------------------------------------------------------------------------


def expected_failures(target: str, era: str) -> dict[str, str]:
    """The scenarios of ``<target>-<era>.txt``, each with its reason (the line's comment)."""
    path = EXPECTED_DIR / f"{target}-{era}.txt"
    listed: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, _, reason = line.partition("#")
        if name.strip():
            listed[name.strip()] = reason.strip()
    return listed


@pytest.mark.parametrize("era", [e.name for e in ERAS])
@pytest.mark.parametrize("target", TARGETS)
def test_conformance_server_scenarios(
    target: str, era: str, runs: dict[tuple[str, str], Run], targets: Targets, request: pytest.FixtureRequest
) -> None:
    run, baseline = runs[target, era], runs["upstream", era]
    for process in targets.processes[target]:  # their logs go into the report of a failure
        _track(request, process)
    finished = run.returncode in (0, 1) and "=== SUMMARY ===" in run.output
    assert finished and run.scenarios, (
        f"the conformance CLI did not finish its run against {target} ({era}), "
        f"exit code {run.returncode}:\n{run.output[-4000:]}"
    )
    missing = sorted(set(baseline.scenarios) - set(run.scenarios))
    assert not missing, f"{target} ({era}) did not run {missing}:\n{run.output[-4000:]}"

    def inherited(name: str) -> set[str]:
        """The checks of scenario ``name`` that fail against the upstream too: not the gateway's doing."""
        if target == "upstream" or name not in baseline.scenarios:
            return set()
        return baseline.scenarios[name].failing_ids

    failing: dict[str, Scenario] = {}
    rows = []
    for name, scenario in sorted(run.scenarios.items()):
        fails = not scenario.recorded or bool(scenario.failing_ids - inherited(name))
        if fails:
            failing[name] = scenario
        note = " (only checks the upstream fails too)" if not fails and scenario.failing_checks else ""
        rows.append(f"  {'FAIL' if fails else 'pass'}  {name}: {scenario.score()}{note}")
    table = (
        f"{target} ({era}), {len(run.scenarios)} scenarios in {run.seconds:.1f} s, checks in {run.results}:\n"
    )
    table += "\n".join(rows)
    print(table)

    expected = expected_failures(target, era)
    unknown = sorted(set(expected) - set(run.scenarios))
    unexpected = sorted(set(failing) - set(expected))
    stale = sorted(set(expected) - set(failing) - set(unknown))
    problems = []
    if unexpected:
        problems.append("failing, not in the expected-failures file:")
        problems += ["  " + failing[name].describe(inherited(name)) for name in unexpected]
    if stale:
        problems.append(f"passing now, remove from the expected-failures file: {stale}")
    if unknown:
        problems.append(f"the expected-failures file names scenarios that did not run: {unknown}")
    assert not problems, f"{table}\n\n{EXPECTED_DIR.name}/{target}-{era}.txt:\n" + "\n".join(problems)
