"""The forwarding fast path for `tools/call` over Streamable HTTP.

The SDK client costs more CPU per call than the rest of the gateway together (typed messages,
memory streams, a task per POST, and httpx2). A tool call is one JSON-RPC request whose result
we hand on unchanged, so once the SDK has done the handshake we POST it ourselves, in the same
upstream session (its `Mcp-Session-Id` and negotiated version), on a lean keep-alive connection
(`_http1`), and read the answer as raw JSON or server-sent events. Every protocol rule applied
here comes from `proxy.wire`; credentials come from the same `Credentials` hook as the SDK path.
Anything unusual (tools using `x-mcp-header`, the HTTP+SSE transport) stays on the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp.shared.exceptions import MCPError

from proxy import __version__, wire
from proxy.upstream._http1 import Http1Pool
from proxy.upstream._http1 import Response as HttpResponse
from proxy.upstream.credentials import Challenge, Credentials
from proxy.upstream.relay import SessionRelay

_ids = itertools.count(1)
_background: set[asyncio.Task[None]] = set()
_CLIENT_INFO = {"name": "mcp-junction", "version": __version__}

# Called with each notification the upstream relates to the call (progress, log messages).
NotificationSink = Callable[[wire.Notification], Awaitable[None]]


class UpstreamRpcError(MCPError):
    """A JSON-RPC error the upstream itself sent in answer to our request."""


class SessionExpired(Exception):
    """The upstream forgot our session: the request was not executed, so it may be sent again."""


class Unauthorized(Exception):
    """The upstream refused our credentials, and refreshing them did not help."""


class ResultTooLarge(Exception):
    """The upstream's answer is larger than the configured cap."""


def _finished(task: asyncio.Task[None]) -> None:
    _background.discard(task)


