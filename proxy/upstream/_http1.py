"""A minimal HTTP/1.1 keep-alive client for the tool-call fast lane.

Why not httpx2 or aiohttp: on a 2-core machine a POST costs about 1.5 ms of CPU with httpx2,
0.5-0.6 ms with aiohttp, and 0.1 ms on a bare asyncio stream parsed by httptools (the C parser
uvicorn uses), and the gateway pays it on every tool call. This client does only what the fast
lane needs: POST to one origin, reuse idle connections, decode `Content-Length` and chunked
bodies, stream a response body to the caller. TLS comes from the standard `ssl` module.
Everything else talks to upstreams through the SDK and httpx2.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

MAX_IDLE = 64
READ_SIZE = 65536


class ConnectionLost(ConnectionError):
    """The upstream closed the connection before a complete response."""


class RequestNotSent(ConnectionError):
    """The request never reached the upstream (connect failed), so retrying it is safe."""


class PeerRefused(ConnectionError):
    """The host now resolves to an address outside what the SSRF policy allows."""


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
        return b"".join([chunk async for chunk in self.iter_chunks()])


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.reused = False
        self.received = False  # any byte of the current response read yet
        self._chunks: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._parser: httptools.HttpResponseParser | None = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # llhttp answers this only while the message is being parsed, so ask now.
        self._keep_alive = self._parser is not None and self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    async def _feed(self) -> None:
        data = await self.reader.read(READ_SIZE)
        if not data:
            framed = "content-length" in self._headers or "transfer-encoding" in self._headers
            if self._headers_done and not framed:
                # A body delimited by the end of the connection (HTTP/1.0 style) is complete now.
                self._complete, self._keep_alive = True, False
                return
            raise ConnectionLost("the upstream closed the connection")
        self.received = True
        assert self._parser is not None
        self._parser.feed_data(data)

    async def start(self, request: bytes) -> Response:
        self._chunks, self._headers, self._headers_done, self._complete = [], {}, False, False
        self.received = False
        self._parser = httptools.HttpResponseParser(self)
        self.writer.write(request)
        while not self._headers_done:
            await self._feed()
        return Response(self._parser.get_status_code(), self._headers, self)

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunks, self._chunks = self._chunks, []
                for chunk in chunks:
                    yield chunk
            if self._complete:
                return
            await self._feed()

    @property
    def reusable(self) -> bool:
        return (
            self._complete and self._keep_alive and not self.reader.at_eof() and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class Http1Pool:
    """Keep-alive connections to one origin; `post()` is an async context manager."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
        check_peer: Callable[[str], bool] | None = None,
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
        self._check_peer = check_peer
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
                )
        except (OSError, TimeoutError) as exc:
            raise RequestNotSent(f"cannot connect to {self.host}:{self.port}") from exc
        peer = writer.get_extra_info("peername")
        if self._check_peer is not None and (not peer or not self._check_peer(str(peer[0]))):
            writer.close()
            raise PeerRefused(f"{self.host} now resolves to an address the gateway may not reach")
        return _Connection(reader, writer)

    def _encode(self, headers: dict[str, str], body: bytes) -> bytes:
        merged = {**self._base, **headers, "content-length": str(len(body))}
        lines = [f"POST {self.path} HTTP/1.1"] + [f"{k}: {v}" for k, v in merged.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    @asynccontextmanager
    async def post(self, headers: dict[str, str], body: bytes) -> AsyncIterator[Response]:
        request = self._encode(headers, body)
        conn = self._idle_connection() or await self._connect()
        try:
            try:
                response = await conn.start(request)
            except (ConnectionLost, ConnectionResetError, BrokenPipeError):
                if not conn.reused or conn.received:
                    raise
                # A kept-alive connection the upstream closed before answering a single byte: it
                # closed it while idle, so the request was not processed. Send it once more.
                conn.close()
                try:
                    conn = await self._connect()
                except RequestNotSent as exc:
                    raise ConnectionLost("the upstream closed the connection") from exc
                response = await conn.start(request)
            yield response
        except BaseException:
            conn.close()
            raise
        if conn.reusable and len(self._idle) < MAX_IDLE:
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
