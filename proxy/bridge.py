"""stdio <-> a namespace's MCP endpoint, for desktop agents that only start local programs.

Claude Desktop and its kin speak MCP over a child process's stdin and stdout. `junction bridge`
is that child: a message relay, not a second MCP implementation. Every JSON-RPC message from the
agent goes to `/mcp/{ns}` over the SDK's Streamable HTTP client transport, and every message the
gateway sends (responses, notifications such as `list_changed` and progress, sampling, elicitation
and roots requests) comes back unchanged. So whatever the namespace endpoint learns to serve works
through the bridge without a change here.

What it adds is surviving the gateway: a restart forgets the legacy HTTP session (the next request
answers "Session not found"), a stop refuses connections. The bridge then opens a new HTTP session,
replays the agent's `initialize`, `notifications/initialized`, log level and resource subscriptions
(under ids of its own, their answers kept from the agent), and sends again every request still
waiting for an answer, so the agent notices nothing. Retries back off for at most `retry_for`
seconds; then each waiting request gets a JSON-RPC error saying the gateway is unreachable, and
later requests fail at once until the gateway answers again. A `tools/call` whose connection broke
after it was sent is not sent again (the tool may have run): it gets an error that says so.

stdout carries the protocol; logs go to stderr and never contain the credential. The rules this
relay applies to single messages (headers per era, what counts as a lost link) are in
`proxy._bridge_rules`, without I/O.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)

from proxy import __version__
from proxy._bridge_rules import (
    LinkLost,
    cut_off_error,
    link_lost,
    negotiated_version,
    routing_headers,
    session_lost,
    stream_broke,
    unreachable_error,
)

log = logging.getLogger("junction.bridge")

DEFAULT_RETRY_FOR = 20.0  # seconds: a gateway restart takes 1-3 s; a desktop agent waits about a minute
FIRST_DELAY = 0.1
MAX_DELAY = 2.0
HANDSHAKE_TIMEOUT = 30.0
INBOX_SIZE = 256  # messages from the agent waiting for a connection (backpressure beyond that)
# Tool calls may run for minutes; SSE answers carry pings, JSON answers do not.
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=620.0)
BRIDGE_ID_PREFIX = "junction-bridge-"
# Requests whose effect lasts for the session: replayed, the last of each kind, after a reconnect.
SESSION_STATE_METHODS = ("logging/setLevel",)


class Receiver(Protocol):
    """Where messages come from (the SDK's stdio and HTTP streams both fit)."""

    async def receive(self) -> SessionMessage | Exception: ...


class Sender(Protocol):
    """Where messages go."""

    async def send(self, item: SessionMessage, /) -> None: ...

    async def aclose(self) -> None: ...


class HandshakeRefused(Exception):
    """The gateway answered the replayed `initialize` with an error (a revoked key, a deleted namespace)."""

    def __init__(self, error: ErrorData) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Session:
    """What the agent told the gateway that a new HTTP session must hear again."""

    initialize: JSONRPCRequest | None = None
    initialized: JSONRPCNotification | None = None
    version: str | None = None  # the protocol version the gateway answered `initialize` with
    state: dict[str, JSONRPCRequest] = field(default_factory=dict)  # method -> last request
    subscriptions: dict[str, JSONRPCRequest] = field(default_factory=dict)  # uri -> resources/subscribe

    @property
    def established(self) -> bool:
        return self.initialize is not None and self.version is not None


class Bridge:
    """One agent on stdio, one namespace endpoint over HTTP; `serve` runs until the agent leaves."""

    def __init__(self, url: str, key: str, *, retry_for: float = DEFAULT_RETRY_FOR) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {key}", "User-Agent": f"junction-bridge/{__version__}"}
        self.retry_for = retry_for
        self._pending: dict[RequestId, JSONRPCRequest] = {}  # the agent's requests awaiting an answer
        self._internal: set[RequestId] = set()  # our own replayed requests, answered to nobody
        self._sent: set[RequestId] = set()  # the agent's requests sent on the current link
        self._session = _Session()
        self._ids = itertools.count(1)
        self._down = False  # the last attempts all failed: fail fast until the gateway answers again
        self._heard = False  # the gateway sent something on the current link
        self._inbox_send, self._inbox = anyio.create_memory_object_stream[SessionMessage](INBOX_SIZE)
        self._agent_gone = anyio.Event()  # stdin closed: MCP's stdio shutdown signal

    def __repr__(self) -> str:  # never the key
        return f"Bridge(url={self.url!r})"

    async def serve(self, client_read: Receiver, client_write: Sender) -> None:
        """Relay between the agent's streams and the gateway until the agent closes its side."""
        self._client = client_write
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_agent, client_read)
            await self._supervise()
            tg.cancel_scope.cancel()
        await client_write.aclose()  # the stdout writer ends, so the process exits at once

    async def _read_agent(self, client_read: Receiver) -> None:
        try:
            async with self._inbox_send:
                while True:
                    try:
                        item = await client_read.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        return
                    if isinstance(item, Exception):  # a line that is not JSON-RPC: nobody to answer
                        log.warning("ignoring a message from the agent that is not JSON-RPC: %s", item)
                        continue
                    await self._inbox_send.send(item)
        finally:
            self._agent_gone.set()

    # --- connection lifecycle --------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Connect when there is something to send; reconnect with backoff; give up after `retry_for`."""
        carry: list[SessionMessage] = []  # notifications taken from the inbox, not yet sent
        failing_since: float | None = None
        attempt = 0
        while True:
            if not self._pending and not carry:
                try:
                    message = await self._inbox.receive()
                except anyio.EndOfStream:
                    return  # the agent closed stdin
                if self._take(message) is None:
                    carry.append(message)
            try:
                finished = await self._link(carry)
            except HandshakeRefused as exc:
                log.error("the gateway refused the session again: %s", exc.error.message)
                await self._fail_all(carry, exc.error)
                failing_since, attempt = None, 0
                continue
            except Exception as exc:  # noqa: BLE001  (sorted below: transport trouble or a bug)
                lost = link_lost(exc)
                if lost is None:
                    raise
                await self._drop_ambiguous_calls(lost)
                if self._heard:  # the link worked before it broke: a fresh retry budget
                    failing_since, attempt, self._heard = None, 0, False
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                budget = 0.0 if self._down else self.retry_for
                if now - failing_since >= budget:
                    log.error(
                        "the gateway at %s is unreachable (%s); giving up for now", self.url, lost.reason
                    )
                    self._down = True
                    await self._fail_all(carry, self._unreachable(lost.reason))
                    failing_since, attempt = None, 0
                    continue
                delay = min(FIRST_DELAY * 2**attempt, MAX_DELAY, budget - (now - failing_since))
                attempt += 1
                log.warning("lost the gateway (%s); reconnecting in %.1f s", lost.reason, delay)
                with anyio.move_on_after(max(delay, 0.0)):
                    await self._agent_gone.wait()
                if self._agent_gone.is_set():
                    return  # nobody is waiting for an answer any more
                continue
            if finished:
                return

    async def _link(self, carry: list[SessionMessage]) -> bool:
        """One HTTP session: relay until it is lost (raises) or the agent leaves (returns True)."""
        async with (
            httpx2.AsyncClient(headers=self._headers, timeout=HTTP_TIMEOUT, trust_env=False) as http,
            streamable_http_client(self.url, http_client=http) as (up_read, up_write),
        ):
            self._internal.clear()  # answers to the last link's requests never come on this one
            self._sent.clear()
            if self._session.established and self._session.initialize is not None:
                if self._session.initialize.id not in self._pending:
                    await self._replay(up_read, up_write)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._relay_gateway, up_read)
                for request in list(self._pending.values()):
                    await self._send(up_write, request)
                for message in carry:
                    await self._send(up_write, message.message)
                carry.clear()
                async for message in self._inbox:
                    self._take(message)
                    await self._send(up_write, message.message)
                tg.cancel_scope.cancel()
        return True

    async def _replay(self, up_read: Receiver, up_write: Sender) -> None:
        """A new HTTP session hears the agent's handshake and session state again."""
        session = self._session
        assert session.initialize is not None
        init = session.initialize.model_copy(update={"id": self._new_id()})
        await self._send(up_write, init)
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            while True:
                item = await self._receive(up_read)
                message = item.message
                if isinstance(message, JSONRPCResponse | JSONRPCError) and message.id == init.id:
                    break
                await self._client.send(item)  # a log line or such before the answer: the agent's
        self._internal.discard(init.id)
        if isinstance(message, JSONRPCError):
            raise HandshakeRefused(message.error)
        session.version = negotiated_version(message) or session.version
        if session.initialized is not None:
            await self._send(up_write, session.initialized)
        for request in [*session.state.values(), *session.subscriptions.values()]:
            await self._send(up_write, request.model_copy(update={"id": self._new_id()}))
        log.info("reconnected to %s", self.url)

    def _new_id(self) -> str:
        request_id = f"{BRIDGE_ID_PREFIX}{next(self._ids)}"
        self._internal.add(request_id)
        return request_id

    # --- messages --------------------------------------------------------------------------------
    def _take(self, item: SessionMessage) -> JSONRPCRequest | None:
        """Remember what a reconnect needs from one message of the agent; the request, if it is one."""
        message = item.message
        session = self._session
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/initialized":
            session.initialized = message
        if not isinstance(message, JSONRPCRequest):
            return None
        self._pending[message.id] = message
        params = message.params or {}
        if message.method == "initialize":
            session.initialize, session.version = message, None
        elif message.method in SESSION_STATE_METHODS:
            session.state[message.method] = message
        elif message.method == "resources/subscribe" and isinstance(params.get("uri"), str):
            session.subscriptions[params["uri"]] = message
        elif message.method == "resources/unsubscribe":
            session.subscriptions.pop(str(params.get("uri")), None)
        return message

    async def _send(self, up_write: Sender, message: JSONRPCMessage) -> None:
        headers = routing_headers(message, self._session.version)
        metadata = ClientMessageMetadata(headers=headers) if headers else None
        if isinstance(message, JSONRPCRequest):
            self._sent.add(message.id)
        try:
            await up_write.send(SessionMessage(message, metadata=metadata))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise LinkLost("the connection to the gateway closed", sent=True) from exc

    async def _relay_gateway(self, up_read: Receiver) -> None:
        """Gateway -> agent; a lost session or a broken stream ends the link (its requests stay pending)."""
        while True:
            item = await self._receive(up_read)
            message = item.message
            if isinstance(message, JSONRPCResponse | JSONRPCError):
                if message.id in self._internal:
                    self._internal.discard(message.id)
                    continue
                request = self._pending.get(message.id) if message.id is not None else None
                if isinstance(message, JSONRPCError) and request is not None:
                    if self._session.established and session_lost(message.error):
                        raise LinkLost("the gateway forgot the session (it restarted?)")
                    if stream_broke(message.error):
                        if request.method != "tools/call":
                            raise LinkLost(message.error.message, sent=True)  # safe to ask again
                        item = SessionMessage(cut_off_error(request.id))
                if request is not None:
                    del self._pending[request.id]
                if request is not None and request.method == "initialize":
                    self._answered_initialize(message)
            await self._client.send(item)

    def _answered_initialize(self, message: JSONRPCResponse | JSONRPCError) -> None:
        if isinstance(message, JSONRPCError):
            log.error("the gateway refused initialize: %s", message.error.message)
            self._session.initialize = None
            return
        self._session.version = negotiated_version(message)
        log.info("connected to %s (protocol %s)", self.url, self._session.version)

    async def _drop_ambiguous_calls(self, lost: LinkLost) -> None:
        """A tool call that may have reached the gateway gets an error; it is never sent twice."""
        if not lost.sent:
            return
        for request in list(self._pending.values()):
            if request.method == "tools/call" and request.id in self._sent:
                del self._pending[request.id]
                await self._client.send(SessionMessage(cut_off_error(request.id)))

    async def _fail_all(self, carry: list[SessionMessage], error: ErrorData) -> None:
        """Answer every waiting request of the agent with `error` (those still in the inbox too)."""
        carry.clear()
        while True:
            try:
                self._take(self._inbox.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        failed, self._pending = self._pending, {}
        for request_id in failed:
            await self._client.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))

    def _unreachable(self, reason: str) -> ErrorData:
        return unreachable_error(
            f"junction bridge: the gateway at {self.url} is unreachable ({reason}); "
            "is `junction serve` running? The bridge tries again on the next request."
        )

    async def _receive(self, up_read: Receiver) -> SessionMessage:
        """The next message from the gateway; the end of the stream is a lost link."""
        while True:
            try:
                item = await up_read.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
                raise LinkLost("the gateway closed the connection", sent=True) from exc
            if isinstance(item, Exception):
                log.warning("ignoring a message from the gateway that could not be read: %s", item)
                continue
            self._heard, self._down = True, False
            return item


async def run_stdio(url: str, key: str, *, retry_for: float = DEFAULT_RETRY_FOR) -> None:
    """Serve the agent on this process's stdin and stdout (the `junction bridge` command)."""
    from mcp.server.stdio import stdio_server

    bridge = Bridge(url, key, retry_for=retry_for)
    async with stdio_server() as (client_read, client_write):
        await bridge.serve(client_read, client_write)
