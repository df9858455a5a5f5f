"""The forwarding fast path of `/mcp/{ns}` for `tools/call` and `tools/list`.

These are the hot paths of the gateway. For a well-formed request on a live legacy session (or
a well-formed 2026-07-28 request) we answer with one JSON response built from the upstream's raw
result, or from the cached, pre-serialized tool list, instead of passing the message through the
SDK's typed server loop. A call that asked for progress is answered as a server-sent event
stream as soon as the upstream reports some. A caller that disconnects, or cancels with
`notifications/cancelled`, cancels the upstream request. Everything else (initialize, GET
streams, anything unusual) goes to the SDK's session manager unchanged, which stays the
authority on sessions and errors. Every wire rule applied here comes from `proxy.wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any
from urllib.parse import parse_qs

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.types import Message, Receive, Scope, Send

from proxy import __version__, wire
from proxy._sdk import live_sessions, session_owner
from proxy.auth.policy import Principal
from proxy.directory import Directory
from proxy.gateway.budget import META_NAMES, Limits, call_meta, view
from proxy.gateway.callers import LogLevels
from proxy.gateway.catalog import Catalog
from proxy.gateway.endpoint import RPC_KEY, call_for_mcp
from proxy.gateway.mrtr import HeldCalls
from proxy.gateway.names import NameStyle
from proxy.settings import Settings
from proxy.upstream.relay import RELAYED, Forwarded, forwarded

SERVER_INFO = {"name": "mcp-junction", "version": __version__}
_MODERN_LIST_EXTRA = (
    b',"resultType":"complete","ttlMs":0,"cacheScope":"private","_meta":'
    + json.dumps({wire.META_SERVER_INFO: SERVER_INFO}, separators=(",", ":")).encode()
)
_MAX_REMEMBERED_CLIENTS = 10_000
RELAYED_CAPABILITIES = frozenset(RELAYED.values())
_MODERN = frozenset(v.encode() for v in wire.MODERN_VERSIONS)
_PARAM_PREFIX = wire.PARAM_HEADER_PREFIX.encode()
_FAST_METHODS = (b'"tools/', b'"notifications/cancelled"')


def parse_request(body: bytes) -> wire.Request | wire.Notification | None:
    """A well-formed `tools/call`, `tools/list` or `notifications/cancelled`, else None (the SDK
    answers anything else, including every malformed message)."""
    if not any(marker in body for marker in _FAST_METHODS):
        return None
    try:
        message = wire.decode(body, strict=True)
    except wire.WireError:
        return None
    if isinstance(message, wire.Notification):
        return message if message.method == "notifications/cancelled" else None
    if not isinstance(message, wire.Request):
        return None
    params = message.params
    if message.method == "tools/call":
        name, arguments = params.get("name"), params.get("arguments")
        if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, dict)):
            return None
        return message
    if message.method == "tools/list":
        return message
    return None


def _interactive(capabilities: Any) -> bool:
    """Did a client declare a capability an upstream may ask it through (sampling, ...)?"""
    return isinstance(capabilities, dict) and any(c in capabilities for c in RELAYED_CAPABILITIES)


def _progress_token(params: dict[str, Any]) -> str | int | None:
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return token if wire.is_request_id(token) else None


class ToolCallFastPath:
    """Answers `tools/call` and `tools/list` directly when the SDK would accept the request as is."""

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        catalog: Catalog,
        directory: Directory,
        settings: Settings,
        levels: LogLevels | None = None,
        held: HeldCalls | None = None,
    ):
        self._manager = manager
        self._catalog = catalog
        self._directory = directory
        self._settings = settings
        self._client_names: dict[str, str] = {}
        self.levels = levels or LogLevels()
        self.held = held  # seals a 2026 upstream's input_required for a 2026 caller
        # Legacy sessions whose client can be asked things (sampling, elicitation, roots): their
        # calls take the SDK path, which relays an upstream's requests on the call's stream.
        self._interactive: set[str] = set()
        # Calls in flight on legacy sessions, by (session id, request id), for notifications/cancelled.
        self._inflight: dict[tuple[str, Any], _Running] = {}

    def watch_initialize(self, body: bytes, send: Send) -> Send:
        """Remember the client name of a new legacy session (it picks the tool-name style)."""
        if b'"initialize"' not in body:
            return send
        try:
            message = json.loads(body)
            name = message["params"]["clientInfo"]["name"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
            return send
        if message.get("method") != "initialize" or not isinstance(name, str):
            return send
        interactive = _interactive(message["params"].get("capabilities"))
        if len(self._client_names) > _MAX_REMEMBERED_CLIENTS:
            live = live_sessions(self._manager)
            self._client_names = {k: v for k, v in self._client_names.items() if k in live}
            self._interactive &= set(live)

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", ()):
                    if key.lower() == b"mcp-session-id":
                        self._client_names[value.decode("latin-1")] = name
                        if interactive:
                            self._interactive.add(value.decode("latin-1"))
            await send(message)

        return watching

    def _eligible(self, scope: Scope, headers: dict[bytes, bytes], request: wire.Request) -> str | None:
        """'modern' or 'legacy' when the request may take the fast path, else None."""
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        accept = headers.get(b"accept", b"")
        if content_type != b"application/json" or (
            b"application/json" not in accept and b"*/*" not in accept
        ):
            return None
        version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
        if version in wire.MODERN_VERSIONS:
            method = headers.get(b"mcp-method")
            name = headers.get(b"mcp-name")
            error = wire.check_modern_request(
                request,
                version,
                method.decode("latin-1") if method is not None else None,
                name.decode("latin-1") if name is not None else None,
            )
            if error is not None:
                return None  # the SDK answers a broken envelope
            meta = request.params.get("_meta") or {}
            if _interactive(meta.get(wire.META_CAPABILITIES)) or "requestState" in request.params:
                return None  # a client that can be asked: MRTR on the SDK path
            return "modern"
        if version and version not in wire.HANDSHAKE_VERSIONS:
            return None
        session_id = self._live_session(scope, headers)
        if session_id is None or session_id in self._interactive:
            return None
        return "legacy"

    def _live_session(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        """The caller's own live legacy session id, keeping it alive, else None."""
        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1")
        transport = live_sessions(self._manager).get(session_id) if session_id else None
        if transport is None or transport.is_terminated:
            return None
        user = scope.get("user")
        owner = session_owner(self._manager, session_id)
        if not isinstance(user, AuthenticatedUser) or owner != authorization_context(user):
            return None
        idle = transport.idle_scope
        if idle is not None and idle.deadline != math.inf:
            # Keep the SDK session alive: fast-path requests are activity too. Moving a deadline
            # reschedules a timer, so move it only once it is a second behind.
            deadline = anyio.current_time() + (self._manager.session_idle_timeout or 0)
            if deadline - idle.deadline > 1.0:
                idle.deadline = deadline
        return session_id

    async def handle(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        namespace: str,
        principal: Principal,
    ) -> bool:
        """Answer the request and return True, or return False to leave it to the SDK."""
        message = parse_request(body)
        if message is None:
            return False
        headers = dict(scope["headers"])
        if isinstance(message, wire.Notification):
            return await self._cancelled(scope, headers, message, send)
        if message.method == "tools/call" and headers.get(b"mcp-protocol-version") in _MODERN:
            problem = self._param_headers(headers, message, namespace, principal, scope.get(RPC_KEY))
            if problem is not None:  # answered before any other path sees the call
                data = wire.error_body(message.id, problem.code, problem.message, problem.data)
                await self._respond(send, data, "modern", headers, status=400)
                return True
        era = self._eligible(scope, headers, message)
        if era is None:
            return False
        if message.method == "tools/list":
            if message.params.get("cursor") is not None:
                # The namespace's list is always one page: no cursor we did not hand out is valid.
                data = wire.error_body(message.id, wire.INVALID_PARAMS, "invalid cursor")
                status = wire.http_status(wire.INVALID_PARAMS) if era == "modern" else 200
            else:
                data = await self._list(scope, headers, message, era, namespace, principal)
                status = 200
            await self._respond(send, data, era, headers, status=status)
            return True
        # A meta-tool's answer depends on the caller's view; no other call pays for working it out.
        shown = None
        if message.params["name"] in META_NAMES:
            shown = await self._view(scope, headers, message, era, namespace)
        await self._call(
            headers, message, era, namespace, principal, receive, send, scope.get(RPC_KEY), shown
        )
        return True

    def _param_headers(
        self,
        headers: dict[bytes, bytes],
        message: wire.Request,
        namespace: str,
        principal: Principal,
        rpc: dict[str, Any] | None,
    ) -> wire.WireError | None:
        """`Mcp-Param-*` headers checked against the arguments, for tools that declare them
        (and any such header sent for one that does not)."""
        sent = any(key.startswith(_PARAM_PREFIX) for key in headers)
        schema = self._catalog.header_schema(namespace, message.params["name"], principal, rpc)
        if schema is None and not sent:
            return None
        text = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
        return wire.check_param_headers(schema or {}, message.params.get("arguments") or {}, text)

    async def _respond(
        self,
        send: Send,
        data: bytes,
        era: str,
        headers: dict[bytes, bytes],
        stream: bool = False,
        status: int = 200,
    ) -> None:
        response_headers = [
            (b"content-type", b"text/event-stream" if stream else b"application/json"),
        ]
        if not stream:
            response_headers.append((b"content-length", str(len(data)).encode()))
        else:
            response_headers.append((b"cache-control", b"no-cache"))
        if era == "legacy":
            response_headers.append((b"mcp-session-id", headers[b"mcp-session-id"]))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        if data or not stream:
            await send({"type": "http.response.body", "body": data, "more_body": stream})

    async def _cancelled(
        self, scope: Scope, headers: dict[bytes, bytes], message: wire.Notification, send: Send
    ) -> bool:
        """`notifications/cancelled` for a call this fast path is running: cancel it (the upstream
        hears of it). Anything else goes to the SDK."""
        request_id = message.params.get("requestId")
        session_id = self._live_session(scope, headers) if wire.is_request_id(request_id) else None
        running = self._inflight.get((session_id, request_id)) if session_id else None
        if running is None:
            return False
        running.cancel()
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return True

    async def _call(
        self,
        headers: dict[bytes, bytes],
        request: wire.Request,
        era: str,
        namespace: str,
        principal: Principal,
        receive: Receive,
        send: Send,
        rpc: dict[str, Any] | None,
        shown: tuple[NameStyle, Limits] | None = None,
    ) -> None:
        params = request.params
        token = _progress_token(params)
        streaming = False

        async def stream(chunk: bytes) -> None:
            # The answer turns into an event stream at its first event (progress or keep-alive).
            nonlocal streaming
            if not streaming:
                streaming = True
                await self._respond(send, chunk, era, headers, stream=True)
            else:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1") if era == "legacy" else None

        async def relay(note: wire.Notification) -> None:
            # Progress about this call goes to the caller who asked for it, on this response; so
            # do the upstream's log messages about it, at the level a legacy session set.
            if note.method == "notifications/message":
                if session_id is None or not self.levels.allows(session_id, str(note.params.get("level"))):
                    return
            elif token is None or note.method != "notifications/progress":
                return
            elif note.params.get("progressToken") != token:
                return
            await stream(wire.sse_event(wire.notification_body(note.method, note.params)))

        async def keep_alive() -> None:
            # A long call sends a comment every `stream_keepalive` seconds, so proxies in between
            # (which cut idle responses after 60-100 s) do not end it.
            while True:
                await stream(b": keep-alive\n\n")
                await asyncio.sleep(self._settings.stream_keepalive)

        pinger: asyncio.Future[None] | None = None

        def start_pinging() -> None:
            nonlocal pinger
            pinger = asyncio.ensure_future(keep_alive())

        loop = asyncio.get_running_loop()
        timer = (
            loop.call_later(self._settings.stream_keepalive, start_pinging)
            if b"text/event-stream" in headers.get(b"accept", b"")
            else None
        )

        task = asyncio.current_task()
        assert task is not None
        running = _Running(task)
        key = None
        if era == "legacy":
            key = (headers[b"mcp-session-id"].decode("latin-1"), request.id)
            self._inflight[key] = running
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(running.on_receive)
        meta: dict[str, Any] | None = {"progressToken": token} if token is not None else None
        status = 200
        # A 2026 caller gets a 2026 upstream's input_required (sealed), as its own round trip.
        passing = None
        if era == "modern":
            declared = (params.get("_meta") or {}).get(wire.META_CAPABILITIES)
            answers = params.get("inputResponses")  # answers a client may give up front
            passing = forwarded.set(
                Forwarded(
                    answers if isinstance(answers, dict) else None,
                    capabilities=declared if isinstance(declared, dict) else {},
                )
            )
        try:
            if shown is not None:
                raw = await call_meta(
                    self._catalog,
                    namespace,
                    principal,
                    params["name"],
                    params.get("arguments"),
                    style=shown[0],
                    limits=shown[1],
                    inner=call_for_mcp,
                    meta=meta,
                    notify=relay if token is not None or session_id else None,
                    rpc=rpc,
                )
            else:
                raw = await call_for_mcp(
                    self._catalog,
                    namespace,
                    principal,
                    params["name"],
                    params.get("arguments"),
                    meta=meta,
                    notify=relay if token is not None or session_id else None,
                    rpc=rpc,
                )
            running.done = True
            if era == "modern" and raw.get("resultType") == "input_required" and self.held is not None:
                raw = self.held.shaped(namespace, principal, f"tools/call:{params['name']}", raw)
            shaped = wire.modern_result(raw, SERVER_INFO) if era == "modern" else wire.legacy_result(raw)
            data = wire.result_body(request.id, shaped)
        except MCPError as exc:
            running.done = True
            data = wire.error_body(request.id, exc.error.code, exc.error.message, exc.error.data)
            status = wire.http_status(exc.error.code) if era == "modern" and not streaming else 200
        except asyncio.CancelledError:
            running.done = True
            for _ in range(running.cancels):
                task.uncancel()
            if task.cancelling():
                raise  # someone else's cancellation (the server shutting down): let it through
            # The caller went away or cancelled: nothing to answer (the upstream was told).
            if streaming:
                await _end_stream(send)
            elif not watcher.done():
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            return
        finally:
            if passing is not None:
                forwarded.reset(passing)
            running.done = True
            watcher.remove_done_callback(running.on_receive)
            watcher.cancel()
            if timer is not None:
                timer.cancel()
            if pinger is not None:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await pinger
            if key is not None and self._inflight.get(key) is running:
                del self._inflight[key]
        if streaming:
            await send({"type": "http.response.body", "body": wire.sse_event(data), "more_body": False})
        else:
            await self._respond(send, data, era, headers, status=status)

    async def _list(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        request: wire.Request,
        era: str,
        namespace: str,
        principal: Principal,
    ) -> bytes:
        style, limits = await self._view(scope, headers, request, era, namespace)
        tools = await self._catalog.tools_json(namespace, principal, style, scope.get(RPC_KEY), limits=limits)
        extra = _MODERN_LIST_EXTRA if era == "modern" else b""
        prefix = b'{"jsonrpc":"2.0","id":' + json.dumps(request.id).encode() + b',"result":{"tools":'
        return prefix + tools + extra + b"}}"

    async def _view(
        self, scope: Scope, headers: dict[bytes, bytes], request: wire.Request, era: str, namespace: str
    ) -> tuple[NameStyle, Limits]:
        """The caller's name style and tool limits (`budget.view`), from its client name."""
        record = await self._directory.namespace(namespace)
        if era == "modern":
            info = (request.params.get("_meta") or {}).get(wire.META_CLIENT_INFO)
            client_name = info.get("name") if isinstance(info, dict) else None
        else:
            client_name = self._client_names.get(headers[b"mcp-session-id"].decode("latin-1"))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return view(self._settings, record, query.get("tool_names", [None])[0], client_name)


class _Running:
    """A call the fast path is running, and the cancellations it asked for itself (a caller's
    disconnect, `notifications/cancelled`), so that it swallows those and no other."""

    __slots__ = ("task", "cancels", "done")

    def __init__(self, task: asyncio.Task[Any]):
        self.task = task
        self.cancels = 0
        self.done = False

    def cancel(self) -> None:
        if not self.done:
            self.cancels += 1
            self.task.cancel()

    def on_receive(self, watcher: asyncio.Future[Message]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result().get("type") == "http.disconnect":
            self.cancel()


async def _end_stream(send: Send) -> None:
    try:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # the caller is gone
