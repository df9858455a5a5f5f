"""One long-lived upstream MCP client per connection, shared by every caller.

Sessions connect lazily, are probed for their protocol era by the SDK (`mode="auto"`), fall back
to the legacy HTTP+SSE transport, reconnect with exponential backoff after failures, close when
idle, and re-initialize transparently when an upstream forgot the session (404 after a restart).
Nothing here reads the database: configs are handed in by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx2
import mcp.types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client
from mcp.client.extension import advertise
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.apps import APP_MIME_TYPE as APPS_MIME_TYPE
from mcp.server.apps import EXTENSION_ID as APPS_EXTENSION
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp_types.jsonrpc import CONNECTION_CLOSED
from pydantic import TypeAdapter, ValidationError

from proxy import __version__, wire
from proxy._sdk import CONNECTION_CLOSED_MESSAGE, client_closed
from proxy.errors import (
    InputRequired,
    JunctionError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.redact import Redactor
from proxy.upstream import relay
from proxy.upstream._clients import WireState, sse_http_client, streamable_http_client_for, tls_context
from proxy.upstream._describe import describe_failure, leaves, never_sent, not_mcp
from proxy.upstream._http1 import Http1Pool
from proxy.upstream.credentials import Credentials, CredentialsAuth, StaticCredentials
from proxy.upstream.fastlane import (
    FastLane,
    NotificationSink,
    ResultTooLarge,
    SessionExpired,
    Unauthorized,
    UpstreamRpcError,
)
from proxy.upstream.ssrf import check_upstream_url, resolve_checked
from proxy.upstream.stdio import StdioProcess, StdioSpec
from proxy.upstream.toollist import ToolList

log = logging.getLogger("junction.upstream")

# How often a session that is down (or up and in use) checks that its upstream answers TCP: a
# restarted upstream is in use again within this long, with or without traffic.
PROBE_INTERVAL = 0.5
PROBE_INTERVAL_CONNECTED = 1.0
_CLIENT_REQUEST: TypeAdapter[Any] = TypeAdapter(types.ClientRequest)
Key = tuple[str, str]
StateListener = Callable[[Key, dict[str, Any], dict[str, Any] | None], Awaitable[None]]
ToolsChangedListener = Callable[[Key], None]
# Told of what an upstream announces to all its clients: (key, method, params).
EventListener = Callable[[Key, str, dict[str, Any]], None]
_EVENT_METHODS: dict[type[Any], str] = {
    ToolsListChanged: "notifications/tools/list_changed",
    PromptsListChanged: "notifications/prompts/list_changed",
    ResourcesListChanged: "notifications/resources/list_changed",
}
_ANNOUNCED = (
    types.ToolListChangedNotification,
    types.ResourceListChangedNotification,
    types.PromptListChangedNotification,
    types.ResourceUpdatedNotification,
)


@contextlib.contextmanager
def _no_caller() -> Iterator[None]:
    caller, passing = relay.caller.set(None), relay.forwarded.set(None)
    try:
        yield
    finally:
        relay.forwarded.reset(passing)
        relay.caller.reset(caller)


def _dumped(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class UpstreamConfig:
    """Everything needed to reach one upstream. `headers` are plaintext credentials: never log them."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    connect_timeout: float = 15.0
    list_timeout: float = 20.0
    call_timeout: float = 600.0
    # Why this upstream must not be contacted (its stored credentials cannot be decrypted).
    unusable: str = ""
    # The `input_required` status when configuration is missing: not contacted until given it.
    input_required: dict[str, Any] | None = None
    # The catalog entry it was made from (its OAuth app), and what tells it from an earlier
    # connection with the same id: for the credentials hook.
    catalog_server: str | None = None
    incarnation: str = ""
    # A local program instead of a URL (proxy/upstream/stdio.py); `url` is then a pseudo-URL.
    stdio: StdioSpec | None = None
    # "auto": the newest era both sides speak; "legacy": the 2025 handshake (see legacy_variant).
    era: str = "auto"


@dataclass
class _Live:
    client: Client
    closed: anyio.Event
    done: anyio.Event
    transport: str
    wire_state: WireState
    error: BaseException | None = None
    fastlane: FastLane | None = None


