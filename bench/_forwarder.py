"""The floor for `bench/floor.py`: a uvicorn app that relays a POST's bytes to one upstream.

    .venv/bin/python bench/_forwarder.py --port PORT --upstream URL

Same server stack as the gateway (uvicorn, httptools, uvloop, one write per response) and the same
upstream client (`proxy.upstream._http1`), but nothing else: no authentication, no JSON, no
session checks, no tool-name mapping. It forwards the MCP headers and the body unchanged and
answers with the upstream's body. Not a product: a measuring stick for what the server stack and
one extra hop cost on this machine.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from proxy.httpserver import GatewayHttpProtocol
from proxy.upstream._http1 import Http1Pool

FORWARDED = (
    b"accept",
    b"content-type",
    b"mcp-protocol-version",
    b"mcp-method",
    b"mcp-name",
    b"mcp-session-id",
)


def build_app(upstream: str) -> Any:
    pool: Http1Pool | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal pool
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if pool is None:
            pool = Http1Pool(upstream, {}, 5.0, allow_private=True)  # the bench upstream is on loopback
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        async with pool.post(pool.head(headers), body) as response:
            data = await response.read()
            content_type = response.headers.get("content-type", "application/json").encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    opts = parser.parse_args()
    uvicorn.run(
        build_app(opts.upstream),
        host="127.0.0.1",
        port=opts.port,
        log_level="warning",
        http=GatewayHttpProtocol,
        ws="none",
        access_log=False,
    )


if __name__ == "__main__":
    main()
