"""The MCP conformance suite's "everything server", written with the official ``mcp`` SDK.

    python -m tests.upstreams.everything --port PORT      (or PORT in the environment)

run from the repository root; it serves Streamable HTTP at ``http://127.0.0.1:PORT/mcp`` until
SIGTERM, for both protocol eras on the one endpoint (the SDK's dual-era manager): legacy clients get
stateful sessions with a GET stream, resumable SSE (an in-memory event store, priming events and a
100 ms ``retry``, so the suite's SSE polling scenario works) and server-to-client requests on the
request's stream; 2026-07-28 clients get stateless requests, ``subscriptions/listen`` and MRTR
``input_required`` results with AES-GCM sealed ``requestState``.

What it serves is the contract the suite's server scenarios call by name (the tool, resource and
prompt names below), after the reference implementation in the python-sdk repository
(``examples/servers/everything-server``) and the conformance repository's TypeScript one. It is the
upstream the gateway's conformance test puts behind a connection, and the baseline it is judged by.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from typing import Annotated, Any

import anyio
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field

IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
AUDIO = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
# A fixed key: MRTR state must survive nothing but this process, and a test fixture holds no secret.
REQUEST_STATE_KEY = b"junction-tests-everything-upstream-request-state"
RETRY_MS = 100  # what the SSE polling scenario waits between reconnections


class MemoryEventStore(EventStore):
    """Every SSE event of the process, so a client that reconnects with Last-Event-ID gets the rest."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(len(self._events) + 1)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream = next((s for s, e, _ in self._events if e == last_event_id), None)
        if stream is None:
            return None
        for s, event_id, message in self._events[int(last_event_id) :]:
            if s == stream and message is not None:  # None: a priming event, nothing to replay
                await send_callback(EventMessage(message, event_id))
        return stream


mcp = MCPServer(
    name="mcp-conformance-test-server",
    version="0.1.0",
    request_state_security=RequestStateSecurity(keys=[REQUEST_STATE_KEY]),
)
subscriptions: set[str] = set()


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def _embedded(uri: str, text: str, mime_type: str = "text/plain") -> EmbeddedResource:
    return EmbeddedResource(
        type="resource", resource=TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    )


# --- tools: content ------------------------------------------------------------------------------


@mcp.tool()
def test_simple_text() -> str:
    """Tests simple text content response"""
    return "This is a simple text response for testing."


@mcp.tool()
def test_image_content() -> list[ImageContent]:
    """Tests image content response"""
    return [ImageContent(type="image", data=IMAGE, mime_type="image/png")]


@mcp.tool()
def test_audio_content() -> list[AudioContent]:
    """Tests audio content response"""
    return [AudioContent(type="audio", data=AUDIO, mime_type="audio/wav")]


@mcp.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Tests embedded resource content response"""
    return [_embedded("test://embedded-resource", "This is an embedded resource content.")]


@mcp.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Tests response with multiple content types (text, image, resource)"""
    return [
        _text("Multiple content types test:"),
        ImageContent(type="image", data=IMAGE, mime_type="image/png"),
        _embedded("test://mixed-content-resource", '{"test": "data", "value": 123}', "application/json"),
    ]


@mcp.tool()
def test_error_handling() -> str:
    """Tests error response handling"""
    raise RuntimeError("This tool intentionally returns an error for testing")


# --- tools: notifications, server-to-client requests ---------------------------------------------


@mcp.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Tests tool that emits log messages during execution"""
    for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.log("info", message)
        await anyio.sleep(0.05)
    return "Tool with logging executed successfully"


@mcp.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs once: only to a 2026-07-28 caller that asked for logs with a logLevel"""
    await ctx.log("info", "Diagnostic trace logging activated")
    return "Logging evaluated"


