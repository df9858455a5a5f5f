"""The MCP wire rules we apply by hand, in one place and without I/O (h11 is the model).

The SDK speaks MCP for everything unusual; the hot paths (the namespace fast path, the upstream
fast lane, the per-connection passthrough) speak it themselves to save CPU. They all go through
this module, so a rule is written once and tested byte by byte here:

- server-sent events, parsed incrementally as the WHATWG spec says (any chunk boundary, CR/LF/CRLF,
  comments, `id`/`event`/`retry`, multi-line and empty `data`);
- JSON-RPC 2.0 messages as MCP restricts them (ids are strings or integers, never null, booleans,
  floats or objects; `params` is an object; one message per body, no batches);
- the reading of one upstream exchange: related notifications, server-to-client requests, and the
  one response whose id is ours (another id is an error), whether the answer came as JSON or SSE;
- how an upstream says it forgot our session (404, or 400 with a JSON-RPC error about the session);
- our header encoding (`=?base64?...?=`) and the 2026-07-28 request envelope checks;
- result and error bodies for each protocol era.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp.shared.inbound import validate_mcp_param_headers

from proxy import wirejson

JSONRPC = "2.0"
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022

MODERN_VERSIONS = ("2026-07-28",)
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
# Result fields that exist only in 2026-07-28; a 2025-era client must never see them.
MODERN_ONLY_RESULT_FIELDS = ("resultType", "ttlMs", "cacheScope")
# Requests whose target is named in the `Mcp-Name` header in 2026-07-28.
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class WireError(Exception):
    """A message that breaks the protocol, with the JSON-RPC code to answer it with."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


