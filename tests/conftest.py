"""Fixtures that run real processes: upstream MCP servers (`tests/upstreams/server.py`) and the gateway.

Upstreams
    ``start_upstream(kind, **opts) -> Upstream`` starts a private server for one test (options become
    flags: ``list_delay=3.0`` -> ``--list-delay 3.0``); ``modern_upstream``, ``legacy_upstream``,
    ``sse_upstream``, ``dotted_upstream``, ``slow_upstream`` and ``paged_upstream`` are shared by the
    whole session, so a test that stops or restarts a server must use the factory.

Third-party upstreams
    ``start_everything(transport)`` runs ``@modelcontextprotocol/server-everything`` (the TypeScript
    SDK's reference server, pinned in `tests/_node.py`) with ``transport`` ``"streamableHttp"``
    (endpoint ``/mcp``) or ``"sse"`` (``/sse``); ``start_fastmcp(transport)`` runs
    `tests/upstreams/fastmcp_server.py` (the `fastmcp` framework) with ``"http"`` (``/mcp``) or
    ``"sse"``. Both return an `Upstream`: ``url``, ``stop()``, ``start()``, ``restart()`` on the same
    port. ``everything_upstream``, ``everything_sse_upstream``, ``fastmcp_upstream`` and
    ``fastmcp_sse_upstream`` are the session's shared ones. server-everything has a ``get-env`` tool
    that returns its whole environment, so it gets only ``PATH``, ``PORT`` and a scratch ``HOME``.

Gateway
    ``gateway`` is a fresh ``python -m proxy serve`` with its own data directory; ``start_gateway(**env)``
    starts one with extra environment (a value of ``None`` removes the variable). Inherited ``JUNCTION_*``
    variables are dropped and ``JUNCTION_CONFIG`` points at an empty file, so a developer's
    ``config.toml`` or shell settings can't change what the tests see.

Readiness is polled (TCP connect for upstreams, ``GET /health`` for the gateway) for up to
``READY_TIMEOUT`` seconds; a process that dies or never gets ready fails the test with its log tail.
When a test fails, the logs of the processes it started are attached to its report.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx2
import pytest
from _node import EVERYTHING_PACKAGES, Node, ensure_everything

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
LOG_TAIL_CHARS = 6000
_T = TypeVar("_T")
UPSTREAM_KINDS = (
    "modern",
    "legacy",
    "sse",
    "dotted",
    "slow",
    "paged",
    "config",
    "changing",
    "changing_legacy",
    "apps",
)
_SERIAL = itertools.count(1)  # distinct log file names


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM when pytest dies, so a killed run leaves no servers behind (Linux)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


class StartupError(Exception):
    """A child process exited, or never became ready."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


class _Process:
    """A child process whose stdout and stderr are appended to files (they survive restarts)."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_start = 0  # where the current run's stderr begins
        self._files: list[IO[bytes]] = []

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, argv: list[str], env: Mapping[str, str]) -> None:
        assert not self.running, f"{self.name} is already running"
        if self.proc is not None:
            self.stop()  # an earlier run that exited by itself: close its log files
        self.log_start = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        out, err = self.stdout_path.open("ab"), self.stderr_path.open("ab")
        self._files = [out, err]
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            # Only for children of the main thread: the kernel signals a child when the *thread*
            # that forked it ends, and a worker thread (anyio.to_thread) ends long before the test.
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it hasn't exited within ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for f in self._files:
            f.close()
        self._files = []

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def wait_ready(self, probe: Callable[[], bool], what: str) -> None:
        """Poll ``probe`` until it is true; raise `StartupError` if the process exits or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        delay = 0.02
        while not probe():
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                log = self.stderr_path.read_bytes()[self.log_start :].decode(errors="replace")
                problem = (
                    f"exited with {code}" if code is not None else f"timed out after {READY_TIMEOUT:.0f} s"
                )
                raise StartupError(f"{self.name} {problem} waiting for {what}; stderr:\n{_tail(log)}", log)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


# --- upstream MCP servers -----------------------------------------------------------------------


def _retry_busy_port(owner: Any, start: Callable[[], _T], attempts: int) -> _T:
    """Run `start`; when the port `free_port` picked was taken meanwhile, move `owner` to another."""
    for attempt in range(attempts):
        try:
            return start()
        except StartupError as exc:
            # Python and Node say "address already in use"; server-everything "Port N is already in use".
            error, retry = str(exc), "already in use" in exc.log.lower()
        if not retry or attempt == attempts - 1:
            pytest.fail(error, pytrace=False)
        owner.port = free_port()
    raise AssertionError("unreachable")


