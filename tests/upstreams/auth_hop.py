"""A test-only authenticating hop: a streaming reverse proxy that adds the gateway's bearer key.

    JUNCTION_HOP_KEY=<key> python -m tests.upstreams.auth_hop --port PORT --target http://127.0.0.1:GW

run from the repository root; it listens on 127.0.0.1:PORT until SIGTERM. The MCP conformance suite
cannot send headers and the gateway wants ``Authorization: Bearer <key>``, so the suite talks to
this hop instead (the key comes from the environment: never on a command line).

Everything else passes as it came, both ways: method, path and query, every header (the session id,
``Last-Event-ID``, ``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name``...), the body, and the
response's status, headers and raw bytes, each chunk written as it arrives so an SSE stream is a
stream (priming events and ``retry:`` fields included). A client that hangs up is hung up on
upstream, since closing a 2026-07-28 response stream is how a client cancels.

Header values lose leading and trailing whitespace, which HTTP says is not part of them.

Host and Origin: the suite sends the hop's own authority (``127.0.0.1:PORT``) for its ordinary
requests; those become the gateway's authority, so the gateway sees what it would see had the suite
reached it directly. Any other value (the DNS-rebinding scenario's ``evil.example.com``) is
forwarded untouched, so that scenario judges the gateway's own Host/Origin checks, not the hop's.
"""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

import anyio
import httpx2
import uvicorn
from starlette.types import Message, Receive, Scope, Send

# Meaningful for one connection only (RFC 9110 §7.6.1): each side of the hop has its own.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]"})
CONNECT_TIMEOUT = 10.0  # reading has no deadline: a GET stream or a listen stream lives for minutes


class AuthHop:
    """The ASGI app: one upstream request per downstream request, streamed both ways."""

    def __init__(self, target: str, key: str, port: int) -> None:
        parts = urlsplit(target)
        self.target = f"{parts.scheme}://{parts.netloc}"
        self.target_host = parts.netloc.encode()
        self.authorization = f"Bearer {key}".encode()
        self.port = port
        self.client = httpx2.AsyncClient(timeout=httpx2.Timeout(CONNECT_TIMEOUT, read=None), trust_env=False)

    def _mine(self, authority: str) -> bool:
        """Is ``authority`` (``host:port``) this hop's own address?"""
        host, _, port = authority.rpartition(":")
        return host.lower() in LOOPBACK and port == str(self.port)

    def _request_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name in HOP_BY_HOP or name == b"authorization":
                continue
            if name == b"host" and self._mine(value.decode("latin-1")):
                value = self.target_host
            elif name == b"origin":
                origin = urlsplit(value.decode("latin-1"))
                if origin.scheme == "http" and self._mine(origin.netloc):
                    value = b"http://" + self.target_host
            # Leading and trailing whitespace is not part of a field value (RFC 9110 §5.5) and h11
            # refuses to send it; the suite sends some to see that servers ignore it.
            headers.append((name, value.strip(b" \t")))
        headers.append((b"authorization", self.authorization))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:  # MCP requests are single JSON-RPC messages: small, and read whole
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = self.target + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        request = httpx2.Request(
            scope["method"], url, headers=self._request_headers(scope), content=bytes(body)
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.HTTPError as exc:
            await _answer(send, 502, f"auth hop: {type(exc).__name__}: {exc}".encode())
            return
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_hang_up_with, receive, tg.cancel_scope)
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [(n, v) for n, v in response.headers.raw if n.lower() not in HOP_BY_HOP],
                    }
                )
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx2.HTTPError:
                    pass  # the gateway hung up mid-stream: end ours the same way
                await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()
        finally:
            await response.aclose()


async def _hang_up_with(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel the upstream side when the downstream client disconnects."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _answer(send: Send, status: int, text: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": text})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    parser.add_argument("--target", required=True, help="the gateway's base URL, http://127.0.0.1:PORT")
    args = parser.parse_args()
    key = os.environ.get("JUNCTION_HOP_KEY", "")
    if not key:
        parser.error("JUNCTION_HOP_KEY must hold the gateway key to add")
    app = AuthHop(args.target, key, args.port)
    # No Date or Server header of the hop's own: the gateway's pass through, and a second one would
    # turn each into a list.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