# --- server-sent events ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. `id` is the stream's last event id when it was dispatched."""

    data: str
    event: str = "message"
    id: str | None = None


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Incremental `text/event-stream` parser: feed bytes as they arrive, get whole events.

    Lines are split on bytes, and CR, LF never occur inside a UTF-8 sequence, so a chunk boundary
    anywhere (even inside a character) is safe. An event whose `data` is empty is still an event
    (the TypeScript SDK sends one first to prime resumability); an event with no `data` field at
    all is not. An unterminated event at the end of the stream is dropped, as the spec says.
    """

    __slots__ = ("_buffer", "_data", "_event", "_started", "last_event_id", "retry")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] | None = None
        self._event = ""
        self._started = False
        self.last_event_id: str | None = None
        self.retry: int | None = None  # reconnection time in ms, when the server set one

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk`."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if not self._started and buffer:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._buffer = buffer  # maybe the start of a byte order mark
                return []
            self._started = True
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
        held = b""
        if buffer.endswith(b"\r"):  # maybe the first half of CRLF: decide with the next chunk
            buffer, held = buffer[:-1], b"\r"
        lines = _LINE_END.split(buffer)
        self._buffer = lines.pop() + held
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def end(self) -> list[SSEEvent]:
        """The stream ended: a final lone CR still ends a line; an unterminated event is dropped."""
        events = self.feed(b"\n") if self._buffer.endswith(b"\r") else []
        self._buffer, self._data, self._event = b"", None, ""
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None  # a comment (keep-alive)
        line = raw.decode("utf-8", errors="replace")
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = None, ""
        if data is None:
            return None
        return SSEEvent(data="\n".join(data), event=event or "message", id=self.last_event_id)


def sse_event(data: bytes, event_id: str | None = None) -> bytes:
    """One `message` event carrying `data` (a JSON document: it has no raw line breaks)."""
    head = b"event: message\n"
    if event_id is not None:
        head += b"id: " + event_id.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


class SSEBlocks:
    """Splits a `text/event-stream` into its raw event blocks as bytes arrive, for a relay that
    hands each event on unchanged (ids, `retry`, comments and line endings included) but must see
    it whole first (to clean it of credentials).

    A block ends with the empty line that dispatches it. Bytes are never altered or reordered, so
    the concatenation of the blocks (and `end()`) is the stream; a final CR is held back until the
    next chunk says whether it is half of a CRLF. A block longer than `max_block` bytes raises
    WireError (an unbounded event would make the relay hold it all).
    """

    __slots__ = ("_buffer", "_line_start", "max_block")

    def __init__(self, max_block: int):
        self._buffer = b""
        self._line_start = 0  # where the current (unterminated) line begins in the buffer
        self.max_block = max_block

    def feed(self, chunk: bytes) -> list[bytes]:
        """The blocks completed by `chunk`."""
        buffer = self._buffer + chunk if self._buffer else chunk
        end = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
        blocks: list[bytes] = []
        cut, line_start = 0, self._line_start
        for match in _LINE_END.finditer(buffer, line_start, end):
            if match.start() == line_start:  # an empty line: the event before it is complete
                blocks.append(buffer[cut : match.end()])
                cut = match.end()
            line_start = match.end()
        self._buffer = buffer[cut:]
        self._line_start = line_start - cut
        if len(self._buffer) > self.max_block:
            raise WireError(INTERNAL_ERROR, f"an event of the stream is larger than {self.max_block} bytes")
        return blocks

    def end(self) -> bytes:
        """The stream ended: what is left (an unterminated event, which a reader drops)."""
        rest, self._buffer, self._line_start = self._buffer, b"", 0
        return rest


# --- JSON-RPC messages -------------------------------------------------------------------------
RequestId = str | int


def is_request_id(value: Any) -> bool:
    """MCP ids are strings or integers: never null, booleans, floats, arrays or objects."""
    kind = type(value)
    return kind is str or kind is int


@dataclass(slots=True)
class Request:
    id: RequestId
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Notification:
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Response:
    id: RequestId | None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


Message = Request | Notification | Response


def decode(body: bytes | str, *, strict: bool = False) -> Message:
    """One JSON-RPC message from a body; WireError -32700 (not JSON) or -32600 (not a message).

    `strict` (for what clients send us) also refuses NaN, Infinity and lone surrogate escapes."""
    try:
        data = body.encode() if isinstance(body, str) else body
        value = wirejson.loads_strict(data) if strict else wirejson.loads(data)
    except (ValueError, RecursionError) as exc:
        raise WireError(PARSE_ERROR, "the body is not valid JSON") from exc
    return message(value)


def message(value: Any) -> Message:
    """Classify a decoded JSON value as a request, notification or response, or raise WireError."""
    if isinstance(value, list):
        raise WireError(INVALID_REQUEST, "JSON-RPC batches are not supported; send one message")
    if not isinstance(value, dict) or value.get("jsonrpc") != JSONRPC:
        raise WireError(INVALID_REQUEST, 'a message must be a JSON object with "jsonrpc": "2.0"')
    method = value.get("method")
    if method is not None:
        if not isinstance(method, str) or not method:
            raise WireError(INVALID_REQUEST, "method must be a non-empty string")
        params = value.get("params")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise WireError(INVALID_PARAMS, "params must be an object")
        if "id" not in value:
            return Notification(method, params)
        request_id = value["id"]
        if not is_request_id(request_id):
            raise WireError(INVALID_REQUEST, "id must be a string or an integer")
        return Request(request_id, method, params)
    has_result, has_error = "result" in value, "error" in value
    if has_result == has_error:
        raise WireError(INVALID_REQUEST, "a response has exactly one of result and error")
    response_id = value.get("id")
    if response_id is not None and not is_request_id(response_id):
        raise WireError(INVALID_REQUEST, "id must be a string or an integer")
    if has_result:
        result = value["result"]
        if not isinstance(result, dict):
            raise WireError(INVALID_REQUEST, "result must be an object")
        return Response(response_id, result=result)
    error = value["error"]
    if (
        not isinstance(error, dict)
        or type(error.get("code")) is not int
        or not isinstance(error.get("message"), str)
    ):
        raise WireError(INVALID_REQUEST, "error must be an object with an integer code and a string message")
    return Response(response_id, error=error)


def error_object(code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return error


def result_body(request_id: RequestId | None, result: Mapping[str, Any]) -> bytes:
    return wirejson.dumps({"jsonrpc": JSONRPC, "id": request_id, "result": result})


def error_body(request_id: RequestId | None, code: int, message: str, data: Any = None) -> bytes:
    return wirejson.dumps({"jsonrpc": JSONRPC, "id": request_id, "error": error_object(code, message, data)})


def request_body(request_id: RequestId, method: str, params: Mapping[str, Any]) -> bytes:
    return wirejson.dumps({"jsonrpc": JSONRPC, "id": request_id, "method": method, "params": params})


def notification_body(method: str, params: Mapping[str, Any]) -> bytes:
    return wirejson.dumps({"jsonrpc": JSONRPC, "method": method, "params": params})


# --- one upstream exchange ---------------------------------------------------------------------
class Exchange:
    """What an upstream sent in answer to our request `request_id`, read message by message.

    `read()` takes one decoded JSON-RPC message of the answer (from a JSON body or an SSE event)
    and returns it classified: notifications (progress, logs) and server-to-client requests are
    handed back for the caller to relay or decline; the response must carry our id.
    """

    __slots__ = ("request_id",)

    def __init__(self, request_id: RequestId):
        self.request_id = request_id

    def read_event(self, event: SSEEvent) -> Message | None:
        """The message in an SSE event, or None for an event that carries none (priming, empty)."""
        if event.event != "message" or not event.data.strip():
            return None
        return self.read(decode(event.data))

    def read(self, msg: Message) -> Message:
        if isinstance(msg, Response) and msg.id != self.request_id:
            if msg.id is None and msg.error is not None:
                return msg  # an error about the request as a whole (e.g. a bad session)
            raise WireError(INTERNAL_ERROR, "the upstream answered a request we did not send")
        return msg


def about_session(text: str | bytes) -> bool:
    """Does an upstream's error text speak of the session (the one sign servers agree on)?"""
    if isinstance(text, bytes):
        return b"session" in text.lower()
    return "session" in text.lower()