class Upstream:
    """One `tests/upstreams/server.py` process. ``url`` is its MCP endpoint (``/sse`` for kind sse)."""

    def __init__(self, kind: str, log_dir: Path, **opts: Any) -> None:
        if kind not in UPSTREAM_KINDS:
            raise ValueError(f"unknown upstream kind {kind!r}")
        self.kind = kind
        self.opts = opts
        self.port = free_port()
        self._process = _Process(f"upstream-{kind}-{next(_SERIAL)}", log_dir)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + ("/sse" if self.kind == "sse" else "/mcp")

    @property
    def running(self) -> bool:
        return self._process.running

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tests.upstreams.server", "--kind", self.kind, "--port", str(self.port)]
        for key, value in self.opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    def _env(self) -> Mapping[str, str]:
        return os.environ

    def spawn(self) -> Upstream:
        """Start the process without waiting for it; `start` or `launch` then waits."""
        if self._process.proc is None:
            self._process.spawn(self._argv(), self._env())
        return self

    def _start(self) -> Upstream:
        self.spawn()
        self._process.wait_ready(lambda: _port_open(self.port), f"a listener on port {self.port}")
        return self

    def start(self) -> Upstream:
        """Start serving on ``self.port`` and wait until it accepts connections."""
        if not self.running:
            self._process.stop()  # forget a run that died by itself
        try:
            return self._start()
        except StartupError as exc:
            error = str(exc)
        pytest.fail(error, pytrace=False)

    def launch(self, attempts: int = 3) -> Upstream:
        """Like `start`, but if the port picked by `free_port` was taken meanwhile, try another one."""
        return _retry_busy_port(self, self._start, attempts)

    def stop(self) -> None:
        """Terminate the server (open connections drop); `start` serves on the same port again."""
        self._process.stop()

    def restart(self) -> Upstream:
        """Stop and start again on the same port; all sessions are forgotten."""
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self._process.stdout() + self._process.stderr()

    def __repr__(self) -> str:
        return f"Upstream(kind={self.kind!r}, url={self.url!r}, running={self.running})"


EVERYTHING = "@modelcontextprotocol/server-everything"
EVERYTHING_TRANSPORTS = {"streamableHttp": "/mcp", "sse": "/sse"}
FASTMCP_TRANSPORTS = {"http": "/mcp", "sse": "/sse"}


class EverythingUpstream(Upstream):
    """``@modelcontextprotocol/server-everything`` over ``transport`` (``streamableHttp`` or ``sse``)."""

    def __init__(self, node: Node, transport: str, log_dir: Path) -> None:
        if transport not in EVERYTHING_TRANSPORTS:
            raise ValueError(f"unknown server-everything transport {transport!r}")
        self.kind = f"everything-{transport}"
        self.transport = transport
        self.opts = {}
        self.port = free_port()
        self.node = node
        serial = next(_SERIAL)
        self.home = log_dir / f"everything-home-{serial}"  # scratch HOME: nothing of the user's
        self._process = _Process(f"upstream-{self.kind}-{serial}", log_dir)

    @property
    def url(self) -> str:
        return self.base_url + EVERYTHING_TRANSPORTS[self.transport]

    def _argv(self) -> list[str]:
        return [self.node.node, str(self.node.bin_path(EVERYTHING, "mcp-server-everything")), self.transport]

    def _env(self) -> Mapping[str, str]:
        # Its `get-env` tool answers with this whole environment: keep secrets out of it.
        self.home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "PORT": str(self.port),
        }

    def __repr__(self) -> str:
        version = EVERYTHING_PACKAGES[EVERYTHING]
        return f"EverythingUpstream({EVERYTHING}@{version}, url={self.url!r}, running={self.running})"


