"""A minimal HTTP/1.1 keep-alive client for the tool-call fast lane.

Why not httpx2 or aiohttp: on a 2-core machine a POST costs about 1.5 ms of CPU with httpx2,
0.5-0.6 ms with aiohttp, and 0.1 ms on a bare asyncio protocol parsed by httptools (the C parser
uvicorn uses), and the gateway pays it on every tool call. This client does only what the fast
lane needs: POST to one origin, reuse idle connections, decode `Content-Length` and chunked
bodies, stream a response body to the caller. TLS comes from the standard `ssl` module.
Everything else talks to upstreams through the SDK and httpx2.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

from proxy.upstream._pinned import open_checked_connection

MAX_IDLE = 64
# A kept-alive connection found closed within this many seconds of writing a request on it was
# closed while idle (the upstream's keep-alive timeout, a restart): the request is sent again.
RESEND_WINDOW = 0.05
HIGH_WATER = 1024 * 1024  # stop reading while this much body waits for the caller


class ConnectionLost(ConnectionError):
    """The upstream closed the connection before a complete response."""


class RequestNotSent(ConnectionError):
    """The request never reached the upstream (connect failed), so retrying it is safe."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    _conn: _Connection = field(repr=False)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (already de-chunked)."""
        async for chunk in self._conn.body():
            yield chunk

    async def read(self) -> bytes:
        conn = self._conn
        if conn._complete:  # noqa: SLF001 - the usual case: the whole body came with the head
            chunks, conn._chunks = conn._chunks, []  # noqa: SLF001
            return b"".join(chunks)
        return b"".join([chunk async for chunk in self.iter_chunks()])


class _Connection(asyncio.Protocol):
    """One keep-alive connection; bytes go from the transport straight into the parser."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.received = False  # any byte of the current response arrived yet
        self.sent_at = 0.0
        self.lost_at = math.inf
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._headers: dict[str, str] = {}
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._parser: httptools.HttpResponseParser | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._lost: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._complete:
            # Bytes outside a response we asked for: this connection cannot be trusted any more.
            self._error = ConnectionLost("the upstream sent bytes outside a response")
            self.close()
        else:
            self.received = True
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self._error = exc
            if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.lost_at = min(self.lost_at, asyncio.get_running_loop().time())
        self._eof = True
        self._wake()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_at = min(self.lost_at, asyncio.get_running_loop().time())
        self._eof = True
        self._lost = exc
        self._wake()

    def _expire(self) -> None:
        self._timer = None
        self._error = TimeoutError("the upstream did not answer in time")
        self.close()  # a half-read response leaves the connection unusable
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # llhttp answers this only while the message is being parsed, so ask now.
        self._keep_alive = self._parser is not None and self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        self._complete = True

    async def _more(self) -> None:
        """Wait for more of the response; raise if the connection broke first."""
        if self._error is not None:
            raise self._error
        if self._eof:
            framed = "content-length" in self._headers or "transfer-encoding" in self._headers
            if self._headers_done and not framed:
                # A body delimited by the end of the connection (HTTP/1.0 style) is complete now.
                self._complete, self._keep_alive = True, False
                return
            raise ConnectionLost("the upstream closed the connection") from self._lost
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def start(self, request: bytes, deadline: float | None) -> Response:
        """Send `request`; its response once the head arrived. Past `deadline` (event-loop time)
        every wait of this exchange raises TimeoutError."""
        self._chunks, self._buffered, self._headers = [], 0, {}
        self._headers_done = self._complete = self.received = False
        self._parser = httptools.HttpResponseParser(self)
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)
        assert self.transport is not None
        self.sent_at = asyncio.get_running_loop().time()
        self.transport.write(request)
        while not self._headers_done:
            await self._more()
        return Response(self._parser.get_status_code(), self._headers, self)

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunks, self._chunks, self._buffered = self._chunks, [], 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                for chunk in chunks:
                    yield chunk
            if self._complete:
                return
            await self._more()

    @property
    def reusable(self) -> bool:
        return (
            self._complete
            and self._keep_alive
            and not self._eof
            and self._error is None
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def done(self) -> None:
        """The exchange is over: its deadline no longer applies."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.done()
        if self.transport is not None:
            self.transport.close()


