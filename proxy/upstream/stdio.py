"""Stdio upstreams: MCP servers the gateway runs itself, as child processes.

Off unless `allow_stdio_upstreams` is set, and only admin API keys may create or change one: a
connection names a program, and the gateway runs it with its own rights on its own host.

The SDK's `stdio_client` spawns the program in a process group of its own, speaks newline-delimited
JSON-RPC over its stdin and stdout, and stops it when the session ends (stdin closed; SIGTERM to the
whole group after 2 s; SIGKILL 2 s later), so neither a deleted connection nor a stopping gateway
leaves a process behind. This module adds what a gateway needs around it:

- the environment: the SDK's minimal base (HOME, LOGNAME, PATH, SHELL, TERM, USER of the gateway)
  plus the connection's own `env`, never the gateway's other variables (`JUNCTION_*`, the master
  key); the working directory is the connection's `cwd`, else the gateway's;
- stderr, captured line by line into the log (logger `junction.upstream.stdio`, prefixed with the
  connection, cleaned of the env values; at most `STDERR_LINES` lines per `STDERR_WINDOW` seconds);
- the exit: reported once per process that ends by itself, with its code, and how many quick exits
  in a row there were, so the pool restarts it with a backoff that grows across restarts.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import Process
from mcp.client._transport import TransportStreams
from mcp.client.stdio import StdioServerParameters, stdio_client

from proxy.errors import Forbidden, UpstreamUnavailable, ValidationFailed
from proxy.redact import Redactor

log = logging.getLogger("junction.upstream.stdio")

# What a connection may ask for: bounded, so a request cannot make the gateway build a huge argv.
MAX_COMMAND = 1024
MAX_ARGS = 256
MAX_ARG = 8192
MAX_ENV = 256
MAX_ENV_VALUE = 32_768
MAX_TOTAL = 256 * 1024  # all of command, args and env together, in characters
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# A process that ran this long before exiting was not crash-looping: its backoff starts over.
STABLE_AFTER = 30.0
STDERR_LINE = 4000  # characters of one stderr line that reach the log
STDERR_LINES = 200  # lines per window; the rest are counted, not logged
STDERR_WINDOW = 10.0
EXIT_WAIT = 2.0  # how long stderr's end may come before the exit code does


class StdioDisabled(Forbidden):
    """A stdio connection on a gateway that does not run programs (`allow_stdio_upstreams`)."""

    code = "stdio_disabled"


@dataclass(frozen=True)
class StdioSpec:
    """What to run for one connection. `env` values are credentials: never log them."""

    command: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None

    @property
    def url(self) -> str:
        """The pseudo-URL that stands for it where a URL is expected (never contacted)."""
        return f"stdio:{self.command}"


@dataclass(frozen=True)
class StdioInput:
    """The stdio fields of a create/update request: None where absent; an env value of None
    removes that variable (as a header value of None removes the header)."""

    command: str | None = None
    args: tuple[str, ...] | None = None
    env: dict[str, str | None] | None = None
    cwd: str | None = None


STDIO_FIELDS = ("command", "args", "env", "cwd")


def parse_stdio_input(body: Mapping[str, Any]) -> StdioInput:
    """Validate the stdio fields of a connection request (`transport: "stdio"`)."""
    command = body.get("command")
    if command is not None and (
        not isinstance(command, str) or not 1 <= len(command) <= MAX_COMMAND or "\0" in command
    ):
        raise ValidationFailed(f"command must be a non-empty string of at most {MAX_COMMAND} characters")
    args = body.get("args")
    if args is not None:
        if not isinstance(args, list) or len(args) > MAX_ARGS:
            raise ValidationFailed(f"args must be a list of at most {MAX_ARGS} strings")
        for arg in args:
            if not isinstance(arg, str) or len(arg) > MAX_ARG or "\0" in arg:
                raise ValidationFailed(f"each of args must be a string of at most {MAX_ARG} characters")
    env = body.get("env")
    if env is not None:
        if not isinstance(env, dict) or len(env) > MAX_ENV:
            raise ValidationFailed(f"env must be an object of at most {MAX_ENV} variable names to strings")
        for name, value in env.items():
            if not ENV_NAME.fullmatch(name):
                raise ValidationFailed(f"env name {name[:64]!r} is not a variable name (letters, digits, _)")
            if value is not None and (
                not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\0" in value
            ):
                # Never echo the value: it may be a credential.
                raise ValidationFailed(
                    f"env {name!r} must be a string of at most {MAX_ENV_VALUE} characters (or null to remove it)"
                )
    cwd = body.get("cwd")
    if cwd is not None and (
        not isinstance(cwd, str) or not cwd.startswith("/") or len(cwd) > 4096 or "\0" in cwd
    ):
        raise ValidationFailed("cwd must be an absolute path")
    total = (
        len(command or "")
        + sum(map(len, args or []))
        + sum(len(k) + len(v or "") for k, v in (env or {}).items())
    )
    if total > MAX_TOTAL:
        raise ValidationFailed(f"command, args and env must be at most {MAX_TOTAL} characters together")
    return StdioInput(
        command=command,
        args=tuple(args) if args is not None else None,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )


def describe_exit(code: int) -> str:
    """One line for a process's end (asyncio gives a signal's end as its negative number)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"the stdio server was killed by signal {-code} ({name})"
    return f"the stdio server exited with code {code}"


@dataclass
class _Run:
    """One process of a connection."""

    process: Process | None
    started_at: float
    reported: bool = False
    stopping: bool = False  # our side ended the session: its end is not a crash


