"""uvicorn's httptools protocol, with a response's head and body sent in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body
on `http.response.body`: two `write()` system calls per response. On loopback, and for the small
JSON answers of `tools/call`, each costs as much as a tenth of the gateway's CPU per call
(bench/RESULTS.md). Here the head is held until the body follows in the same turn of the event
loop, or until the end of that turn (a streaming response whose first event is not ready yet),
so the bytes on the wire and their order are unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each small response in a single system call."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = _HeadHoldingTransport(transport, self.loop)
        super().connection_made(held)  # type: ignore[arg-type]
