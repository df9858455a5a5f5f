"""A dual-era SDK upstream whose tool asks its caller a question: by MRTR (`input_required`) in
2026-07-28, by a pushed `elicitation/create` in the legacy era.

    python -m tests.upstreams.mrtr_server --port PORT

Tool `reserve {title}`: asks "How many copies?" (form elicitation, field `quantity`) and answers
`Reserved <quantity> of '<title>'.` The MRTR round carries `requestState` `asked:<title>`; a
retry with any other state is refused, so a relay that changes it is caught.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)
from starlette.applications import Starlette
from starlette.routing import Route

QUESTION = ElicitRequestFormParams(
    message="How many copies?",
    requested_schema={
        "type": "object",
        "properties": {"quantity": {"type": "integer"}},
        "required": ["quantity"],
    },
)
TOOL = Tool(
    name="reserve",
    description="Reserve copies of a book (asks how many).",
    input_schema={"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
)


def _done(title: str, answer: ElicitResult) -> CallToolResult:
    quantity = (answer.content or {}).get("quantity") if answer.action == "accept" else None
    if quantity is None:
        return CallToolResult(content=[TextContent(type="text", text="Nothing reserved.")])
    return CallToolResult(content=[TextContent(type="text", text=f"Reserved {quantity} of {title!r}.")])


def build_server() -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=[TOOL])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        title = str((params.arguments or {}).get("title", ""))
        if ctx.protocol_version != "2026-07-28":  # legacy: push the question on the call's stream
            answer = await ctx.session.elicit_form(QUESTION.message, QUESTION.requested_schema)
            return _done(title, answer)
        responses = params.input_responses or {}
        if "quantity" not in responses:
            return InputRequiredResult(
                input_requests={"quantity": ElicitRequest(params=QUESTION)}, request_state=f"asked:{title}"
            )
        if params.request_state != f"asked:{title}":
            return CallToolResult(content=[TextContent(type="text", text="state was altered")], is_error=True)
        answer = responses["quantity"]
        assert isinstance(answer, ElicitResult)
        return _done(title, answer)

    return Server("mrtr-upstream", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


def build_app() -> Starlette:
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    manager = StreamableHTTPSessionManager(app=build_server(), security_settings=security)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route("/mcp", endpoint=StreamableHTTPASGIApp(manager))], lifespan=lifespan)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
