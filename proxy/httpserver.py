"""uvicorn's httptools protocol, with a response's head and body sent in one write, and a bounded
request head.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body
on `http.response.body`: two `write()` system calls per response. On loopback, and for the small
JSON answers of `tools/call`, each costs as much as a tenth of the gateway's CPU per call
(bench/RESULTS.md). Here the head is held until the body follows in the same turn of the event
loop, or until the end of that turn (a streaming response whose first event is not ready yet),
so the bytes on the wire and their order are unchanged.

httptools (and uvicorn over it) buffer a request's headers without limit, so one client could make
the gateway hold gigabytes. Here the bytes read while a head is incomplete are counted, and past
`max_head_bytes` the client gets 431 and the connection closes. The count costs one addition per
read; the exact size is only computed when the count passes the limit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LINGER_SECONDS = 2.0  # how long a refused connection is drained before it is closed


class _HeadHoldingTransport:
    """Wraps a transport; holds a response head until the next write or the end of the loop turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head, self._head = self._head, None
        if head is not None:
            self._transport.write(head + data)
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n"):
            self._head = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HeadTooLarge(Exception):
    """Raised in `on_headers_complete` to stop the parser; answered with 431."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each small response in a single system call, and
    refusing request heads over `max_head_bytes`."""

    max_head_bytes: ClassVar[int] = 64 * 1024
    # Bytes read since the current request's head began (-1: reading a body, not a head). It may
    # count a little too much, never too little: the read in which a head begins is counted whole.
    _head_bytes = 0
    _last_read = 0
    _head_refused = False
    _draining = False

    @classmethod
    def with_head_limit(cls, max_head_bytes: int) -> type[GatewayHttpProtocol]:
        """This protocol with another head limit (uvicorn takes a class, not an instance)."""
        return type(cls.__name__, (cls,), {"max_head_bytes": max_head_bytes})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = _HeadHoldingTransport(transport, self.loop)
        super().connection_made(held)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, plus the head count and the 431 answer.
        if self._draining:
            return  # the rest of a refused head: read and dropped until the client closes
        self._last_read = len(data)
        if self._head_bytes >= 0:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._head_refused:
                self._refuse_head()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_bytes > self.max_head_bytes:  # still in a head, and it is already too long
            self._refuse_head()

    def on_message_begin(self) -> None:
        self._head_bytes = self._last_read
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._head_bytes > self.max_head_bytes and self._head_size() > self.max_head_bytes:
            self._head_refused = True
            raise _HeadTooLarge  # stops the parser; data_received answers
        self._head_bytes = -1
        super().on_headers_complete()

    def _head_size(self) -> int:
        # Request line and header lines as they were on the wire (give or take the method).
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse_head(self) -> None:
        self._head_bytes = -1
        if self.transport.is_closing():
            return
        limit = self.max_head_bytes
        self.logger.warning("Request head over %d bytes: answered 431 and closed the connection.", limit)
        body = json.dumps(
            {
                "error": "headers_too_large",
                "message": f"request line and headers are larger than the {limit} byte limit; send less",
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        # Lingering close: closing with unread bytes would send a reset that can reach the client
        # before it reads the 431. Stop writing, drop what still arrives, close after a grace period.
        self._draining = True
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
