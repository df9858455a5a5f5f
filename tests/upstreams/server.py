"""Real upstream MCP servers for the gateway's tests, one kind per process.

    python -m tests.upstreams.server --kind KIND --port PORT [--list-delay SECONDS]

run from the repository root; it serves on 127.0.0.1:PORT until SIGTERM. Kinds:

- ``modern``  Streamable HTTP at ``/mcp`` through the SDK's dual-era manager (2026-07-28 and
  2025-era clients). Tools ``echo``, ``add`` (structured output), ``fail`` (``is_error``),
  ``headers`` (echoes a request header back) and ``sleep``.
- ``legacy``  the same tools at ``/mcp``, but it answers modern requests the way a 2025-era server
  does (400 "Bad Request: Missing session ID"), so auto-negotiating clients fall back to
  ``initialize`` and land on 2025-11-25.
- ``sse``     the same tools over the deprecated HTTP+SSE transport: GET ``/sse``, POST ``/messages/``.
- ``dotted``  tools with dotted names, a ``repo_search`` that collides with ``repo.search`` once
  dots become underscores, and one 100-character name.
- ``slow``    ``tools/list`` sleeps ``--list-delay`` seconds (default 0.1); tools ``echo``, ``sleep`` and
  ``cancellations`` (the ``seconds`` of every ``sleep`` cancelled so far, as JSON).
- ``paged``   25 tools ``t00``..``t24``, listed 10 per page with ``next_cursor``.
- ``config``  a server that needs configuration, Streamable HTTP at ``/mcp`` like ``modern``.
  ``GET /.well-known/mcp-config`` is its JSON Schema (draft-07): required ``apiKey`` (a string sent
  as header ``x-api-key``, ``"x-from": {"header": "x-api-key"}``) and ``region`` (``eu`` or ``us``; no
  ``x-from``, so the query parameter ``region``), optional boolean ``verbose``; ``$id`` is the URL
  it was fetched at. Tools ``whoami`` (JSON ``{"apiKey", "region", "authorization"}``: the request's
  ``x-api-key`` header, ``region`` query parameter and ``Authorization`` header, each ``null`` when
  absent) and ``echo``. It serves requests without any configuration too.

- ``process`` (for stdio) tools about the process itself: ``echo``, ``env`` (the value of the
  environment variable ``name``, or ``null``), ``pid``, ``stderr`` (writes ``text`` as a line to
  stderr) and ``exit`` (ends the process with exit code ``code``, without answering).

``--stdio`` serves the kind's tools over stdio instead of HTTP (``--port`` is then not needed),
after writing ``test-KIND stdio server pid PID`` to stderr; the gateway's stdio upstreams run it.

``--echo-auth-errors WHERE`` (Streamable HTTP kinds) makes the server fail the way careless
servers do, quoting the request's ``Authorization`` header back: ``initialize`` answers every
request with a JSON-RPC error (so no session starts), ``call`` answers ``tools/call`` with one,
``http`` answers ``tools/call`` with HTTP 500 and a text page, ``http-json`` with HTTP 500 and a
JSON-RPC error body.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
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
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

KINDS = (
    "modern",
    "legacy",
    "sse",
    "dotted",
    "slow",
    "paged",
    "config",
    "process",
    "changing",
    "changing_legacy",
    "apps",
)
ECHO_AUTH_ERRORS = ("initialize", "call", "http", "http-json")
# The protocol revisions a 2025-era server knows (all of them negotiated through `initialize`).
HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
# Letters and dots only, exactly 100 characters.
LONG_NAME = "abcdefghi." * 9 + "abcdefghij"
PAGE_SIZE = 10
NO_SECURITY = TransportSecuritySettings(enable_dns_rebinding_protection=False)

Args = dict[str, Any]
Handler = Callable[[ServerRequestContext[Any], Args], Awaitable[CallToolResult]]


def _text(text: str, *, is_error: bool = False, structured: dict[str, Any] | None = None) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured, is_error=is_error
    )


def _schema(required: bool = True, **properties: str) -> dict[str, Any]:
    """An object input schema whose properties have the given JSON types."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in properties.items()},
    }
    if required and properties:
        schema["required"] = list(properties)
    return schema


@dataclass(frozen=True)
class ToolSpec:
    tool: Tool
    handler: Handler


def _spec(
    name: str, description: str, handler: Handler, input_schema: dict[str, Any], **extra: Any
) -> ToolSpec:
    return ToolSpec(Tool(name=name, description=description, input_schema=input_schema, **extra), handler)


