"""The per-connection endpoint as a faithful proxy: a client's HTTP exchanges relayed to the
upstream's MCP URL as they are.

A legacy client that sends `initialize` gets its own upstream session: sampling, elicitation,
roots, subscriptions, logging and the GET stream then work exactly as against the upstream, with
no protocol translated here. A 2026-07-28 request to a 2026-07-28 upstream is relayed the same
way, one request at a time (MRTR results and retries, `subscriptions/listen` streams, cache hints
and header validation are the upstream's). What the relay adds:

- the connection's upstream credentials on every request (the pool's `Credentials` hook; a 401,
  or a 403 asking for more scope, gets new credentials and one retry), and never the client's;
- its own `Mcp-Session-Id`, mapped to the upstream's, bound to the principal that created it
  (anyone else gets 404), ended when idle, when the client deletes it, or with its connection;
- everything the upstream says cleaned of the credentials it was sent, event by event;
- SSRF-pinned sockets, like every other upstream request.

Sessions live in this process: a restart (or another instance) answers 404, and the client
initializes again, as the transport says it must.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import httpx2
from anyio.abc import TaskGroup
from starlette.requests import Request
from starlette.responses import Response

from proxy import wire
from proxy.directory import Directory
from proxy.errors import JunctionError, NotFound, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from proxy.gateway.relayed_events import RelayedEvents
from proxy.settings import Settings
from proxy.upstream._clients import tls_context
from proxy.upstream._pinned import pinned_transport
from proxy.upstream.credentials import Challenge
from proxy.upstream.pool import UpstreamSession

log = logging.getLogger("junction.relay")

# Minted ids carry this prefix, so an id of ours that is unknown (expired, deleted, from before a
# restart) gets 404 and a re-initialize, while other ids (the Smithery SDK's `smithery-stateless`)
# keep the stateless passthrough.
SESSION_PREFIX = "mcpj-"
Key = tuple[str, str]


@dataclass(eq=False)
class RelaySession:
    """One client's upstream session."""

    id: str
    key: Key
    owner: str
    upstream: UpstreamSession  # the connection's session when last used: its credentials
    upstream_id: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0
    streams: set[anyio.CancelScope] = field(default_factory=set)
    ended: bool = False


class SessionGone(NotFound):
    """The client's session is unknown here: it must initialize again (HTTP 404)."""


