"""The 2026-07-28 half of the conformance everything server (`tests/upstreams/everything.py`).

Diagnostic tools the suite's stateless, header and list-change scenarios call, and the MRTR
(SEP-2322) tools and prompt that answer ``input_required`` until the retry carries the inputs asked
for. `register` adds them to the server; they are plain functions so the two modules share one
`MCPServer` without importing each other in a circle.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequest,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    TextContent,
)
from pydantic import Field


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


# --- tools: 2026-07-28 diagnostics -----------------------------------------------------------------


def test_x_mcp_header(
    region: Annotated[
        str,
        Field(
            description="Mirrored into the Mcp-Param-Region header",
            json_schema_extra={"x-mcp-header": "Region"},
        ),
    ] = "<none>",
) -> str:
    """Tests SEP-2243 Mcp-Param-* server-side validation."""
    return f"region={region}"


async def test_missing_capability(ctx: Context) -> str:
    """Needs the client's sampling capability, refused at the protocol level (-32021) without it"""
    capabilities = ctx.session.client_capabilities
    if capabilities is None or capabilities.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "Client declared sampling capability; proceeding."


def _dynamic() -> str:
    """Registered and removed again by the trigger tools."""
    return "dynamic"


async def test_trigger_tool_change(ctx: Context) -> str:
    """Mutates the tool list and announces it to subscriptions/listen streams (SEP-2575)"""
    ctx.mcp_server.add_tool(_dynamic, name="test_dynamic_tool")
    ctx.mcp_server.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


async def test_trigger_prompt_change(ctx: Context) -> str:
    """Mutates the prompt list and announces it to subscriptions/listen streams (SEP-2575)"""
    ctx.mcp_server.add_prompt(
        Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="dynamic")
    )
    ctx.mcp_server.remove_prompt("test_dynamic_prompt")
    await ctx.notify_prompts_changed()
    return "prompt list changed"


JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def json_schema_2020_12_tool() -> str:
    """Tests JSON Schema 2020-12 keyword preservation in tools/list"""
    return "json_schema_2020_12_tool"


# --- tools: MRTR (SEP-2322) ------------------------------------------------------------------------

NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def _ask(message: str = "What is your name?", schema: dict[str, Any] = NAME_SCHEMA) -> ElicitRequest:
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int) -> CreateMessageRequest:
    messages = [SamplingMessage(role="user", content=_text(text))]
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=messages, max_tokens=max_tokens))


def _field(answer: Any, key: str) -> Any:
    return answer.content.get(key) if isinstance(answer, ElicitResult) and answer.content else None


async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single elicitation request"""
    if ctx.input_responses and "user_name" in ctx.input_responses:
        return f"Hello, {_field(ctx.input_responses['user_name'], 'name') or 'stranger'}!"
    return InputRequiredResult(input_requests={"user_name": _ask()})


async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single sampling request"""
    if ctx.input_responses and "capital_question" in ctx.input_responses:
        answer = ctx.input_responses["capital_question"]
        ok = isinstance(answer, CreateMessageResult) and answer.content.type == "text"
        return f"Model said: {answer.content.text if ok else '?'}"  # type: ignore[union-attr]
    return InputRequiredResult(
        input_requests={"capital_question": _sample("What is the capital of France?", 100)}
    )


async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single roots/list request"""
    if ctx.input_responses and "client_roots" in ctx.input_responses:
        answer = ctx.input_responses["client_roots"]
        return f"Client exposed {len(answer.roots) if isinstance(answer, ListRootsResult) else 0} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Tests requestState round-tripping in the InputRequiredResult flow"""
    if (
        ctx.input_responses
        and "confirm" in ctx.input_responses
        and ctx.request_state == "request-state-nonce"
    ):
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": _ask("Please confirm", OK_SCHEMA)}, request_state="request-state-nonce"
    )


async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult carrying elicitation, sampling and roots requests together"""
    if ctx.input_responses and {"user_name", "greeting", "client_roots"} <= ctx.input_responses.keys():
        return "All inputs received."
    requests: dict[str, InputRequest] = {
        "user_name": _ask(),
        "greeting": _sample("Generate a greeting", 50),
        "client_roots": ListRootsRequest(),
    }
    return InputRequiredResult(input_requests=requests, request_state="multiple-inputs")


async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Tests a three-round InputRequiredResult flow with evolving requestState"""
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    responses = ctx.input_responses or {}
    if state["round"] == 1 and "step1" in responses:
        color = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
        return InputRequiredResult(
            input_requests={"step2": _ask("Step 2: What is your favorite color?", color)},
            request_state=json.dumps({"round": 2, "name": _field(responses["step1"], "name")}),
        )
    if state["round"] == 2 and "step2" in responses:
        return f"{state.get('name')} likes {_field(responses['step2'], 'color')}."
    # The first round, or a missing or out-of-order answer: ask from the start.
    return InputRequiredResult(
        input_requests={"step1": _ask("Step 1: What is your name?")}, request_state=json.dumps({"round": 1})
    )


async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Tests that the server rejects a tampered requestState echo (the SDK's sealing does)"""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": _ask("Please confirm", OK_SCHEMA)}, request_state="round-1"
        )
    return f"state-ok: {ctx.request_state}"


async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Tests that inputRequests only include methods the client declared support for"""
    caps = ctx.client_capabilities
    requests: dict[str, InputRequest] = {}
    if caps is None or caps.sampling is not None:
        requests["sample"] = _sample("Say hello", 50)
    if caps is None or caps.elicitation is not None:
        requests["ask"] = _ask()
    return InputRequiredResult(input_requests=requests, request_state="capability-gated")


async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    """Tests InputRequiredResult from prompts/get (SEP-2322 non-tool request)"""
    if ctx.input_responses and "user_context" in ctx.input_responses:
        text = _field(ctx.input_responses["user_context"], "context") or "?"
        return [UserMessage(role="user", content=_text(f"Use the following context: {text}"))]
    schema = {"type": "object", "properties": {"context": {"type": "string"}}, "required": ["context"]}
    return InputRequiredResult(
        input_requests={"user_context": _ask("What context should the prompt use?", schema)}
    )


# --- registration ---------------------------------------------------------------------------------

TOOLS = (
    test_x_mcp_header,
    test_missing_capability,
    test_trigger_tool_change,
    test_trigger_prompt_change,
    test_input_required_result_elicitation,
    test_input_required_result_sampling,
    test_input_required_result_list_roots,
    test_input_required_result_request_state,
    test_input_required_result_multiple_inputs,
    test_input_required_result_multi_round,
    test_input_required_result_tampered_state,
    test_input_required_result_capabilities,
)


def register(mcp: MCPServer) -> None:
    """Add the 2026-07-28 diagnostics and the MRTR tools and prompt to ``mcp``."""
    for tool in TOOLS:
        mcp.tool()(tool)
    mcp.tool(name="json_schema_2020_12_tool")(json_schema_2020_12_tool)
    # MCPServer derives a schema from the signature and has no public override (the reference
    # server does this too).
    mcp._tool_manager._tools["json_schema_2020_12_tool"].parameters = JSON_SCHEMA_2020_12  # noqa: SLF001
    mcp.prompt()(test_input_required_result_prompt)