class FastMCPUpstream(Upstream):
    """`tests/upstreams/fastmcp_server.py` over ``transport`` (``http`` or ``sse``)."""

    def __init__(self, transport: str, log_dir: Path) -> None:
        if transport not in FASTMCP_TRANSPORTS:
            raise ValueError(f"unknown fastmcp transport {transport!r}")
        self.kind = f"fastmcp-{transport}"
        self.transport = transport
        self.opts = {}
        self.port = free_port()
        self._process = _Process(f"upstream-{self.kind}-{next(_SERIAL)}", log_dir)

    @property
    def url(self) -> str:
        return self.base_url + FASTMCP_TRANSPORTS[self.transport]

    def _argv(self) -> list[str]:
        module = "tests.upstreams.fastmcp_server"
        return [sys.executable, "-m", module, "--port", str(self.port), "--transport", self.transport]

    def _env(self) -> Mapping[str, str]:
        # A developer's FASTMCP_* settings must not change what the tests see; no update check.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTMCP_")}
        return env | {"FASTMCP_CHECK_FOR_UPDATES": "off", "FASTMCP_SHOW_SERVER_BANNER": "false"}

    def __repr__(self) -> str:
        return f"FastMCPUpstream(url={self.url!r}, running={self.running})"


# --- the gateway --------------------------------------------------------------------------------


class Gateway:
    """A `python -m proxy serve` process on 127.0.0.1 with its own data directory."""

    def __init__(self, root: Path, **env: str | None) -> None:
        self.port = free_port()
        self.data_dir = root / "data"
        # Hermetic: no inherited JUNCTION_* settings, and an empty config file instead of ./config.toml.
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.toml").write_text("")
        self.env: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JUNCTION_")},
            "JUNCTION_CONFIG": str(root / "config.toml"),
            "JUNCTION_DATA_DIR": str(self.data_dir),
            "JUNCTION_ADMIN_KEY": "test-admin-" + secrets.token_urlsafe(24),
            "JUNCTION_ALLOW_PRIVATE_UPSTREAMS": "1",
            "JUNCTION_LOG_LEVEL": "warning",
        }
        for key, value in env.items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self._process = _Process(f"gateway-{next(_SERIAL)}", root / "logs")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        """The configured key, or the one the gateway generated into ``data_dir/admin.key``."""
        key = self.env.get("JUNCTION_ADMIN_KEY", "")
        if not key and (self.data_dir / "admin.key").is_file():
            key = (self.data_dir / "admin.key").read_text().strip()
        return key

    @property
    def running(self) -> bool:
        return self._process.running

    def start(self, attempts: int = 1) -> Gateway:
        """Start and wait for ``GET /health``; with ``attempts`` > 1, move to a new port if the port is taken."""

        def once() -> Gateway:
            self._process.spawn(self.command(), self.env)
            self._process.wait_ready(self._healthy, "200 from GET /health")
            return self

        return _retry_busy_port(self, once, attempts)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def _healthy(self) -> bool:
        try:
            return httpx2.get(self.url + "/health", timeout=1.0, trust_env=False).status_code == 200
        except httpx2.HTTPError:
            return False

    def stop(self) -> None:
        self._process.stop()

    def restart(self) -> Gateway:
        """Stop and start again: same port, same data directory, same environment."""
        self.stop()
        return self.start()

    def client(self, **kwargs: Any) -> httpx2.Client:
        """An HTTP client on ``url`` authenticated with the admin key (use it in a ``with`` block)."""
        headers = {"Authorization": f"Bearer {self.admin_key}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30.0)
        return httpx2.Client(base_url=self.url, headers=headers, **kwargs)

    def mcp_url(self, ns: str, conn: str | None = None) -> str:
        return f"{self.url}/mcp/{ns}" + (f"/{conn}" if conn else "")

    def logs(self) -> str:
        """Everything the process wrote to stdout and stderr, across restarts."""
        return self._process.stdout() + self._process.stderr()

    def stderr(self) -> str:
        return self._process.stderr()

    def __repr__(self) -> str:
        return f"Gateway(url={self.url!r}, data_dir={str(self.data_dir)!r}, running={self.running})"


# --- fixtures -----------------------------------------------------------------------------------

# Processes started by the factories for the current test; their logs go into its report if it fails.
_STARTED = pytest.StashKey[list["Upstream | Gateway"]]()


def _track(request: pytest.FixtureRequest, process: Upstream | Gateway) -> None:
    request.node.stash.setdefault(_STARTED, []).append(process)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        # Factory-made processes, plus shared upstreams the test asked for (their logs are shared too).
        funcargs = getattr(item, "funcargs", {}).values()
        processes = item.stash.get(_STARTED, []) + [v for v in funcargs if isinstance(v, Upstream | Gateway)]
        for process in dict.fromkeys(processes):
            text = process.logs()
            if text.strip():
                report.sections.append((f"{process!r} log", _tail(text)))
    return report


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def start_upstream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Upstream]]:
    """``start_upstream(kind, **opts)``: a private upstream for this test, stopped at teardown."""
    started: list[Upstream] = []

    def start(kind: str, **opts: Any) -> Upstream:
        upstream = Upstream(kind, tmp_path / "upstream-logs", **opts)
        started.append(upstream)
        _track(request, upstream)
        return upstream.launch()

    yield start
    for upstream in started:
        upstream.stop()


