"""An upstream built with the third-party `fastmcp` framework, as many real MCP servers are.

    python -m tests.upstreams.fastmcp_server --port PORT [--transport http|sse]

run from the repository root; it serves on 127.0.0.1:PORT until SIGTERM: Streamable HTTP at ``/mcp``
(the default) or the deprecated HTTP+SSE transport at ``/sse``. Tools:

- ``add(a, b)``         the sum, as text and as structured content ``{"result": a + b}``
- ``echo(text)``        the text back
- ``count(steps)``      reports progress ``1..steps`` of ``steps`` through ``ctx.report_progress``,
                        then answers ``counted <steps>``
- ``sleep(seconds)``    sleeps, then answers ``slept``: a call to cancel or to time out; when
                        cancelled it writes ``sleep(<seconds>) cancelled`` to stderr
- ``math.multiply(a, b)`` and ``files/read(path)``: names with a dot and a slash, which FastMCP
  accepts (with a warning) and which the gateway has to map to LLM-safe names
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio
from fastmcp import Context, FastMCP

TRANSPORTS = ("http", "sse")


def build() -> FastMCP:
    """The server and its tools."""
    server = FastMCP("fastmcp-upstream", version="1.0.0")

    @server.tool
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @server.tool
    def echo(text: str) -> str:
        """Answer with the text it was given."""
        return text

    @server.tool
    async def count(steps: int, ctx: Context) -> str:
        """Count to ``steps``, reporting progress at each step."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await anyio.sleep(0.01)
        return f"counted {steps}"

    @server.tool
    async def sleep(seconds: float) -> str:
        """Sleep ``seconds`` seconds."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            # Tests read this line from the log to see that a cancellation reached the server.
            print(f"sleep({seconds:g}) cancelled", file=sys.stderr, flush=True)
            raise
        return "slept"

    @server.tool(name="math.multiply")
    def multiply(a: float, b: float) -> float:
        """Multiply two numbers (a dotted tool name)."""
        return a * b

    @server.tool(name="files/read")
    def read(path: str) -> str:
        """Pretend to read a file (a slashed tool name)."""
        return f"contents of {path}"

    return server


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A FastMCP upstream for the gateway's tests.")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--transport", choices=TRANSPORTS, default="http")
    args = parser.parse_args(argv)
    logging.getLogger("mcp.shared.tool_name_validation").setLevel(logging.ERROR)
    build().run(
        transport=args.transport,
        host="127.0.0.1",
        port=args.port,
        show_banner=False,
        log_level="warning",
        # On SIGTERM, uvicorn waits for open streams (a client's SSE stream never ends) before it
        # exits; a test that restarts the server wants it gone at once, as after a crash or deploy.
        uvicorn_config={"timeout_graceful_shutdown": 0.2},
    )


if __name__ == "__main__":
    main()