class _Exchange:
    """One request and its response; the connection goes back to the pool when the body was read."""

    __slots__ = ("_pool", "_request", "_deadline", "_conn", "_slot", "_capped")

    def __init__(self, pool: Http1Pool, request: bytes, deadline: float | None, capped: bool = True):
        self._pool = pool
        self._request = request
        self._deadline = deadline
        self._conn: _Connection | None = None
        self._slot = False
        self._capped = capped

    async def __aenter__(self) -> Response:
        pool = self._pool
        if not self._capped:
            self._conn, response = await pool._send(self._request, self._deadline)  # noqa: SLF001
            return response
        slots = pool._slots  # noqa: SLF001
        if slots.locked():
            loop = asyncio.get_running_loop()
            wait = None if self._deadline is None else max(0.0, self._deadline - loop.time())
            async with asyncio.timeout(wait):
                await slots.acquire()
        else:
            await slots.acquire()  # free: returns without suspending
        self._slot = True
        try:
            self._conn, response = await pool._send(self._request, self._deadline)  # noqa: SLF001
        except BaseException:
            self._slot = False
            slots.release()
            raise
        return response

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._conn is not None
        try:
            if exc_type is None:
                self._pool._release(self._conn)  # noqa: SLF001
            else:
                self._conn.close()
        finally:
            if self._slot:
                self._slot = False
                self._pool._slots.release()  # noqa: SLF001


class Http1Pool:
    """Keep-alive connections to one origin; `post()` is an async context manager."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
        allow_private: bool = False,
        max_connections: int = 100,
    ):
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        if ":" in self.host and not self.host.startswith("["):
            host_header = f"[{self.host}]" + (f":{parts.port}" if parts.port else "")
        self._base = {"host": host_header, **{k.lower(): v for k, v in headers.items()}}
        self.connect_timeout = connect_timeout
        self.allow_private = allow_private
        self._idle: list[_Connection] = []
        # At most this many exchanges (so connections) at once, as the SDK path's httpx2 limits.
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def _connect(self, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout
        if deadline is not None and deadline - loop.time() < timeout:
            timeout = max(0.0, deadline - loop.time())
        try:
            async with asyncio.timeout(timeout):
                # Connect to an address the SSRF policy checked, never to a fresh lookup of the name.
                _transport, conn = await open_checked_connection(
                    _Connection, self.host, self.port, allow_private=self.allow_private, tls=self.tls
                )
        except (OSError, TimeoutError) as exc:
            raise RequestNotSent(f"cannot connect to {self.host}:{self.port}") from exc
        return conn

    def head(self, headers: dict[str, str]) -> bytes:
        """The request line and header block (no `content-length`) of a POST with `headers`; build
        it once and pass it to `post()` for every request."""
        merged = {**self._base, **{k.lower(): v for k, v in headers.items()}}
        merged.pop("content-length", None)
        lines = [f"POST {self.path} HTTP/1.1"] + [f"{k}: {v}" for k, v in merged.items()]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def post(
        self,
        head: bytes,
        body: bytes,
        extra: bytes = b"",
        deadline: float | None = None,
        *,
        capped: bool = True,
    ) -> _Exchange:
        """`async with pool.post(head, body) as response:` one request on a pooled connection.

        `head` comes from `head()`; `extra` is more header lines, each ending in CRLF. Past
        `deadline` (event-loop time), connecting or reading raises TimeoutError. `capped=False`
        skips the connection cap: for the short side requests of a call that holds a slot."""
        length = b"content-length: %d\r\n\r\n" % len(body)
        return _Exchange(self, b"".join((head, extra, length, body)), deadline, capped)

    async def _send(self, request: bytes, deadline: float | None) -> tuple[_Connection, Response]:
        conn = self._idle_connection() or await self._connect(deadline)
        try:
            return conn, await conn.start(request, deadline)
        except (ConnectionLost, ConnectionResetError, BrokenPipeError):
            conn.close()
            # Only a connection the upstream had already closed while it sat idle (the close
            # crossing our request) proves the request was not processed. A close that comes
            # later may be a crash in the middle of the call: never run a call twice.
            lost_late = conn.lost_at - conn.sent_at > RESEND_WINDOW
            if not conn.reused or conn.received or lost_late:
                raise
        except BaseException:
            conn.close()
            raise
        # A kept-alive connection the upstream closed before answering a single byte: it closed
        # it while idle, so the request was not processed. Send it once more.
        try:
            conn = await self._connect(deadline)
        except RequestNotSent as exc:
            raise ConnectionLost("the upstream closed the connection") from exc
        try:
            return conn, await conn.start(request, deadline)
        except BaseException:
            conn.close()
            raise

    def _release(self, conn: _Connection) -> None:
        conn.done()
        if conn.reusable and len(self._idle) < MAX_IDLE and not self._closed:
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        return None

    def close(self) -> None:
        """Close idle connections now, and every busy one as its exchange ends."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