@pytest.fixture(scope="session")
def _upstream_pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Upstream]]:
    """The session's shared upstreams, one per kind.

    Every kind whose ``<kind>_upstream`` fixture a collected test names is spawned up front, so the
    servers boot in parallel; each fixture then waits only for its own.
    """
    log_dir = tmp_path_factory.getbasetemp() / "shared-upstream-logs"
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    pool = {kind: Upstream(kind, log_dir).spawn() for kind in UPSTREAM_KINDS if f"{kind}_upstream" in wanted}
    yield pool
    for upstream in pool.values():
        upstream.stop()


def _shared(pool: dict[str, Upstream], kind: str, factory: pytest.TempPathFactory) -> Upstream:
    if kind not in pool:  # e.g. asked for through request.getfixturevalue()
        pool[kind] = Upstream(kind, factory.getbasetemp() / "shared-upstream-logs")
    return pool[kind].launch()


def _shared_fixture(kind: str) -> Any:
    @pytest.fixture(scope="session", name=f"{kind}_upstream")
    def shared(_upstream_pool: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory) -> Upstream:
        return _shared(_upstream_pool, kind, tmp_path_factory)

    shared.__doc__ = f"The session's shared `{kind}` upstream server."
    return shared


# modern_upstream, legacy_upstream, sse_upstream, dotted_upstream, slow_upstream, paged_upstream
for _kind in UPSTREAM_KINDS:
    globals()[f"{_kind}_upstream"] = _shared_fixture(_kind)


@pytest.fixture
def start_everything(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Upstream]]:
    """``start_everything(transport="streamableHttp")``: a private server-everything, stopped at teardown.

    Fails the test (never skips) when Node.js or the pinned package can't be had.
    """
    started: list[Upstream] = []

    def start(transport: str = "streamableHttp") -> Upstream:
        upstream = EverythingUpstream(ensure_everything(), transport, tmp_path / "upstream-logs")
        started.append(upstream)
        _track(request, upstream)
        return upstream.launch()

    yield start
    for upstream in started:
        upstream.stop()


@pytest.fixture
def start_fastmcp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Upstream]]:
    """``start_fastmcp(transport="http")``: a private FastMCP upstream, stopped at teardown."""
    started: list[Upstream] = []

    def start(transport: str = "http") -> Upstream:
        upstream = FastMCPUpstream(transport, tmp_path / "upstream-logs")
        started.append(upstream)
        _track(request, upstream)
        return upstream.launch()

    yield start
    for upstream in started:
        upstream.stop()


def _shared_third_party(name: str, doc: str, make: Callable[[Path], Upstream]) -> Any:
    @pytest.fixture(scope="session", name=name)
    def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
        upstream = make(tmp_path_factory.getbasetemp() / "shared-upstream-logs")
        yield upstream.launch()
        upstream.stop()

    shared.__doc__ = doc
    return shared


everything_upstream = _shared_third_party(
    "everything_upstream",
    "The session's shared server-everything over Streamable HTTP (``/mcp``).",
    lambda logs: EverythingUpstream(ensure_everything(), "streamableHttp", logs),
)
everything_sse_upstream = _shared_third_party(
    "everything_sse_upstream",
    "The session's shared server-everything over HTTP+SSE (``/sse``).",
    lambda logs: EverythingUpstream(ensure_everything(), "sse", logs),
)
fastmcp_upstream = _shared_third_party(
    "fastmcp_upstream",
    "The session's shared FastMCP upstream over Streamable HTTP (``/mcp``).",
    lambda logs: FastMCPUpstream("http", logs),
)
fastmcp_sse_upstream = _shared_third_party(
    "fastmcp_sse_upstream",
    "The session's shared FastMCP upstream over HTTP+SSE (``/sse``).",
    lambda logs: FastMCPUpstream("sse", logs),
)