class Relay:
    """Every relayed session of this gateway instance, and the HTTP client they share."""

    def __init__(self, settings: Settings, directory: Directory, task_group: TaskGroup):
        self._settings = settings
        self._directory = directory
        self._task_group = task_group
        self._sessions: dict[str, RelaySession] = {}
        self._http: httpx2.AsyncClient | None = None
        self._reaping = False
        directory.subscribe(self._on_change)

    # sessions
    def owns(self, session_id: str) -> bool:
        """Is this a session id this relay mints (known or not)?"""
        return session_id.startswith(SESSION_PREFIX)

    def session(self, session_id: str, key: Key, owner: str) -> RelaySession:
        """The caller's live session, or SessionGone (unknown, another connection's or another
        principal's: they are told apart by nobody)."""
        relay = self._sessions.get(session_id)
        if relay is None or relay.key != key or relay.owner != owner or relay.ended:
            raise SessionGone("session not found; initialize a new one")
        if not relay.active and time.monotonic() - relay.last_used > self._settings.session_idle_timeout:
            self._end(relay, tell_upstream=True)
            raise SessionGone("session expired; initialize a new one")
        return relay

    def _new(self, key: Key, owner: str, upstream: UpstreamSession, upstream_id: str | None) -> RelaySession:
        if len(self._sessions) >= self._settings.max_legacy_sessions:
            idle = [s for s in self._sessions.values() if not s.active]
            if not idle:
                raise UpstreamUnavailable("too many open sessions on this gateway; try again later")
            self._end(min(idle, key=lambda s: s.last_used), tell_upstream=True)
        relay = RelaySession(SESSION_PREFIX + secrets.token_hex(16), key, owner, upstream, upstream_id)
        self._sessions[relay.id] = relay
        if not self._reaping:
            self._reaping = True
            self._task_group.start_soon(self._reap)
        return relay

    def _end(self, relay: RelaySession, *, tell_upstream: bool) -> None:
        """Forget `relay`, close its open streams, and (best effort) end the upstream session."""
        if relay.ended:
            return
        relay.ended = True
        self._sessions.pop(relay.id, None)
        for scope in relay.streams:
            scope.cancel()
        if tell_upstream and relay.upstream_id is not None:
            self._task_group.start_soon(self._delete_upstream, relay)

    async def _delete_upstream(self, relay: RelaySession) -> None:
        headers = {wire.SESSION_HEADER: relay.upstream_id or ""}
        with anyio.move_on_after(5, shield=True):
            try:
                response = await self._send("DELETE", relay.upstream, headers, b"", stream=False)
                await response.aclose()
            except (JunctionError, httpx2.HTTPError, OSError):
                pass  # the upstream may be gone too; its own idle timeout ends the session

    async def _reap(self) -> None:
        """End sessions idle longer than the setting; at shutdown, end them all."""
        timeout = self._settings.session_idle_timeout
        try:
            while True:
                await anyio.sleep(max(0.2, min(30.0, timeout / 4)))
                now = time.monotonic()
                for relay in [s for s in self._sessions.values() if not s.active]:
                    if now - relay.last_used > timeout:
                        self._end(relay, tell_upstream=True)
        finally:
            with anyio.move_on_after(5, shield=True):
                for relay in list(self._sessions.values()):
                    self._end(relay, tell_upstream=False)
                    if relay.upstream_id is not None:
                        await self._delete_upstream(relay)
                if self._http is not None:
                    await self._http.aclose()

    def _on_change(self, namespace: str, connection_id: str | None) -> None:
        if any(s.key[0] == namespace for s in self._sessions.values()):
            self._task_group.start_soon(self._drop_if_gone, namespace, connection_id)

    async def _drop_if_gone(self, namespace: str, connection_id: str | None) -> None:
        """A deleted connection (or namespace) ends its relayed sessions and their streams."""
        try:
            if connection_id is None:
                await self._directory.namespace(namespace)
            else:
                await self._directory.connection(namespace, connection_id)
            return
        except NotFound:
            pass
        except JunctionError:
            return
        for relay in list(self._sessions.values()):
            if relay.key[0] == namespace and connection_id in (None, relay.key[1]):
                self._end(relay, tell_upstream=True)

    # exchanges
    async def initialize(
        self, request: Request, body: bytes, upstream: UpstreamSession, owner: str
    ) -> Response:
        """Relay a legacy client's `initialize`; a session when the upstream accepts it."""
        response = await self._send("POST", upstream, _forwarded(request), body)
        relay: RelaySession | None = None
        if 200 <= response.status_code < 300:
            try:
                relay = self._new(upstream.key, owner, upstream, response.headers.get(wire.SESSION_HEADER))
            except JunctionError:
                await response.aclose()
                raise
        return await self._answer(response, upstream, relay)

    async def exchange(
        self, request: Request, body: bytes, upstream: UpstreamSession, relay: RelaySession
    ) -> Response:
        """Relay one request of a session (POST, GET stream, DELETE)."""
        relay.upstream = upstream
        headers = _forwarded(request)
        if relay.upstream_id is not None:
            headers[wire.SESSION_HEADER] = relay.upstream_id
        relay.active += 1
        try:
            response = await self._send(request.method, upstream, headers, body, stream=True)
        except BaseException:
            self._done(relay)
            raise
        if request.method == "DELETE" and (response.status_code < 300 or response.status_code == 404):
            self._end(relay, tell_upstream=False)
        elif response.status_code == 404:
            self._end(
                relay, tell_upstream=False
            )  # the upstream forgot it: so do we (the client re-initializes)
        return await self._answer(response, upstream, relay, counted=True)

    async def forward(self, request: Request, body: bytes, upstream: UpstreamSession) -> Response:
        """Relay one sessionless request (2026-07-28 to a 2026-07-28 upstream)."""
        response = await self._send("POST", upstream, _forwarded(request), body)
        return await self._answer(response, upstream, None)

    def _done(self, relay: RelaySession) -> None:
        relay.active -= 1
        relay.last_used = time.monotonic()

    def _stream_hooks(
        self, relay: RelaySession | None
    ) -> tuple[Callable[[anyio.CancelScope], None], Callable[[anyio.CancelScope], None]]:
        """What a session's open stream tells it: opened (ended sessions close it), closed."""

        def opened(scope: anyio.CancelScope) -> None:
            if relay is not None:
                relay.streams.add(scope)
                if relay.ended:
                    scope.cancel()

        def closed(scope: anyio.CancelScope) -> None:
            if relay is not None:
                relay.streams.discard(scope)
                self._done(relay)

        return opened, closed

    async def _answer(
        self,
        response: httpx2.Response,
        upstream: UpstreamSession,
        relay: RelaySession | None,
        *,
        counted: bool = False,
    ) -> Response:
        """The client's response: the upstream's status, MCP headers and body, cleaned."""
        headers = {k: v for k, v in response.headers.items() if wire.relayed_response_header(k.lower())}
        if relay is not None and not relay.ended:
            headers[wire.SESSION_HEADER] = relay.id
        redactor = upstream.redactor
        limit = self._settings.max_result_bytes
        content_type = response.headers.get("content-type", "").lower()
        if response.status_code == 200 and content_type.startswith("text/event-stream"):
            if relay is not None and not counted:
                relay.active += 1
            return RelayedEvents(response, headers, redactor, limit, *self._stream_hooks(relay))
        try:
            body = await _read(response, limit)
        finally:
            await response.aclose()
            if relay is not None and counted:
                self._done(relay)
        status = response.status_code
        if relay is not None and counted and status == 400 and _about_session(body):
            # A TypeScript-SDK upstream answers 400 once it forgot a session (a restart): tell
            # the client as the transport says, with a 404, so that it initializes again.
            self._end(relay, tell_upstream=False)
            headers.pop(wire.SESSION_HEADER, None)
            status = 404
        return Response(redactor.redact_bytes(body) if redactor else body, status, headers)

    async def _send(
        self,
        method: str,
        upstream: UpstreamSession,
        headers: dict[str, str],
        body: bytes,
        *,
        stream: bool = True,
    ) -> httpx2.Response:
        """One request to the upstream with its credentials; a refusal they may fix gets new
        credentials and one retry, as on the SDK path and the fast lane."""
        config = upstream.config
        # A GET stream, or a 2026-07-28 `subscriptions/listen`, may idle for long.
        listening = method == "GET" or headers.get("mcp-method") == "subscriptions/listen"
        read = None if listening else config.call_timeout + 5
        timeout = httpx2.Timeout(config.connect_timeout, read=read)
        http = self._client()
        for attempt in (1, 2):
            credentials = upstream.credentials
            version = credentials.version
            request = http.build_request(
                method,
                config.url,
                headers={**headers, **credentials.headers()},
                content=body or None,
                timeout=timeout,
            )
            try:
                response = await http.send(request, stream=stream)
            except httpx2.TimeoutException as exc:
                raise UpstreamTimeout("the upstream did not answer in time") from exc
            except (httpx2.HTTPError, OSError) as exc:
                raise UpstreamUnavailable(f"cannot reach the upstream server ({type(exc).__name__})") from exc
            if response.status_code in (401, 403):
                challenge = Challenge.parse(response.status_code, response.headers.get("www-authenticate"))
                if challenge.refused:
                    await response.aclose()
                    if attempt == 1 and await credentials.rejected(version, challenge):
                        continue
                    problem = credentials.problem
                    if problem is not None:
                        raise problem.with_traceback(None)
                    raise UpstreamError(
                        f"the upstream refused the gateway's credentials (HTTP {response.status_code})"
                    )
            return response
        raise AssertionError("unreachable")

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            # No connection cap: each open stream holds one, and sessions are capped already.
            limits = httpx2.Limits(max_connections=None, max_keepalive_connections=64)
            self._http = httpx2.AsyncClient(
                transport=pinned_transport(
                    self._settings.allow_private_upstreams, verify=tls_context(), limits=limits
                ),
                follow_redirects=False,
                trust_env=False,
            )
        return self._http


def _about_session(body: bytes) -> bool:
    try:
        return wire.session_expired(400, wire.decode(body))
    except wire.WireError:
        return False


def _forwarded(request: Request) -> dict[str, str]:
    """The client's headers the upstream gets (the transport's; never its credentials)."""
    return {k: v for k, v in request.headers.items() if wire.relayed_request_header(k)}


async def _read(response: httpx2.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"the upstream's answer is larger than {limit} bytes")
            chunks.append(chunk)
    except httpx2.HTTPError as exc:
        raise UpstreamUnavailable(f"the upstream broke off its answer ({type(exc).__name__})") from exc
    return b"".join(chunks)
