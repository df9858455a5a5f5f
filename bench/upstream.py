"""A minimal upstream MCP server for the benchmarks: one `echo` tool over Streamable HTTP.

    .venv/bin/python bench/upstream.py --port PORT [--list-delay SECONDS] [--tools N]

Serves `/mcp` on 127.0.0.1:PORT through the SDK's dual-era session manager (2026-07-28 and
2025-era clients), until SIGINT/SIGTERM. `GET /stats` counts the handler calls and the open
legacy sessions. `--list-delay` makes every `tools/list` sleep first,
so a fan-out over many connections shows whether the gateway asks them concurrently.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ECHO = Tool(
    name="echo",
    description="Echo the text back",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


def build_app(list_delay: float = 0.0, extra_tools: int = 0) -> Starlette:
    tools = [ECHO] + [
        Tool(name=f"noop{i:02d}", description="Does nothing", input_schema={"type": "object"})
        for i in range(extra_tools)
    ]

    stats = {"tools/list": 0, "tools/call": 0}

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        stats["tools/list"] += 1
        if list_delay > 0:
            await anyio.sleep(list_delay)
        return ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        stats["tools/call"] += 1
        args = params.arguments or {}
        if params.name == "echo":
            return CallToolResult(content=[TextContent(type="text", text=str(args.get("text", "")))])
        if params.name.startswith("noop"):
            return CallToolResult(content=[])
        return CallToolResult(
            content=[TextContent(type="text", text=f"unknown tool {params.name}")], is_error=True
        )

    server = Server("bench-echo", version="0.1.0", on_list_tools=list_tools, on_call_tool=call_tool)
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    async def get_stats(request: Request) -> JSONResponse:
        # How often each handler ran, and how many legacy sessions are open (modern ones are stateless).
        return JSONResponse({**stats, "legacy_sessions": len(manager._server_instances)})  # noqa: SLF001

    return Starlette(
        routes=[Route("/mcp", endpoint=StreamableHTTPASGIApp(manager)), Route("/stats", get_stats)],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--list-delay", type=float, default=0.0, help="seconds tools/list sleeps")
    parser.add_argument("--tools", type=int, default=0, help="extra no-op tools besides echo")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.list_delay, args.tools),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