@pytest.fixture
def start_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """``start_gateway(**env)``: a gateway for this test with extra environment, stopped at teardown."""
    started: list[Gateway] = []

    def start(**env: str | None) -> Gateway:
        root = tmp_path / f"gateway-{len(started)}"
        gateway = Gateway(root, **env)
        started.append(gateway)
        _track(request, gateway)
        return gateway.start(attempts=3)

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    """A fresh gateway with default test settings."""
    return start_gateway()


# --- an OpenID Connect provider -----------------------------------------------------------------


class OidcProvider(Upstream):
    """A `tests/upstreams/oidc_provider.py` process: one registered client, sign-in by username alone.

    ``url`` and ``issuer`` are ``http://127.0.0.1:PORT`` (no trailing slash); ``client_id``,
    ``client_secret`` and ``redirect_uris`` are the registered client. A redirect URI known only once
    the gateway runs (it contains the gateway's port): `set_redirect_uris` restarts the provider on
    the same port with the same signing key (codes and access tokens issued before are forgotten).
    """

    def __init__(
        self, log_dir: Path, client_id: str, client_secret: str, redirect_uris: list[str] | tuple[str, ...]
    ) -> None:
        self.kind = "oidc"
        self.opts = {}
        self.port = free_port()
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        serial = next(_SERIAL)
        self.key_file = log_dir / f"oidc-provider-{serial}.jwk.json"  # kept across restarts
        self._process = _Process(f"oidc-provider-{serial}", log_dir)

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tests.upstreams.oidc_provider", "--port", str(self.port)]
        argv += ["--client-id", self.client_id, "--client-secret", self.client_secret]
        argv += ["--key-file", str(self.key_file)]
        for uri in self.redirect_uris:
            argv += ["--redirect-uri", uri]
        return argv

    def _discoverable(self) -> bool:
        try:
            return httpx2.get(self.discovery_url, timeout=1.0, trust_env=False).status_code == 200
        except httpx2.HTTPError:
            return False

    def _start(self) -> OidcProvider:
        self.spawn()
        self._process.wait_ready(self._discoverable, "200 from GET /.well-known/openid-configuration")
        return self

    def set_redirect_uris(self, *uris: str) -> OidcProvider:
        """Register exactly ``uris`` (replacing the others) and restart on the same port and key."""
        self.redirect_uris = list(uris)
        self.restart()
        return self

    def __repr__(self) -> str:
        return f"OidcProvider(issuer={self.issuer!r}, client_id={self.client_id!r}, running={self.running})"


@pytest.fixture
def start_oidc_provider(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., OidcProvider]]:
    """``start_oidc_provider(client_id=, client_secret=, redirect_uris=)``: a provider, stopped at teardown.

    Defaults: client ``junction-test``, a random secret, no redirect URI registered.
    """
    started: list[OidcProvider] = []

    def start(
        *,
        client_id: str = "junction-test",
        client_secret: str | None = None,
        redirect_uris: list[str] | tuple[str, ...] = (),
    ) -> OidcProvider:
        secret = client_secret if client_secret is not None else "oidc-secret-" + secrets.token_urlsafe(24)
        provider = OidcProvider(tmp_path / "oidc-logs", client_id, secret, redirect_uris)
        started.append(provider)
        _track(request, provider)
        provider.launch()
        return provider

    yield start
    for provider in started:
        provider.stop()


# --- an OAuth-protected upstream MCP server -----------------------------------------------------