class FastLane:
    """Raw `tools/call` on an upstream session the SDK already initialized."""

    def __init__(
        self,
        http: Http1Pool,
        protocol_version: str,
        session_id: str | None,
        credentials: Credentials,
        max_result_bytes: int,
        relay: SessionRelay,
    ):
        self.http = http
        self.protocol_version = protocol_version
        self.modern = protocol_version in wire.MODERN_VERSIONS
        self.session_id = session_id
        self.credentials = credentials
        self.max_result_bytes = max_result_bytes
        self.relay = relay
        self._meta = {
            wire.META_VERSION: protocol_version,
            # Calls that can be asked things take the SDK path: a fast-lane caller declares none.
            wire.META_CAPABILITIES: {},
            wire.META_CLIENT_INFO: _CLIENT_INFO,
        }
        self._meta_logs = {**self._meta, wire.META_LOG_LEVEL: "debug"}
        self._heads_for: int | None = None
        self._build_heads()

    def _build_heads(self) -> None:
        """Request heads are built once per credentials version, not per call."""
        headers = {
            **self.credentials.headers(),
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": self.protocol_version,
        }
        if self.session_id and not self.modern:
            headers["mcp-session-id"] = self.session_id
        self._reply_head = self.http.head(headers)
        self._call_head = self.http.head({**headers, "mcp-method": "tools/call"} if self.modern else headers)
        self._notify_head = self.http.head(
            {**headers, "mcp-method": "notifications/cancelled"} if self.modern else headers
        )
        self._heads_for = self.credentials.version

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        deadline: float,
        *,
        meta: Mapping[str, Any] | None = None,
        notify: NotificationSink | None = None,
        more: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The upstream's raw result object.

        Raises `UpstreamRpcError` for the upstream's own JSON-RPC error, `SessionExpired` when it
        forgot the session, `Unauthorized`, `ResultTooLarge`, TimeoutError past `deadline`
        (event-loop time). `meta` goes into the request's `_meta` (e.g. a progressToken) and
        `notify` receives the notifications the upstream sends about this call.
        """
        request_id = f"j{next(_ids)}"
        params: dict[str, Any] = {"name": name, "arguments": arguments or {}}
        if more:  # a 2026 retry: the caller's inputResponses and the upstream's requestState
            params.update(more)
        extra = b""
        if self.modern:
            # A caller that hears about its call also hears its log messages, which a 2026
            # upstream sends only when asked (the caller's side filters them by level).
            base = self._meta if notify is None else self._meta_logs
            params["_meta"] = {**base, **meta} if meta else base
            extra = b"mcp-name: " + wire.encode_header(name).encode() + b"\r\n"
        elif meta:
            params["_meta"] = dict(meta)
        body = wire.request_body(request_id, "tools/call", params)
        exchange = wire.Exchange(request_id)
        try:
            return await self._send(body, extra, exchange, deadline, notify)
        except asyncio.CancelledError:
            # The caller went away: tell the upstream, so it stops the work (the connection
            # closing tells a 2026-07-28 upstream the same). Bounded; nobody waits for it.
            task = asyncio.get_running_loop().create_task(
                self.cancel(
                    request_id, "the caller cancelled the request", asyncio.get_running_loop().time() + 5
                )
            )
            _background.add(task)
            task.add_done_callback(_finished)
            raise

    async def _send(
        self,
        body: bytes,
        extra: bytes,
        exchange: wire.Exchange,
        deadline: float,
        notify: NotificationSink | None,
    ) -> dict[str, Any]:
        for attempt in (1, 2):
            if self._heads_for != self.credentials.version:
                self._build_heads()
            async with self.http.post(self._call_head, body, extra, deadline) as response:
                if response.status in (401, 403):
                    challenge = Challenge.parse(response.status, response.headers.get("www-authenticate"))
                    if challenge.refused:
                        rejected = self._heads_for
                        await response.read()
                        if attempt == 1 and await self.credentials.rejected(rejected or 0, challenge):
                            continue
                        raise Unauthorized(
                            f"the upstream refused the gateway's credentials (HTTP {response.status})"
                        )
                return await self._answer(response, exchange, deadline, notify)
        raise AssertionError("unreachable")

    async def cancel(self, request_id: str, reason: str, deadline: float) -> None:
        """Tell the upstream we no longer want the answer to `request_id` (2025 era; in 2026-07-28
        closing the response stream is the cancellation)."""
        if self.modern:
            return
        body = wire.notification_body("notifications/cancelled", {"requestId": request_id, "reason": reason})
        with contextlib.suppress(Exception):  # best effort: the upstream may be gone too
            async with self.http.post(self._notify_head, body, deadline=deadline, capped=False) as response:
                await response.read()

    async def _answer(
        self,
        response: HttpResponse,
        exchange: wire.Exchange,
        deadline: float,
        notify: NotificationSink | None,
    ) -> dict[str, Any]:
        content_type = response.headers.get("content-type", "").lower()
        if response.status == 200 and content_type.startswith("text/event-stream"):
            parser = wire.SSEParser()
            size = 0
            async for chunk in response.iter_chunks():
                size += len(chunk)
                if size > self.max_result_bytes:
                    raise ResultTooLarge(
                        f"the upstream's answer is larger than {self.max_result_bytes} bytes"
                    )
                for event in parser.feed(chunk):
                    result = await self._message(exchange.read_event(event), exchange, deadline, notify)
                    if result is not None:
                        return result
            for event in parser.end():
                result = await self._message(exchange.read_event(event), exchange, deadline, notify)
                if result is not None:
                    return result
            raise MCPError(wire.INTERNAL_ERROR, "the upstream closed the stream without answering")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_result_bytes:
            raise ResultTooLarge(f"the upstream's answer is larger than {self.max_result_bytes} bytes")
        raw = await response.read()
        if len(raw) > self.max_result_bytes:
            raise ResultTooLarge(f"the upstream's answer is larger than {self.max_result_bytes} bytes")
        message: wire.Message | None = None
        if content_type.startswith("application/json") and raw.strip():
            try:
                message = exchange.read(wire.decode(raw))
            except wire.WireError:
                if response.status == 200:
                    raise
        if self.session_id and not self.modern and wire.session_expired(response.status, message):
            raise SessionExpired(f"the upstream forgot our session (HTTP {response.status})")
        if isinstance(message, wire.Response):
            result = await self._message(message, exchange, deadline, notify)
            assert result is not None
            return result
        if response.status == 404:
            raise MCPError(wire.METHOD_NOT_FOUND, "Not Found")
        raise MCPError(wire.INTERNAL_ERROR, f"the upstream answered HTTP {response.status}")

    async def _message(
        self,
        message: wire.Message | None,
        exchange: wire.Exchange,
        deadline: float,
        notify: NotificationSink | None,
    ) -> dict[str, Any] | None:
        """The result when `message` is our response; relays or declines anything else."""
        if message is None:
            return None
        if isinstance(message, wire.Response):
            if message.error is not None:
                error = message.error
                if (
                    message.id is None
                    and self.session_id
                    and wire.about_session(str(error.get("message", "")))
                ):
                    raise SessionExpired("the upstream forgot our session")
                raise UpstreamRpcError(int(error["code"]), str(error["message"]), error.get("data"))
            assert message.result is not None
            return message.result
        if isinstance(message, wire.Request):
            await self._reply(message, deadline)
        elif message.method == "notifications/message" and await self.relay.tell(
            message.method, message.params
        ):
            pass  # told the caller the SDK path serves
        elif notify is not None:
            await notify(wire.Notification(message.method, self.relay.redact(message.params)))
        return None

    async def _reply(self, request: wire.Request, deadline: float) -> None:
        """Answer a server-to-client request (sampling, elicitation, roots) made during the call
        with what its caller answers, or the caller's inability to."""
        try:
            reply = wire.result_body(request.id, await self.relay.answer(request.method, request.params))
        except MCPError as exc:
            reply = wire.error_body(request.id, exc.error.code, exc.error.message, exc.error.data)
        # Outside the connection cap: the call it answers already holds a slot.
        async with self.http.post(self._reply_head, reply, deadline=deadline, capped=False) as response:
            await response.read()