class UpstreamSession:
    """The shared client of one connection, and what we know about it."""

    def __init__(self, pool: ConnectionPool, key: Key, config: UpstreamConfig):
        self._pool = pool
        self.key = key
        self.config = config
        self.credentials: Credentials = pool.credentials_for(key, config)
        # Text from the upstream is cleaned of the credentials it was sent before it goes anywhere.
        self._redactor = Redactor.for_headers(config.headers)
        self._stdio = StdioProcess(key, config.stdio) if config.stdio is not None else None
        self._redactor_for: int | None = None
        self._live: _Live | None = None
        self._connect_lock = anyio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._last_kind: type[JunctionError] = UpstreamUnavailable
        self._transport_hint: str | None = None
        self._closed = False  # removed from the pool: never reconnect
        self._legacy_refused = False  # the upstream refused a 2025-era session (2026-only)
        self.relay = relay.SessionRelay(
            lambda value: self.redactor.redact_json(value), lambda: self._inflight
        )
        self._watching = False
        self._inflight = 0
        self._idle_event: anyio.Event | None = None
        self._unreachable = False
        self._probed_at = 0.0
        self._probe_ok = False
        self.last_used = time.monotonic()
        self.server_info: dict[str, Any] | None = None
        self.protocol_version: str | None = None
        self.status: dict[str, Any] | None = None
        self.tools = ToolList(
            self._fetch_tools,
            pool.task_group,
            ttl=pool.tools_ttl,
            failure_ttl=pool.failure_ttl,
            on_change=lambda: pool.tools_changed(key),
        )

    @property
    def redactor(self) -> Redactor:
        """Cleans text from the upstream of every credential it was sent: the connection's
        headers and the current OAuth token (rebuilt when the credentials change)."""
        version = self.credentials.version
        if self._redactor_for != version:
            stdio_env = self.config.stdio.env if self.config.stdio is not None else {}
            self._redactor = Redactor.for_headers(
                {**self.config.headers, **self.credentials.headers(), **stdio_env}
            )
            self._redactor_for = version
        return self._redactor

    @property
    def busy(self) -> bool:
        """Requests are in flight on this session."""
        return self._inflight > 0

    @property
    def connected(self) -> bool:
        return self._live is not None and not self._live.done.is_set()

    @property
    def live_client(self) -> Client | None:
        """The connected client, if there is one (no I/O)."""
        live = self._live
        return live.client if live is not None and not live.done.is_set() else None

    # connecting
    async def client(self) -> Client:
        """The live client, connecting (or reconnecting after backoff) when needed."""
        self.last_used = time.monotonic()
        return await self._connected_client()

    async def _connected_client(self) -> Client:
        """`client()` without counting as use (the watcher reconnects through this)."""
        live = self._live
        if live is not None and not live.done.is_set():
            if not client_closed(live.client):
                return live.client
            self._forget(live.client)  # its event stream ended: nothing sent on it arrives
        if self.config.unusable:
            raise UpstreamUnavailable(self.config.unusable)
        if self.config.input_required is not None:
            await self._set_state(self.config.input_required)
            raise InputRequired(self.config.input_required)
        async with self._connect_lock:
            live = self._live
            if live is not None and not live.done.is_set():
                return live.client
            await self.credentials.prepare()
            if self.credentials.problem is not None:
                await self.block(self.credentials.problem)
                raise self.credentials.problem.with_traceback(None)
            wait = self._retry_at - time.monotonic()
            if wait > 0 and not (self._unreachable and await self._back()):
                raise self._last_kind(f"{self._last_error}; next attempt in {math.ceil(wait)} s")
            live = await self._connect_once()
            if self._failures:
                log.warning("upstream %s/%s reconnected", *self.key)
            self._failures = 0
            self._retry_at = 0.0
            await self._set_state({"state": "connected"})
            self.tools.recovered()
            self._watch()
            return live.client

    async def _connect_once(self) -> _Live:
        """Open a session; failures become the status and the error callers see."""
        try:
            with anyio.fail_after(self.config.connect_timeout):
                if self._stdio is None:
                    await check_upstream_url(self.config.url, self._pool.allow_private)
                self._live = await self._open()
                return self._live
        except Exception as exc:
            problem = self.credentials.problem
            if problem is not None:  # it refused our credentials: a person must act
                await self.block(problem)
                raise problem.with_traceback(None) from exc
            if self.credentials.failure:  # it refused our credentials, and fixing them failed
                await self._failed(self.credentials.failure, UpstreamError)
                raise UpstreamError(self.credentials.failure) from exc
            if isinstance(exc, JunctionError):
                await self._failed(exc.message, type(exc))
                raise
            message = describe_failure(exc)
            await self._failed(message, unreachable=never_sent(exc))
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"connecting to the upstream timed out after {self.config.connect_timeout:g} s"
                ) from exc
            raise UpstreamUnavailable(message) from exc

    async def block(self, problem: JunctionError) -> None:
        """Nothing works until a person acts (authorizes the gateway again): drop the session and
        its tools (they leave the namespace's list), and say why in the status."""
        self._forget(self._live.client if self._live else None)
        if self.tools.cached() is not None:
            self.tools.invalidate()
        status = getattr(problem, "connection_status", None) or {"state": "error", "message": problem.message}
        await self._set_state(status)

    async def authorized(self) -> None:
        """New credentials arrived: connect now (no backoff), so the status says how that went."""
        self._retry_at = 0.0
        self._failures = 0
        self._forget(self._live.client if self._live else None)
        await self.client()

    async def _back(self) -> bool:
        """Has an upstream that refused connections come back? Probed at most every 0.2 s, so
        callers of a dead upstream cost it one TCP connect per 0.2 s, not one per call."""
        now = time.monotonic()
        if now - self._probed_at >= 0.2:
            self._probed_at = now
            self._probe_ok = await self._reachable()
        return self._probe_ok

    async def _failed(
        self, message: str, kind: type[JunctionError] = UpstreamUnavailable, *, unreachable: bool = False
    ) -> None:
        # A refused connection costs nothing to retry once the upstream answers TCP again; the
        # backoff only spaces attempts at an upstream that answers and then fails.
        message = self.redactor.redact(message)
        self._unreachable = unreachable
        self._last_kind = kind
        self._failures += 1
        backoff = min(self._pool.backoff_max, 0.25 * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + (backoff if self._failures > 1 else 0.0)
        if message != self._last_error or self._failures == 1:
            log.warning("upstream %s/%s unavailable: %s", *self.key, message)
        self._last_error = message
        await self._set_state({"state": "error", "message": message})
        self._watch()

    async def _set_state(self, status: dict[str, Any]) -> None:
        if self._closed or self.config.era == "legacy":
            # Replaced or removed: the key's status is the new session's to tell; a legacy
            # variant's is its primary's.
            return
        if status != self.status:
            self.status = status
            await self._pool.state_changed(self.key, status, self.server_info)

    # watching: status follows the upstream, and a restarted upstream is used again at once
    def _watch(self) -> None:
        if not self._watching and not self._closed:
            self._watching = True
            self._pool.task_group.start_soon(self._watch_loop)

    async def _watch_loop(self) -> None:
        """While the session is in use or down: probe the upstream's TCP port every PROBE_INTERVAL.
        A refused probe marks a connected session down; an answering one after a failure
        reconnects at once (the backoff only spaces attempts at an upstream that answers TCP but
        fails MCP). Stops when the session is closed, or idle and healthy or idle for too long."""
        try:
            was_reachable = True
            misses = 0
            while not self._closed and self.credentials.problem is None:
                await anyio.sleep(PROBE_INTERVAL_CONNECTED if self.connected else PROBE_INTERVAL)
                if time.monotonic() - self.last_used > self._pool.idle_timeout:
                    return
                reachable = await self._reachable()
                if self._closed:
                    return
                if self.connected:
                    misses = 0 if reachable else misses + 1
                    if misses >= 2:  # one lost probe (a DNS hiccup) must not drop a live session
                        misses = 0
                        self._forget(self._live.client if self._live else None)
                        await self._failed(
                            "cannot connect to the upstream server (it stopped answering)", unreachable=True
                        )
                elif reachable:
                    if not was_reachable:
                        self._retry_at = 0.0  # it just came back: no reason to wait
                    if time.monotonic() >= self._retry_at:
                        with contextlib.suppress(Exception):
                            await self._connected_client()
                was_reachable = reachable
        finally:
            self._watching = False

    async def _reachable(self) -> bool:
        """Does the upstream accept a TCP connection (at an address the SSRF policy allows)?"""
        if self._stdio is not None:
            # A program, not a port: an exit ends the session (restarted after the backoff);
            # otherwise it is running, or one can be started.
            await self._stdio_exited()
            return True
        parts = urlsplit(self.config.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with anyio.fail_after(min(2.0, self.config.connect_timeout)):
                addresses = await resolve_checked(host, port, self._pool.allow_private)
                stream = await anyio.connect_tcp(addresses[0], port)
        except (OSError, TimeoutError, JunctionError):
            return False
        await stream.aclose()
        return True

    # stdio upstreams (proxy/upstream/stdio.py)
    def _stdio_exit_seen(self) -> None:
        """The program's stderr ended: it may have exited (told from its own reader)."""
        self._pool.task_group.start_soon(self._stdio_exited)

    async def _stdio_exited(self) -> None:
        """The program ended by itself: the session is over, the status says how it ended, and
        the watcher (or the next call) restarts it after a backoff that grows with each quick
        exit in a row."""
        ended = self._stdio.take_exit() if self._stdio is not None else None
        if ended is None:
            return
        message, crashes = ended
        live = self._live
        if live is not None:
            live.error = UpstreamUnavailable(message)
            self._forget(live.client)
        self._failures = crashes
        await self._failed(message)

    def _transports(self) -> list[str]:
        if self._stdio is not None:
            return ["stdio"]
        if self._transport_hint:
            return [self._transport_hint]
        path = urlsplit(self.config.url).path.rstrip("/")
        return ["sse", "streamable"] if path.endswith("/sse") else ["streamable", "sse"]

    async def _open(self) -> _Live:
        errors: list[BaseException] = []
        for kind in self._transports():
            try:
                # The transport's tasks belong to no caller (they would inherit this one's).
                with _no_caller():
                    live = await self._pool.task_group.start(self._run, kind)
            except Exception as exc:  # try the next transport, report the first failure
                errors.append(exc)
                found = leaves(exc)
                refused = [e for e in found if isinstance(e, UpstreamRefused)]
                if refused:
                    raise refused[0] from exc
                if any(isinstance(e, httpx2.ConnectError | httpx2.TimeoutException) for e in found):
                    break
                continue
            self._transport_hint = kind
            return live
        if len(errors) > 1 and all(not_mcp(e) for e in errors):
            raise UpstreamUnavailable(
                "the server at mcpUrl does not speak MCP over Streamable HTTP or HTTP+SSE "
                f"({describe_failure(errors[0])}); check the URL"
            )
        raise errors[0]

    async def _run(self, kind: str, *, task_status: TaskStatus[_Live]) -> None:
        closed, done = anyio.Event(), anyio.Event()
        started = False
        live: _Live | None = None
        http: httpx2.AsyncClient | None = None
        state = WireState()
        try:
            async with AsyncExitStack() as stack:
                if kind == "stdio" and self._stdio is not None:  # a local program: no fast lane
                    transport: Any = self._stdio.transport(self._stdio_exit_seen)
                    mode = "auto"
                elif kind == "sse":
                    c = self.config
                    auth = CredentialsAuth(self.credentials)
                    transport = sse_client(
                        c.url,
                        timeout=c.connect_timeout,
                        sse_read_timeout=max(c.call_timeout, 300.0) + 5,
                        httpx_client_factory=functools.partial(
                            sse_http_client, allow_private=self._pool.allow_private, state=state
                        ),
                        auth=auth,
                    )
                    mode = "legacy"
                else:
                    http = await stack.enter_async_context(
                        streamable_http_client_for(
                            self.config,
                            CredentialsAuth(self.credentials),
                            state,
                            allow_private=self._pool.allow_private,
                            max_connections=self._pool.max_connections,
                        )
                    )
                    transport = streamable_http_client(self.config.url, http_client=http)
                    mode = "legacy" if self.config.era == "legacy" else "auto"
                client = Client(
                    transport,
                    mode=mode,
                    cache=None,
                    client_info=types.Implementation(name="mcp-junction", version=__version__),
                    message_handler=self._on_message,
                    read_timeout_seconds=self.config.call_timeout,
                    # Declared so servers offer the tools that need them; relayed to the caller.
                    sampling_callback=self.relay.sampling_callback,
                    elicitation_callback=self.relay.elicitation_callback,
                    list_roots_callback=self.relay.roots_callback,
                    logging_callback=self.relay.logging_callback,
                    log_level="debug",  # 2026-07-28: ask for log messages; callers filter them
                    # MCP Apps: the gateway relays `ui://` resources to hosts that render them.
                    extensions=[advertise(APPS_EXTENSION, {"mimeTypes": [APPS_MIME_TYPE]})],
                )
                await stack.enter_async_context(client)
                self.protocol_version = client.protocol_version
                info = client.server_info
                self.server_info = (
                    info.model_dump(mode="json", by_alias=True, exclude_none=True) if info else None
                )
                live = _Live(client=client, closed=closed, done=done, transport=kind, wire_state=state)
                if http is not None:
                    session_id = state.session_ids[-1] if state.session_ids else None
                    fast_http = Http1Pool(
                        self.config.url,
                        {},
                        self.config.connect_timeout,
                        tls_context(),
                        allow_private=self._pool.allow_private,
                        max_connections=self._pool.max_connections,
                    )
                    stack.callback(fast_http.close)
                    live.fastlane = FastLane(
                        fast_http,
                        client.protocol_version,
                        session_id,
                        self.credentials,
                        self._pool.max_result_bytes,
                        self.relay,
                    )
                started = True
                task_status.started(live)
                async with anyio.create_task_group() as watchers:
                    if client.protocol_version in wire.MODERN_VERSIONS:
                        watchers.start_soon(self._listen, client)
                    await closed.wait()
                    watchers.cancel_scope.cancel()
        except Exception as exc:
            if not started:
                raise
            if live is not None:
                live.error = exc
            if self._live is live and not closed.is_set():
                message = self.redactor.redact(describe_failure(exc))
                self._failures += 1
                self._last_error = message
                log.warning("upstream %s/%s session ended: %s", *self.key, message)
                await self._set_state({"state": "error", "message": message})
                self._watch()
        finally:
            done.set()

    async def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.closed.set()
            with anyio.move_on_after(5, shield=True):
                await live.done.wait()

    async def discard(self, grace: float = 0.0) -> None:
        """Close for good: the connection was removed or replaced. Requests in flight get up to
        `grace` seconds to finish first (a headers change must not break them)."""
        self._closed = True
        if self._inflight and grace > 0:
            self._idle_event = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle_event.wait()
        await self.close()

    def _forget(self, live_client: Client | None) -> None:

        live = self._live
        if live is not None and live.client is live_client:
            live.closed.set()
            self._live = None

    async def _listen(self, client: Client) -> None:
        """A 2026-07-28 upstream announces list changes only on a `subscriptions/listen` stream:
        keep one open for the session's life (re-opened after a drop, at most every 5 s)."""
        caps = client.server_capabilities
        if caps is None or not any(
            getattr(getattr(caps, kind, None), "list_changed", False)
            for kind in ("tools", "prompts", "resources")
        ):
            return
        while True:
            try:
                async with client.listen(
                    tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True
                ) as subscription:
                    async for event in subscription:
                        method = _EVENT_METHODS.get(type(event))
                        if method is None:
                            continue
                        if method == "notifications/tools/list_changed":
                            self.tools.invalidate()
                        self._pool.upstream_event(self.key, method, {})
            except Exception as exc:  # noqa: BLE001 - the session's own failure handling reports it
                log.info("upstream %s/%s: change feed ended: %s", *self.key, describe_failure(exc))
            await anyio.sleep(5)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.tools.invalidate()
        if isinstance(message, _ANNOUNCED):
            params = (
                message.params.model_dump(mode="json", by_alias=True, exclude_none=True)
                if message.params
                else {}
            )
            self._pool.upstream_event(self.key, message.method, params)

    # requests
    async def _with_retry(
        self,
        op: Callable[[Client], Awaitable[Any]],
        limit: float,
        what: str,
        *,
        timed_by_op: bool = False,
    ) -> Any:
        """Run `op` on the live client within `limit` seconds (or let `op` keep that time itself:
        `timed_by_op`); reconnect and retry once when the request never reached the upstream
        (session forgotten after a restart, or connection refused)."""
        self._inflight += 1
        try:
            try:
                return await self._attempts(op, limit, what, timed_by_op)
            except (MCPError, UpstreamError) as exc:
                problem = self.credentials.problem
                if problem is None or isinstance(exc, type(problem)):
                    raise
                await self.block(problem)  # the upstream refused our credentials mid-session
                raise problem.with_traceback(None) from None
        except MCPError as exc:
            # An upstream may quote the credentials it was sent: they never go further.
            if not self.redactor:
                raise
            error = exc.error
            clean = self.redactor.redact_json(error.data) if error.data is not None else None
            raise type(exc)(error.code, self.redactor.redact(error.message), clean) from None
        except JunctionError as exc:
            if self.redactor:
                exc.message = self.redactor.redact(exc.message)
                exc.args = (exc.message,)
            raise
        finally:
            self._inflight -= 1
            if not self._inflight and self._idle_event is not None:
                self._idle_event.set()

    async def _attempts(
        self, op: Callable[[Client], Awaitable[Any]], limit: float, what: str, timed_by_op: bool
    ) -> Any:
        for attempt in (1, 2):
            client = await self.client()
            live = self._live
            try:
                if timed_by_op:
                    return await op(client)
                async with asyncio.timeout(limit):
                    return await op(client)
            except TimeoutError as exc:
                log.warning("upstream %s/%s: %s timed out after %g s", *self.key, what, limit)
                raise UpstreamTimeout(f"{what} timed out after {limit:g} s") from exc
            except SessionExpired as exc:
                self._forget(client)
                if attempt == 1:
                    continue
                raise UpstreamUnavailable("the upstream server keeps forgetting its session") from exc
            except UpstreamRpcError:
                raise  # the upstream's own answer to this request: pass it on unchanged
            except MCPError as exc:
                if (
                    live is not None
                    and live.wire_state.session_lost
                    and (exc.code == CONNECTION_CLOSED or wire.about_session(exc.error.message))
                ):
                    # The upstream forgot the session (a restart): the request was not executed.
                    self._forget(client)
                    if attempt == 1:
                        continue
                    raise UpstreamUnavailable("the upstream server keeps forgetting its session") from exc
                if exc.code != CONNECTION_CLOSED or exc.error.message != CONNECTION_CLOSED_MESSAGE:
                    raise  # the upstream's own error (one may use -32000 too)
                ended = await self._ended(live)
                if live is not None and not live.done.is_set():
                    raise  # the session is alive: this was the upstream's own -32000 error
                self._forget(client)
                if attempt == 1 and ended is not None and never_sent(ended):
                    continue
                message = (
                    (ended.message if isinstance(ended, JunctionError) else describe_failure(ended))
                    if ended is not None
                    else "the upstream closed the connection"
                )
                await self._failed(message, unreachable=ended is not None and never_sent(ended))
                raise UpstreamUnavailable(message) from exc
            except Unauthorized as exc:
                log.warning("upstream %s/%s refused the gateway's credentials", *self.key)
                raise UpstreamError(str(exc)) from exc
            except ResultTooLarge as exc:
                raise UpstreamError(str(exc)) from exc
            except JunctionError:
                raise
            except (OSError, httpx2.HTTPError, ConnectionError) as exc:
                if never_sent(exc) or client_closed(client):
                    self._forget(client)  # the upstream is gone or restarted: a new session
                    if attempt == 1 and never_sent(exc):
                        continue
                await self._failed(describe_failure(exc), unreachable=never_sent(exc))
                raise UpstreamUnavailable(describe_failure(exc)) from exc
            except wire.WireError as exc:
                log.warning("upstream %s/%s broke the protocol: %s", *self.key, exc.message)
                raise UpstreamError(f"the upstream broke the MCP protocol: {exc.message}") from exc
            except Exception as exc:
                # The transport is fine; the answer was not usable (bad JSON, invalid result).
                log.warning("upstream %s/%s: %s failed: %s", *self.key, what, describe_failure(exc))
                raise UpstreamError(describe_failure(exc)) from exc
        raise UpstreamUnavailable(self._last_error or "the upstream server is unavailable")

    async def _ended(self, live: _Live | None) -> BaseException | None:
        """Why the session's transport ended (waits briefly for it to finish unwinding)."""
        if live is None:
            return None
        # Only asked after the SDK said the connection closed, so the end is on its way; a loaded
        # machine can take more than a second to unwind an HTTP+SSE transport.
        with anyio.move_on_after(5.0):
            await live.done.wait()
        return live.error

    @property
    def tools_version(self) -> int:
        return self.tools.version

    def cached_tools(self) -> list[types.Tool] | None:
        """The tool list if it is cached and fresh, else None (no I/O)."""
        return self.tools.cached()

    async def list_tools(self, *, wait: float | None = None) -> list[types.Tool]:
        """Every tool of the upstream (all pages), cached; see `ToolList`."""
        self.last_used = time.monotonic()
        return await self.tools.get(self.config.list_timeout if wait is None else wait)

    async def _fetch_tools(self) -> list[types.Tool]:
        """Walk every page of the upstream's tools (up to the pool's page limit, reported in the
        connection's status when hit)."""
        max_pages = self._pool.max_tool_pages
        truncated = False

        async def walk(client: Client) -> list[types.Tool]:
            nonlocal truncated
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(max_pages):
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    return tools
            truncated = True
            return tools

        try:
            tools: list[types.Tool] = await self._with_retry(walk, self.config.list_timeout, "listing tools")
        except MCPError as exc:
            raise UpstreamError(describe_failure(exc)) from exc
        except JunctionError:
            raise
        except Exception as exc:
            raise UpstreamUnavailable(describe_failure(exc)) from exc
        if truncated:
            log.warning("upstream %s/%s has more than %d pages of tools", *self.key, max_pages)
            await self._set_state(
                {
                    "state": "connected",
                    "message": f"the tool list was cut at {max_pages} pages (setting max_tool_pages)",
                }
            )
        return tools

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        meta: dict[str, Any] | None = None,
        notify: NotificationSink | None = None,
    ) -> dict[str, Any]:
        """Call a tool; the upstream's result object, unchanged (content, structuredContent, isError).

        `meta` goes into the request's `_meta` (a progressToken); `notify` receives what the
        upstream says about the call meanwhile (progress)."""
        if relay.pushing():
            target = await self.legacy_target()
            if target is not self:
                return await target.call_tool(name, arguments, meta=meta, notify=notify)
        # A caller that can be asked things (sampling, elicitation) is served by the SDK client,
        # which relays what the upstream asks on the call's own stream.
        forwarded = relay.forwarded.get() if self.protocol_version in wire.MODERN_VERSIONS else None
        # A 2026 caller of a 2026 upstream makes its own round trips: the fast lane carries its
        # answers and the upstream's state, and brings an `input_required` back, unchanged.
        slow = name in self.tools.header_tools or (relay.interactive() and forwarded is None)
        extra: dict[str, Any] | None = None
        if forwarded is not None:
            extra = {"inputResponses": forwarded.responses, "requestState": forwarded.state}
            extra = {k: v for k, v in extra.items() if v is not None} or None
            if forwarded.capabilities:  # it asks only for what the caller can answer
                meta = {**(meta or {}), wire.META_CAPABILITIES: forwarded.capabilities}
        timeout = self.config.call_timeout

        async def call(client: Client) -> dict[str, Any]:
            live = self._live
            if not slow and live is not None and live.client is client and live.fastlane is not None:
                # The fast lane keeps the deadline on its connection: no timeout scope per call.
                deadline = asyncio.get_running_loop().time() + timeout
                return await live.fastlane.call_tool(
                    name, arguments, deadline, meta=meta, notify=notify, more=extra
                )
            progress = None
            token = meta.get("progressToken") if meta else None
            if notify is not None and token is not None:

                async def progress(progress: float, total: float | None, message: str | None) -> None:
                    params: dict[str, Any] = {"progressToken": token, "progress": progress}
                    if total is not None:
                        params["total"] = total
                    if message is not None:
                        params["message"] = message
                    await notify(wire.Notification("notifications/progress", params))

            async with asyncio.timeout(timeout):
                with self.relay.calling():
                    if forwarded is not None:  # a 2026 caller answers the questions itself
                        result = await client.session.call_tool(
                            name,
                            arguments,
                            progress_callback=progress,
                            input_responses=forwarded.input_responses(),
                            request_state=forwarded.state,
                            meta=cast(Any, meta),
                            allow_input_required=True,
                            allow_claimed=False,
                        )
                    else:  # questions go to the caller through the callbacks (relay)
                        result = await client.call_tool(name, arguments, progress_callback=progress)
            dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
            return dumped

        result: dict[str, Any] = await self._with_retry(call, timeout, f"tool {name!r}", timed_by_op=True)
        if result.get("isError") is True and self.redactor:
            return self.redactor.redact_json(result)  # type: ignore[no-any-return]
        return result

    async def legacy_target(self) -> UpstreamSession:
        """The session that serves a 2025-era caller's exchanges best: this one, or, when this
        one speaks 2026-07-28 with a server that speaks both eras, a 2025-era session to the same
        server. Only there does a server push its requests (sampling, elicitation) on the call's
        stream and accept `resources/subscribe`; in 2026-07-28 it cannot push at all."""
        if self.config.era == "legacy" or self._legacy_refused or self.config.stdio is not None:
            return self
        await self.client()
        if self.protocol_version not in wire.MODERN_VERSIONS:
            return self
        variant = self._pool.legacy_variant(self)
        try:
            await variant.client()
        except Exception:  # noqa: BLE001 - a 2026-only server: stay on this session
            self._legacy_refused = True
            await self._pool.drop_variant(self.key)
            return self
        if variant.protocol_version in wire.MODERN_VERSIONS:
            return self
        return variant

    async def request(self, method: str, params: dict[str, Any] | None, result_type: type[Any]) -> Any:
        """Forward any other request (resources, prompts, completion) unchanged."""
        if method in ("resources/subscribe", "resources/unsubscribe"):
            target = await self.legacy_target()  # a 2025-era method
            if target is not self:
                return await target.request(method, params, result_type)

        try:
            request = _CLIENT_REQUEST.validate_python({"method": method, "params": params})
        except ValidationError as exc:
            raise MCPError(-32602, f"invalid params for {method}") from exc

        async def send(client: Client) -> Any:
            return await client.session.send_request(request, result_type)

        return await self._with_retry(send, self.config.list_timeout, method)

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """`prompts/get` or `resources/read`, which a 2026-07-28 upstream may answer with
        `input_required`: passed to a 2026 caller as is (`relay.forwarded`), else its questions
        go to the caller through the callbacks and the request is retried."""
        if relay.pushing():
            target = await self.legacy_target()
            if target is not self:
                return await target.ask(method, params)
        modern = self.protocol_version in wire.MODERN_VERSIONS
        forwarded = relay.forwarded.get() if modern else None
        prompt = method == "prompts/get"

        async def send(client: Client) -> Any:
            if forwarded is not None:
                extra: dict[str, Any] = {
                    "input_responses": forwarded.input_responses(),
                    "request_state": forwarded.state,
                    "allow_input_required": True,
                }
                if prompt:
                    return await client.session.get_prompt(params["name"], params.get("arguments"), **extra)
                return await client.session.read_resource(params["uri"], **extra)
            if modern:
                if prompt:
                    return await client.get_prompt(params["name"], params.get("arguments"))
                return await client.read_resource(params["uri"])
            result_type = types.GetPromptResult if prompt else types.ReadResourceResult
            request = _CLIENT_REQUEST.validate_python({"method": method, "params": params})
            return await client.session.send_request(request, result_type)

        if not isinstance(params.get("name" if prompt else "uri"), str):
            raise MCPError(wire.INVALID_PARAMS, f"invalid params for {method}")
        with self.relay.calling():
            result = await self._with_retry(send, self.config.call_timeout, method)
        return _dumped(result)

    @property
    def transport(self) -> str | None:
        """How the upstream was last reached: "streamable" (HTTP), "sse" (HTTP+SSE), or None
        before the first connection (read-only; the per-connection relay asks)."""
        return self._transport_hint


class ConnectionPool:
    """All upstream sessions of this gateway instance."""

    def __init__(
        self,
        task_group: TaskGroup,
        *,
        allow_private: bool,
        tools_ttl: float,
        idle_timeout: float,
        backoff_max: float = 5.0,
        max_connections: int = 100,
        max_result_bytes: int = 32 * 1024 * 1024,
        max_tool_pages: int = 1000,
        failure_ttl: float = 5.0,
        credentials_for: Callable[[Key, UpstreamConfig], Credentials] | None = None,
    ):
        self.task_group = task_group
        self.allow_private = allow_private
        self.tools_ttl = tools_ttl
        self.idle_timeout = idle_timeout
        self.backoff_max = backoff_max
        self.max_connections = max_connections
        self.max_result_bytes = max_result_bytes
        self.max_tool_pages = max_tool_pages
        self.failure_ttl = failure_ttl
        self.credentials_for = credentials_for or (lambda _key, config: StaticCredentials(config.headers))
        self._sessions: dict[Key, UpstreamSession] = {}
        self._variants: dict[Key, UpstreamSession] = {}  # 2025-era sessions beside 2026 ones
        self._state_listeners: list[StateListener] = []
        self._tools_listeners: list[ToolsChangedListener] = []
        self._event_listeners: list[EventListener] = []

    def on_state_change(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def on_tools_changed(self, listener: ToolsChangedListener) -> None:
        self._tools_listeners.append(listener)

    async def state_changed(
        self, key: Key, status: dict[str, Any], server_info: dict[str, Any] | None
    ) -> None:
        for listener in self._state_listeners:
            try:
                await listener(key, status, server_info)
            except Exception:  # a listener failing must not break the request that changed state
                log.exception("state listener failed for %s/%s", *key)

    def tools_changed(self, key: Key) -> None:
        for listener in self._tools_listeners:
            listener(key)

    def on_upstream_event(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    def upstream_event(self, key: Key, method: str, params: dict[str, Any]) -> None:
        for listener in self._event_listeners:
            try:
                listener(key, method, params)
            except Exception:  # one listener failing must not stop the others
                log.exception("event listener failed for %s/%s", *key)

    def get(self, key: Key) -> UpstreamSession | None:
        return self._sessions.get(key)

    def session(self, key: Key, config: UpstreamConfig) -> UpstreamSession:
        """The session for `key`, replacing it when its config changed."""
        current = self._sessions.get(key)
        if current is not None and current.config == config:
            return current
        if current is not None:
            # Calls in flight on the old session finish there; new calls use the new one.
            self.task_group.start_soon(current.discard, current.config.call_timeout)
            variant = self._variants.pop(key, None)
            if variant is not None:
                self.task_group.start_soon(variant.discard, variant.config.call_timeout)
        session = UpstreamSession(self, key, config)
        self._sessions[key] = session
        return session

    def legacy_variant(self, primary: UpstreamSession) -> UpstreamSession:
        """The 2025-era session beside `primary` (made on first use, not reported in status)."""
        config = replace(primary.config, era="legacy")
        current = self._variants.get(primary.key)
        if current is not None and current.config == config:
            return current
        if current is not None:
            self.task_group.start_soon(current.discard, current.config.call_timeout)
        variant = self._variants[primary.key] = UpstreamSession(self, primary.key, config)
        return variant

    async def drop_variant(self, key: Key) -> None:
        variant = self._variants.pop(key, None)
        if variant is not None:
            await variant.discard()

    async def remove(self, key: Key) -> None:
        await self.drop_variant(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            await session.discard()

    async def remove_namespace(self, namespace: str) -> None:
        for key in [k for k in self._sessions if k[0] == namespace]:
            await self.remove(key)

    async def close_idle(self) -> int:
        """Close sessions unused for longer than the idle timeout; return how many."""
        now = time.monotonic()
        idle = [
            s
            for s in [*self._sessions.values(), *self._variants.values()]
            if s.connected and not s.busy and now - s.last_used > self.idle_timeout
        ]
        for session in idle:
            await session.close()
        return len(idle)

    async def run_reaper(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            await self.close_idle()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for session in [*self._sessions.values(), *self._variants.values()]:
                await session.discard()
        self._sessions.clear()
        self._variants.clear()


__all__ = ["ConnectionPool", "UpstreamConfig", "UpstreamSession", "UpstreamError"]