class StdioProcess:
    """The program of one connection: starts it for each session the pool opens, logs its stderr,
    and tells the pool once when it ended by itself."""

    def __init__(self, key: tuple[str, str], spec: StdioSpec):
        self.key = key
        self.spec = spec
        self.crashes = 0  # quick exits in a row
        self._run: _Run | None = None
        self._redactor = Redactor.for_headers(spec.env)

    @property
    def pid(self) -> int | None:
        run = self._run
        return run.process.pid if run is not None and run.process is not None else None

    def running(self) -> bool:
        """A process runs (or is being started) for this connection."""
        run = self._run
        return (
            run is not None and not run.stopping and (run.process is None or run.process.returncode is None)
        )

    def take_exit(self) -> tuple[str, int] | None:
        """Once per process that ended by itself (not stopped by us): why, and the number of
        quick exits in a row (which the restart backoff grows with)."""
        run = self._run
        if run is None or run.process is None or run.reported or run.stopping:
            return None
        code = run.process.returncode
        if code is None:
            return None
        run.reported = True
        self.crashes = self.crashes + 1 if time.monotonic() - run.started_at < STABLE_AFTER else 1
        return describe_exit(code), self.crashes

    @asynccontextmanager
    async def transport(self, on_exit: Callable[[], None]) -> AsyncIterator[TransportStreams]:
        """The SDK transport over a freshly started process (an MCP `Transport`); `on_exit` is
        called when the process may have ended by itself (then `take_exit` says how)."""
        spec = self.spec
        params = StdioServerParameters(
            command=spec.command, args=list(spec.args), env=dict(spec.env), cwd=spec.cwd
        )
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        errlog = os.fdopen(write_fd, "w")
        run = self._run = _Run(process=None, started_at=time.monotonic())
        failure: str | None = None
        try:
            async with AsyncExitStack() as stack:
                # Unwound in reverse: the SDK stops the process, then the reader logs its last
                # lines (for up to a second), then the reader's group ends.
                group = await stack.enter_async_context(anyio.create_task_group())
                reader = anyio.Event()
                stack.push_async_callback(_bounded_wait, reader, 1.0, group.cancel_scope)
                client = stdio_client(params, errlog=errlog)
                try:
                    streams = await stack.enter_async_context(client)
                except OSError as exc:
                    reader.set()
                    failure = f"cannot start the stdio server {spec.command!r}: {exc.strerror or type(exc).__name__}"
                    raise
                errlog.close()  # the child holds its own copy: stderr ends when the child does
                run.process = _process_of(client)
                run.started_at = time.monotonic()
                log.info("%s/%s started %s (pid %s)", *self.key, spec.command, self.pid or "?")
                group.start_soon(self._read_stderr, read_fd, run, on_exit, reader)
                try:
                    yield streams
                except Exception:
                    # The session failed: if the program ended by itself, that is why.
                    if await _returncode(run.process, 1.0) is not None and not run.stopping:
                        run.reported = True
                        failure = describe_exit(run.process.returncode or 0) if run.process else None
                    run.stopping = True
                    raise
                run.stopping = True  # closed by the pool: the SDK stops the process now
        except Exception as exc:
            if failure is not None:
                raise UpstreamUnavailable(failure) from exc
            raise
        finally:
            run.stopping = True
            errlog.close()
            os.close(read_fd)

    async def _read_stderr(self, fd: int, run: _Run, on_exit: Callable[[], None], done: anyio.Event) -> None:
        """Log each stderr line until it ends; then tell the pool if the process ended."""
        prefix = "%s/%s stderr: %s"
        pending = b""
        window_start, logged, dropped = time.monotonic(), 0, 0
        try:
            while True:
                try:
                    await anyio.wait_readable(fd)
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except (OSError, anyio.ClosedResourceError):
                    break
                lines = (pending + chunk).split(b"\n") if chunk else [pending, b""]
                pending = lines.pop()
                if len(pending) > STDERR_LINE * 4:  # a line without end: log what we have
                    lines.append(pending)
                    pending = b""
                now = time.monotonic()
                if now - window_start >= STDERR_WINDOW:
                    if dropped:
                        log.warning("%s/%s: %d lines of stderr not logged (too many)", *self.key, dropped)
                    window_start, logged, dropped = now, 0, 0
                for raw in lines:
                    text = raw.decode("utf-8", "replace").rstrip("\r")
                    if not text:
                        continue
                    if logged >= STDERR_LINES:
                        dropped += 1
                        continue
                    logged += 1
                    if len(text) > STDERR_LINE:
                        text = text[:STDERR_LINE] + "..."
                    log.info(prefix, *self.key, self._redactor.redact(text))
                if not chunk:
                    break
            if dropped:
                log.warning("%s/%s: %d lines of stderr not logged (too many)", *self.key, dropped)
            if not run.stopping and await _returncode(run.process, EXIT_WAIT) is not None:
                on_exit()
        finally:
            done.set()


def _process_of(client: Any) -> Process | None:
    """The process `stdio_client` started. The SDK keeps it in its generator's frame and offers
    no accessor; without it the exit code and pid are unknown (the tests check both)."""
    frame = getattr(getattr(client, "gen", None), "ag_frame", None)
    process = frame.f_locals.get("process") if frame is not None else None
    return process if isinstance(process, Process) else None


async def _returncode(process: Process | None, wait: float) -> int | None:
    """The exit code, waiting up to `wait` s for the event loop to reap the process (asyncio's
    `wait()` also waits for its pipes, which a grandchild may hold: hence the bound)."""
    if process is None:
        return None
    if process.returncode is None:
        with anyio.move_on_after(wait):
            await process.wait()
    return process.returncode


async def _bounded_wait(event: anyio.Event, limit: float, scope: anyio.CancelScope) -> None:
    """Let the stderr reader log the last lines (the process is stopped by now), then stop it (a
    grandchild may hold stderr open forever)."""
    with anyio.move_on_after(limit):
        await event.wait()
    scope.cancel()
