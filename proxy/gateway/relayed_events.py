"""An upstream's event stream handed to a client event by event, as it arrives (the relay's
response). Each event is cleaned of credentials whole (`wire.SSEBlocks`); its bytes are otherwise
unchanged, so ids, `retry` and keep-alive comments reach the client as the upstream sent them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio
import httpx2
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from proxy import wire
from proxy.redact import Redactor

log = logging.getLogger("junction.relay")


class RelayedEvents(StreamingResponse):
    """Ends when the upstream ends the stream, the client leaves, or the stream's cancel scope is
    cancelled (its session ended): `opened(scope)` is told of that scope, `closed(scope)` of the end."""

    def __init__(
        self,
        source: httpx2.Response,
        headers: Mapping[str, str],
        redactor: Redactor,
        limit: int,
        opened: Callable[[anyio.CancelScope], None],
        closed: Callable[[anyio.CancelScope], None],
    ):
        super().__init__(iter(()), source.status_code, dict(headers))
        self._source = source
        self._redactor = redactor
        self._limit = limit
        self._opened = opened
        self._closed = closed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = anyio.CancelScope()
        self._opened(stream)
        try:
            with stream:
                start = {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
                await send(start)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                    await self._pump(send)
                    tg.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await self._source.aclose()
            self._closed(stream)

    async def _pump(self, send: Send) -> None:
        blocks = wire.SSEBlocks(self._limit)
        redact = self._redactor.redact_bytes if self._redactor else None
        try:
            async for chunk in self._source.aiter_bytes():
                for block in blocks.feed(chunk):
                    body = redact(block) if redact else block
                    await send({"type": "http.response.body", "body": body, "more_body": True})
        except (httpx2.HTTPError, wire.WireError) as exc:
            # The client sees the stream end, and may resume it with Last-Event-ID.
            log.info("a relayed stream from an upstream ended: %s", type(exc).__name__)


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