class OAuthUpstream(Upstream):
    """A `tests/upstreams/oauth_upstream.py` process: an OAuth 2.1 authorization server in front of a
    protected MCP server (see that module for the endpoints and what each option does).

    ``url`` is the MCP endpoint, ``issuer`` the authorization server's issuer (``base_url`` plus
    ``issuer_path``, no trailing slash), ``prm_url`` the path-inserted protected resource metadata.
    ``stats()`` is ``GET /_test/stats``; `revoke_refresh_tokens`, `expire_access_tokens` and
    `set_refresh_delay` drive the other test-control endpoints. Options (keyword arguments, defaults
    as in the module): ``issuer_path``, ``resource_path``, ``cimd``, ``dcr``, ``www_authenticate_metadata``
    and ``revocation`` (bools), ``client_id``, ``client_secret``, ``redirect_uris``, ``access_ttl``,
    ``refresh_ttl``, ``scopes``, ``iss`` (``"on"``, ``"off"`` or ``"wrong"``) and ``ca_file``.
    All state is in memory: a restart forgets clients and tokens.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        issuer_path: str = "",
        resource_path: str = "/mcp",
        cimd: bool = True,
        dcr: bool = True,
        client_id: str | None = None,
        client_secret: str | None = None,
        redirect_uris: list[str] | tuple[str, ...] = (),
        access_ttl: float = 3600.0,
        refresh_ttl: float = 86400.0,
        scopes: str = "read write admin",
        iss: str = "on",
        www_authenticate_metadata: bool = True,
        revocation: bool = True,
        ca_file: str | Path | None = None,
    ) -> None:
        if iss not in ("on", "off", "wrong"):
            raise ValueError(f"iss must be on, off or wrong, not {iss!r}")
        self.kind = "oauth"
        self.issuer_path = issuer_path
        self.resource_path = resource_path
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        onoff = {True: "on", False: "off"}
        self.opts = {
            "cimd": onoff[cimd],
            "dcr": onoff[dcr],
            "access_ttl": access_ttl,
            "refresh_ttl": refresh_ttl,
            "scopes": scopes,
            "iss": iss,
            "www_authenticate_metadata": onoff[www_authenticate_metadata],
            "revocation": onoff[revocation],
        }
        self.ca_file = ca_file
        self.port = free_port()
        self._process = _Process(f"oauth-upstream-{next(_SERIAL)}", log_dir)

    @property
    def url(self) -> str:
        return self.base_url + self.resource_path

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    @property
    def prm_url(self) -> str:
        return self.base_url + "/.well-known/oauth-protected-resource" + self.resource_path

    @property
    def metadata_url(self) -> str:
        """The RFC 8414 (path-inserted) authorization server metadata URL."""
        return self.base_url + "/.well-known/oauth-authorization-server" + self.issuer_path

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tests.upstreams.oauth_upstream", "--port", str(self.port)]
        argv += ["--issuer-path", self.issuer_path, "--resource-path", self.resource_path]
        for key, value in self.opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        if self.client_id is not None:
            argv += ["--client-id", self.client_id, "--client-secret", self.client_secret or ""]
        for uri in self.redirect_uris:
            argv += ["--redirect-uri", uri]
        if self.ca_file is not None:
            argv += ["--ca-file", str(self.ca_file)]
        return argv

    def _ready(self) -> bool:
        try:
            return httpx2.get(self.prm_url, timeout=1.0, trust_env=False).status_code == 200
        except httpx2.HTTPError:
            return False

    def _start(self) -> OAuthUpstream:
        self.spawn()
        self._process.wait_ready(self._ready, f"200 from GET {self.prm_url}")
        return self

    def _control(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        response = httpx2.request(method, self.base_url + path, params=params, timeout=10.0, trust_env=False)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def stats(self) -> dict[str, Any]:
        """Counters (authorizations, denials, token_codes, refreshes, refresh_failures, registrations,
        cimd_fetches, revocations), ``clients``, ``active_refresh_tokens`` and ``resources``."""
        return self._control("GET", "/_test/stats")

    def revoke_refresh_tokens(self) -> None:
        """Revoke every grant (refresh and access tokens), as if the user removed the app."""
        self._control("POST", "/_test/revoke-refresh-tokens")

    def expire_access_tokens(self) -> None:
        """Every access token issued so far expires now."""
        self._control("POST", "/_test/expire-access-tokens")

    def set_refresh_delay(self, seconds: float) -> None:
        """Every later refresh_token grant waits ``seconds`` before it is processed (0: none)."""
        self._control("POST", "/_test/refresh-delay", seconds=seconds)

    def __repr__(self) -> str:
        return f"OAuthUpstream(url={self.url!r}, issuer={self.issuer!r}, running={self.running})"


@pytest.fixture
def start_oauth_upstream(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., OAuthUpstream]]:
    """``start_oauth_upstream(**options) -> OAuthUpstream``: a private one for this test, stopped at
    teardown (options as `OAuthUpstream` takes them)."""
    started: list[OAuthUpstream] = []

    def start(**options: Any) -> OAuthUpstream:
        upstream = OAuthUpstream(tmp_path / "oauth-upstream-logs", **options)
        started.append(upstream)
        _track(request, upstream)
        return upstream.launch()

    yield start
    for upstream in started:
        upstream.stop()


from _browser import _browser_loop, _browser_session, browser, page, pytest_collection_finish  # noqa: E402,F401