@mcp.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Tests tool that reports progress notifications"""
    for step in (0, 50, 100):
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        await anyio.sleep(0.05)
    meta = ctx.request_context.meta
    return str(meta.get("progress_token", 0) if meta else 0)


@mcp.tool()
async def test_streaming_elicitation(ctx: Context) -> str:
    """Diagnostic: a notification on the response stream before the result"""
    await ctx.report_progress(progress=50, total=100)
    return "Streaming complete"


@mcp.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Tests server-initiated sampling (LLM completion request)"""
    try:
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=_text(prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,  # on this request's stream, not the GET stream
        )
    except Exception as exc:  # the scenario reads the reason from the text
        return f"Sampling not supported or error: {exc}"
    return f"LLM response: {result.content.text if result.content.type == 'text' else 'No response'}"


class UserResponse(BaseModel):
    response: str = Field(description="User's response")


class DefaultsForm(BaseModel):
    """SEP-1034: a default for every primitive type."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


def _options(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"const": value, "title": title} for value, title in pairs]


class EnumsForm(BaseModel):
    """SEP-1330: every enum schema variant."""

    untitledSingle: str = Field(
        description="Simple enum without titles",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    titledSingle: str = Field(
        description="Enum with titled options (oneOf)",
        json_schema_extra={
            "oneOf": _options(
                ("low", "Low Priority"), ("medium", "Medium Priority"), ("high", "High Priority")
            )
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titled options",
        json_schema_extra={
            "items": {
                "anyOf": _options(("feature", "New Feature"), ("bug", "Bug Fix"), ("docs", "Documentation"))
            }
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    )


async def _elicit(ctx: Context, message: str, schema: type[BaseModel], label: str) -> str:
    try:
        result = await ctx.elicit(message=message, schema=schema)
    except Exception as exc:
        return f"Elicitation not supported or error: {exc}"
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"{label}: action={result.action}, content={content}"


@mcp.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Tests server-initiated elicitation (user input request)"""
    return await _elicit(ctx, message, UserResponse, "User response")


@mcp.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Tests elicitation with default values for all primitive types (SEP-1034)"""
    return await _elicit(ctx, "Please provide user information", DefaultsForm, "Elicitation result")


@mcp.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Tests elicitation with enum schema variations per SEP-1330"""
    message = "Please select values using different enum schema types"
    return await _elicit(ctx, message, EnumsForm, "Elicitation completed")


@mcp.tool()
async def test_reconnection(ctx: Context) -> str:
    """Tests SSE polling by closing stream mid-call (SEP-1699)"""
    await ctx.log("info", "Before disconnect")
    await ctx.close_sse_stream()
    await anyio.sleep(0.2)  # the client reconnects after RETRY_MS and gets the rest from the event store
    await ctx.log("info", "After reconnect")
    return "Reconnection test completed"


# --- tools: 2026-07-28 diagnostics -----------------------------------------------------------------


@mcp.tool()
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


@mcp.tool()
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


@mcp.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Mutates the tool list and announces it to subscriptions/listen streams (SEP-2575)"""
    mcp.add_tool(_dynamic, name="test_dynamic_tool")
    mcp.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


@mcp.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Mutates the prompt list and announces it to subscriptions/listen streams (SEP-2575)"""
    mcp.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="dynamic"))
    mcp.remove_prompt("test_dynamic_prompt")
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


@mcp.tool(name="json_schema_2020_12_tool")
def json_schema_2020_12_tool() -> str:
    """Tests JSON Schema 2020-12 keyword preservation in tools/list"""
    return "json_schema_2020_12_tool"


# MCPServer derives schemas from signatures and has no public override (the reference server does this too).
mcp._tool_manager._tools["json_schema_2020_12_tool"].parameters = JSON_SCHEMA_2020_12  # noqa: SLF001


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


@mcp.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single elicitation request"""
    if ctx.input_responses and "user_name" in ctx.input_responses:
        return f"Hello, {_field(ctx.input_responses['user_name'], 'name') or 'stranger'}!"
    return InputRequiredResult(input_requests={"user_name": _ask()})


@mcp.tool()
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single sampling request"""
    if ctx.input_responses and "capital_question" in ctx.input_responses:
        answer = ctx.input_responses["capital_question"]
        ok = isinstance(answer, CreateMessageResult) and answer.content.type == "text"
        return f"Model said: {answer.content.text if ok else '?'}"  # type: ignore[union-attr]
    return InputRequiredResult(
        input_requests={"capital_question": _sample("What is the capital of France?", 100)}
    )