def session_expired(status: int, body: Message | None) -> bool:
    """Did the upstream forget our session? HTTP 404 on a session request, or HTTP 400 with a
    JSON-RPC error about the session id (as TypeScript-SDK servers answer after a restart)."""
    if status == 404:
        return True
    if status != 400 or not isinstance(body, Response) or body.error is None:
        return False
    return about_session(str(body.error.get("message", "")))


# --- headers -----------------------------------------------------------------------------------
SESSION_HEADER = "mcp-session-id"
# What a relay hands on to the upstream of a client's request: the transport's headers and the
# 2026-07-28 envelope, `Mcp-Param-*` included (intermediaries MUST forward those they do not
# know). Never the client's own credentials (`Authorization` is ours), cookies or `Origin`.
_RELAYED_REQUEST = frozenset(
    {"accept", "content-type", "mcp-protocol-version", "mcp-method", "mcp-name", "last-event-id"}
)
_RELAYED_REQUEST_PREFIX = "mcp-param-"
# What a relay hands back of the upstream's answer (the session id is mapped apart).
_RELAYED_RESPONSE = frozenset(
    {"content-type", "mcp-protocol-version", "cache-control", "x-accel-buffering", "retry-after", "allow"}
)


def relayed_request_header(name: str) -> bool:
    """Does a relay forward this request header (lower-case name) to the upstream?"""
    return name in _RELAYED_REQUEST or name.startswith(_RELAYED_REQUEST_PREFIX)


def relayed_response_header(name: str) -> bool:
    """Does a relay hand this response header (lower-case name) back to the client?"""
    return name in _RELAYED_RESPONSE