# --- tool handlers -------------------------------------------------------------------------------


async def _echo(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    return _text(str(args.get("text", "")))


async def _add(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    total = args.get("a", 0) + args.get("b", 0)
    return _text(str(total), structured={"sum": total})


async def _fail(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    return _text("boom", is_error=True)


async def _blob(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    size = min(int(args.get("size", 0)), 16 * 1024 * 1024)
    return _text("x" * size)


async def _headers(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    request = ctx.request
    value = request.headers.get(str(args.get("name", "")), "") if isinstance(request, Request) else ""
    return _text(value)


CANCELLED: list[float] = []  # the `seconds` of every sleep that was cancelled, in order


async def _sleep(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    seconds = float(args.get("seconds", 0))
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(seconds)
        raise
    return _text("slept")


async def _cancellations(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    return _text(json.dumps(CANCELLED))


def _prefixed(prefix: str, key: str) -> Handler:
    async def handler(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
        return _text(prefix + str(args.get(key, "")))

    return handler


def _constant(text: str) -> Handler:
    async def handler(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
        return _text(text)

    return handler


async def _config_whoami(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    request = ctx.request
    if not isinstance(request, Request):
        return _text(json.dumps({"apiKey": None, "region": None, "authorization": None}))
    seen = {
        "apiKey": request.headers.get("x-api-key"),
        "region": request.query_params.get("region"),
        "authorization": request.headers.get("authorization"),
    }
    return _text(json.dumps(seen))


async def _create_issue(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    title = str(args.get("title", ""))
    return _text(f"created:{title}", structured={"created": title})


async def _env(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    value = os.environ.get(str(args.get("name", "")))
    return _text(json.dumps(value), structured={"value": value})


async def _pid(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    return _text(str(os.getpid()), structured={"pid": os.getpid()})


async def _stderr(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    print(str(args.get("text", "")), file=sys.stderr, flush=True)
    return _text("written")


async def _exit(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
    sys.stderr.flush()
    os._exit(int(args.get("code", 0)))


# --- tool sets -----------------------------------------------------------------------------------

ECHO = _spec("echo", "Echo the text back", _echo, _schema(text="string"))
SLEEP = _spec("sleep", "Sleep for some seconds, then answer 'slept'", _sleep, _schema(seconds="number"))
CANCELLATIONS = _spec(
    "cancellations", "The seconds of every sleep cancelled so far (JSON)", _cancellations, _schema()
)
STANDARD = [
    ECHO,
    _spec(
        "add",
        "Add two numbers",
        _add,
        _schema(a="number", b="number"),
        output_schema={"type": "object", "properties": {"sum": {"type": "number"}}, "required": ["sum"]},
    ),
    _spec("fail", "Always fails with 'boom'", _fail, _schema()),
    _spec("blob", "Answer with `size` characters of text", _blob, _schema(size="number")),
    _spec(
        "headers",
        "The value of an HTTP request header as this server saw it",
        _headers,
        _schema(name="string"),
    ),
    SLEEP,
]
DOTTED = [
    _spec("repo.search", "Search repositories", _prefixed("search:", "query"), _schema(query="string")),
    _spec("repo.get", "Get a repository", _prefixed("get:", "name"), _schema(name="string")),
    _spec(
        "issues.create",
        "Create an issue",
        _create_issue,
        _schema(title="string"),
        output_schema={
            "type": "object",
            "properties": {"created": {"type": "string"}},
            "required": ["created"],
        },
    ),
    _spec("plain", "A tool without a dot", _constant("plain"), _schema()),
    _spec(
        "repo_search",
        "Collides with repo.search under a safe-name mapping",
        _prefixed("repo_search:", "query"),
        _schema(query="string"),
    ),
    _spec(LONG_NAME, "A tool with a 100-character name", _constant("long"), _schema()),
]
CONFIG = [
    _spec(
        "whoami",
        "The configuration this request carried: x-api-key header, region query parameter and"
        " Authorization header (JSON, null when absent)",
        _config_whoami,
        _schema(),
    ),
    ECHO,
]
PROCESS = [
    ECHO,
    _spec(
        "env",
        "The value of an environment variable of this process (JSON, null when unset)",
        _env,
        _schema(name="string"),
    ),
    _spec("pid", "This process's id", _pid, _schema()),
    _spec("stderr", "Write text as a line to this process's stderr", _stderr, _schema(text="string")),
    _spec("exit", "End this process with an exit code, without answering", _exit, _schema(code="number")),
]
PAGED = [_spec(f"t{i:02d}", f"Paged tool {i}", _constant(f"t{i:02d}"), _schema()) for i in range(25)]
TOOLS: dict[str, list[ToolSpec]] = {
    "modern": STANDARD,
    "legacy": STANDARD,
    "sse": STANDARD,
    "dotted": DOTTED,
    "slow": [ECHO, SLEEP, CANCELLATIONS],
    "paged": PAGED,
    "config": CONFIG,
    "process": PROCESS,
    "changing": [ECHO],  # plus `grow`, which adds a tool and announces it (see build_server)
    "changing_legacy": [ECHO],  # the same, speaking only the 2025 era
    "apps": [],  # an MCPServer with the MCP Apps extension (see _apps_app)
}
# The `config` kind's configuration: a JSON Schema (draft-07) served at /.well-known/mcp-config.
CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Config test server",
    "type": "object",
    "required": ["apiKey", "region"],
    "properties": {
        "apiKey": {
            "type": "string",
            "title": "API key",
            "description": "Your key for the config test server",
            "x-from": {"header": "x-api-key"},
        },
        "region": {
            "type": "string",
            "title": "Region",
            "description": "Where your data lives",
            "enum": ["eu", "us"],
        },
        "verbose": {"type": "boolean", "description": "More output"},
    },
}


def build_server(kind: str, list_delay: float = 0.0) -> Server[Any]:
    specs = list(TOOLS[kind])
    bus = InMemorySubscriptionBus()
    if kind.startswith("changing"):

        async def _grow(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
            """Add a tool, then tell clients in both eras: a legacy session on its stream, and
            2026-07-28 clients on their subscriptions/listen streams."""
            name = f"grown_{len(tools)}"
            tools.append(Tool(name=name, description="Added by grow", input_schema={"type": "object"}))
            handlers[name] = _constant(name)
            await ctx.session.send_tool_list_changed()
            await bus.publish(ToolsListChanged())
            return _text(name)

        async def _log(ctx: ServerRequestContext[Any], args: Args) -> CallToolResult:
            """Log about this call on its own stream, then answer."""
            text = str(args.get("text", ""))
            await ctx.session.send_log_message("warning", text, "changing", related_request_id=ctx.request_id)
            return _text(f"logged {text}")

        specs.append(_spec("grow", "Add a tool and announce the change", _grow, _schema()))
        specs.append(_spec("log", "Send a log message about this call", _log, _schema(text="string")))
    handlers = {spec.tool.name: spec.handler for spec in specs}
    tools = [spec.tool for spec in specs]
    page_size = PAGE_SIZE if kind == "paged" else len(tools)

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        if list_delay > 0:
            await anyio.sleep(list_delay)
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + page_size
        return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)

    async def call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        handler = handlers.get(params.name)
        if handler is None:
            return _text(f"unknown tool {params.name}", is_error=True)
        return await handler(ctx, dict(params.arguments or {}))

    listen = ListenHandler(bus) if kind.startswith("changing") else None
    return Server(
        f"test-{kind}",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_subscriptions_listen=listen,
    )


# --- transports ----------------------------------------------------------------------------------


class LegacyOnly:
    """Answer modern (2026-07-28+) requests the way a 2025-era Streamable HTTP server does.

    Such a server routes on the session id first: a request that isn't `initialize` and carries no
    `Mcp-Session-Id` gets 400 "Missing session ID"; with a session id, an unknown
    `MCP-Protocol-Version` gets 400 "Unsupported protocol version". Neither is a recognised modern
    error, so a dual-era client falls back to the `initialize` handshake.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            version = headers.get("mcp-protocol-version")
            if version is not None and version not in HANDSHAKE_VERSIONS:
                if "mcp-session-id" in headers:
                    supported = ", ".join(sorted(HANDSHAKE_VERSIONS))
                    message = f"Bad Request: Unsupported protocol version: {version}. Supported versions: {supported}"
                else:
                    message = "Bad Request: Missing session ID"
                body = {"jsonrpc": "2.0", "id": "server-error", "error": {"code": -32600, "message": message}}
                await JSONResponse(body, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class EchoAuthErrors:
    """Fail requests (see ``--echo-auth-errors``) with the received Authorization header in the error."""

    def __init__(self, app: ASGIApp, where: str) -> None:
        self.app = app
        self.where = where

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        method = request.get("method") if isinstance(request, dict) else None
        has_id = isinstance(request, dict) and "id" in request
        hit = has_id and (self.where == "initialize" or method == "tools/call")
        if not hit:
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        error = {
            "jsonrpc": "2.0",
            "id": request["id"] if isinstance(request, dict) else None,
            "error": {"code": -32603, "message": f"invalid credentials: {auth}", "data": {"received": auth}},
        }
        if self.where == "http":
            page = f"Internal Server Error\n\nrequest headers:\nAuthorization: {auth}\n"
            await Response(page, status_code=500, media_type="text/plain")(scope, receive, send)
        else:
            status = 500 if self.where == "http-json" else 200
            await JSONResponse(error, status_code=status)(scope, receive, send)


async def _config_schema(request: Request) -> Response:
    """The `config` kind's configuration schema; its ``$id`` is the URL it was fetched at."""
    return JSONResponse({"$id": str(request.url.replace(query=""))} | CONFIG_SCHEMA)


def _streamable_http_app(
    server: Server[Any], *, legacy_only: bool, echo_auth_errors: str | None = None, config: bool = False
) -> Starlette:
    manager = StreamableHTTPSessionManager(app=server, security_settings=NO_SECURITY)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    endpoint: ASGIApp = StreamableHTTPASGIApp(manager)
    if legacy_only:
        endpoint = LegacyOnly(endpoint)
    if echo_auth_errors:
        endpoint = EchoAuthErrors(endpoint, echo_auth_errors)
    routes = [Route("/mcp", endpoint=endpoint)]
    if config:
        routes.append(Route("/.well-known/mcp-config", _config_schema, methods=["GET"]))
    return Starlette(routes=routes, lifespan=lifespan)


def _sse_app(server: Server[Any]) -> Starlette:
    transport = SseServerTransport("/messages/", security_settings=NO_SECURITY)

    async def handle_sse(request: Request) -> Response:
        async with transport.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        return Response()  # the SSE response has already been sent; this only satisfies Starlette

    return Starlette(
        routes=[
            Route("/sse", endpoint=handle_sse, methods=["GET"]),
            Mount("/messages/", app=transport.handle_post_message),
        ]
    )


APP_HTML = "<!doctype html><title>Weather</title><script>/* calls the tool weather */</script>"


def _apps_app() -> Starlette:
    """An MCP App, as the SDK's `MCPServer` with the Apps extension builds one: a tool whose
    `_meta.ui.resourceUri` names a `ui://` HTML resource the host renders."""
    from mcp.server.apps import Apps
    from mcp.server.mcpserver import MCPServer

    apps = Apps()

    @apps.tool(resource_uri="ui://weather/app.html", name="weather", description="Weather, with a UI")
    def weather(city: str = "Paris") -> str:
        return f"sunny in {city}"

    apps.add_html_resource("ui://weather/app.html", APP_HTML)
    server = MCPServer("test-apps", extensions=[apps])
    return server.streamable_http_app(host="127.0.0.1")


def build_app(kind: str, list_delay: float | None = None, echo_auth_errors: str | None = None) -> Starlette:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "apps":
        return _apps_app()
    delay = list_delay if list_delay is not None else (0.1 if kind == "slow" else 0.0)
    server = build_server(kind, delay)
    if kind == "sse":
        return _sse_app(server)
    return _streamable_http_app(
        server,
        legacy_only=kind in ("legacy", "changing_legacy"),
        echo_auth_errors=echo_auth_errors,
        config=kind == "config",
    )


async def _serve_stdio(kind: str, list_delay: float | None) -> None:
    """The kind's tools over stdio (one client: whoever started this process)."""
    from mcp.server.stdio import stdio_server

    server = build_server(kind, list_delay or 0.0)
    print(f"test-{kind} stdio server pid {os.getpid()}", file=sys.stderr, flush=True)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstreams.server", description="Run one test upstream MCP server."
    )
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--port", type=int, help="the HTTP port (required unless --stdio)")
    parser.add_argument("--stdio", action="store_true", help="serve over stdio instead of HTTP")
    parser.add_argument(
        "--list-delay", type=float, default=None, help="seconds tools/list sleeps (slow: 0.1)"
    )
    parser.add_argument(
        "--echo-auth-errors",
        choices=ECHO_AUTH_ERRORS,
        default=None,
        help="fail requests with the received Authorization header in the error (see the module doc)",
    )
    args = parser.parse_args(argv)
    if args.stdio:
        anyio.run(_serve_stdio, args.kind, args.list_delay)
        return
    if args.port is None:
        parser.error("--port is required (unless --stdio)")
    config = uvicorn.Config(
        build_app(args.kind, args.list_delay, args.echo_auth_errors),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,  # open SSE/GET streams must not hold up a test's stop()
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