@mcp.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single roots/list request"""
    if ctx.input_responses and "client_roots" in ctx.input_responses:
        answer = ctx.input_responses["client_roots"]
        return f"Client exposed {len(answer.roots) if isinstance(answer, ListRootsResult) else 0} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


@mcp.tool()
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


@mcp.tool()
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


@mcp.tool()
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


@mcp.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Tests that the server rejects a tampered requestState echo (the SDK's sealing does)"""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": _ask("Please confirm", OK_SCHEMA)}, request_state="round-1"
        )
    return f"state-ok: {ctx.request_state}"


@mcp.tool()
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Tests that inputRequests only include methods the client declared support for"""
    caps = ctx.client_capabilities
    requests: dict[str, InputRequest] = {}
    if caps is None or caps.sampling is not None:
        requests["sample"] = _sample("Say hello", 50)
    if caps is None or caps.elicitation is not None:
        requests["ask"] = _ask()
    return InputRequiredResult(input_requests=requests, request_state="capability-gated")


# --- resources ------------------------------------------------------------------------------------


@mcp.resource("test://static-text")
def static_text_resource() -> str:
    """A static text resource for testing"""
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary")
def static_binary_resource() -> bytes:
    """A static binary resource (image) for testing"""
    return base64.b64decode(IMAGE)


@mcp.resource("test://template/{id}/data")
def template_resource(id: str) -> str:
    """A resource template with parameter substitution"""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.resource("test://watched-resource")
def watched_resource() -> str:
    """A resource that can be subscribed to for updates"""
    return "Watched resource content"


async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
    subscriptions.add(str(params.uri))
    return EmptyResult()


async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
    subscriptions.discard(str(params.uri))
    return EmptyResult()


async def set_logging_level(
    ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
) -> EmptyResult:
    return EmptyResult()


# MCPServer has no public hook for these yet (the reference server registers them the same way).
_lowlevel = mcp._lowlevel_server  # noqa: SLF001
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_logging_level)
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


# --- prompts and completion -----------------------------------------------------------------------


@mcp.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """A simple prompt without arguments"""
    return [UserMessage(role="user", content=_text("This is a simple prompt for testing."))]


@mcp.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with required arguments"""
    return [UserMessage(role="user", content=_text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]


@mcp.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """A prompt that includes an embedded resource"""
    return [
        UserMessage(role="user", content=_embedded(resourceUri, "Embedded resource content for testing.")),
        UserMessage(role="user", content=_text("Please process the embedded resource above.")),
    ]


@mcp.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt that includes image content"""
    return [
        UserMessage(role="user", content=ImageContent(type="image", data=IMAGE, mime_type="image/png")),
        UserMessage(role="user", content=_text("Please analyze the image above.")),
    ]


@mcp.prompt()
async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    """Tests InputRequiredResult from prompts/get (SEP-2322 non-tool request)"""
    if ctx.input_responses and "user_context" in ctx.input_responses:
        text = _field(ctx.input_responses["user_context"], "context") or "?"
        return [UserMessage(role="user", content=_text(f"Use the following context: {text}"))]
    schema = {"type": "object", "properties": {"context": {"type": "string"}}, "required": ["context"]}
    return InputRequiredResult(
        input_requests={"user_context": _ask("What context should the prompt use?", schema)}
    )


@mcp.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion:
    """No suggestions: the scenario checks the shape of the answer only."""
    return Completion(values=[], total=0, has_more=False)


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3001")))
    port = parser.parse_args().port
    # host="127.0.0.1" turns on the SDK's DNS-rebinding protection (localhost Host and Origin only).
    mcp.run(
        transport="streamable-http",
        host="127.0.0.1",
        port=port,
        event_store=MemoryEventStore(),
        retry_interval=RETRY_MS,
    )


if __name__ == "__main__":
    main()