def encode_header(value: str) -> str:
    """A header-safe form of `value`: itself when plain printable ASCII, else `=?base64?...?=`."""
    if value.isascii() and value.isprintable() and value == value.strip():
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


def decode_header(value: str) -> str:
    """The value behind `encode_header`; a malformed base64 form is returned as it is."""
    if value.startswith("=?base64?") and value.endswith("?=") and len(value) >= 11:
        try:
            return base64.b64decode(value[9:-2], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return value
    return value


def check_modern_request(
    request: Request, version: str, method_header: str | None, name_header: str | None
) -> WireError | None:
    """The 2026-07-28 envelope rules for a request: None when it is well-formed."""
    if version not in MODERN_VERSIONS:
        return WireError(
            UNSUPPORTED_PROTOCOL_VERSION,
            f"unsupported protocol version {version!r}",
            {"supported": list(MODERN_VERSIONS)},
        )
    if method_header != request.method:
        return WireError(HEADER_MISMATCH, "the Mcp-Method header does not match the request's method")
    target = _NAMED.get(request.method)
    if target is not None:
        expected = request.params.get(target)
        if name_header is None or decode_header(name_header) != expected:
            return WireError(HEADER_MISMATCH, "the Mcp-Name header does not match the request's target")
    meta = request.params.get("_meta")
    if (
        not isinstance(meta, dict)
        or meta.get(META_VERSION) != version
        or not isinstance(meta.get(META_CAPABILITIES), dict)
    ):
        return WireError(
            INVALID_PARAMS,
            f"2026-07-28 requests carry params._meta with {META_VERSION} equal to the "
            f"MCP-Protocol-Version header and {META_CAPABILITIES}",
        )
    return None


def http_status(code: int) -> int:
    """The HTTP status a 2026-07-28 server answers a JSON-RPC error with."""
    if code == METHOD_NOT_FOUND:
        return 404
    if code in (PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS) or -32099 <= code <= -32020:
        return 400
    return 200


# --- results per era ---------------------------------------------------------------------------
def legacy_result(result: dict[str, Any]) -> dict[str, Any]:
    """`result` as a 2025-era client may see it: no 2026-only fields, no serverInfo stamp."""
    meta = result.get("_meta")
    stamped = isinstance(meta, dict) and META_SERVER_INFO in meta
    if not stamped and not any(key in result for key in MODERN_ONLY_RESULT_FIELDS):
        return result
    out = {k: v for k, v in result.items() if k not in MODERN_ONLY_RESULT_FIELDS}
    if stamped:
        assert isinstance(meta, dict)
        rest = {k: v for k, v in meta.items() if k != META_SERVER_INFO}
        if rest:
            out["_meta"] = rest
        else:
            del out["_meta"]
    return out


def modern_result(
    result: dict[str, Any], server_info: Mapping[str, Any], *, listing: bool = False
) -> dict[str, Any]:
    """`result` as a 2026-07-28 client expects it: `resultType`, our serverInfo stamp, and for
    lists the cache hints (private: what a caller sees depends on its credential)."""
    out = dict(result)
    out.setdefault("resultType", "complete")
    if listing:
        out.setdefault("ttlMs", 0)
        out.setdefault("cacheScope", "private")
    meta = out.get("_meta")
    out["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SERVER_INFO: dict(server_info)}
    return out


PARAM_HEADER_PREFIX = "mcp-param-"


def check_param_headers(
    input_schema: Any, arguments: Mapping[str, Any], headers: Mapping[str, str]
) -> WireError | None:
    """A 2026-07-28 `tools/call` whose `Mcp-Param-*` headers disagree with its arguments (the
    tool's `x-mcp-header` annotations), as -32020; the rule is the SDK's, applied where we
    answer calls without it."""
    rejection = validate_mcp_param_headers(input_schema, arguments, headers)
    if rejection is None:
        return None
    return WireError(rejection.code, rejection.message, rejection.data)
