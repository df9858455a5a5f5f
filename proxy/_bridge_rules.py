"""The rules `proxy.bridge` relays by, without I/O: which headers each message needs, which
answers mean the gateway forgot the session, which failures mean the link is gone (and whether a
request may have reached the gateway), and the errors the agent gets instead of an answer."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx2
from mcp_types import ErrorData, JSONRPCError, JSONRPCMessage, JSONRPCRequest, JSONRPCResponse, RequestId

from proxy import wire
from proxy.errors import UpstreamUnavailable


class LinkLost(Exception):
    """The HTTP session to the gateway is gone; `sent` says whether requests may have arrived."""

    def __init__(self, reason: str, *, sent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


def unreachable_error(message: str) -> ErrorData:
    """A JSON-RPC error about the gateway, shaped as the gateway shapes its own (the REST code in
    `data.error`)."""
    exc = UpstreamUnavailable(message)
    return ErrorData(code=exc.jsonrpc_code, message=exc.message, data={"error": exc.code})


def cut_off_error(request_id: RequestId) -> JSONRPCError:
    """The answer to a tool call whose connection broke after it was sent: it is not sent twice."""
    error = unreachable_error(
        "junction bridge: the connection to the gateway broke during this tool call; it may or may "
        "not have run, so it was not sent again"
    )
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


def session_lost(error: ErrorData) -> bool:
    """The gateway no longer knows our legacy session: 404 "Session not found" (or the SDK's
    "Session terminated" for a 404 without a body)."""
    return error.code == wire.INVALID_REQUEST and wire.about_session(error.message)


# What the SDK's transport answers when a request's answer stream broke after the request was sent.
_BROKEN_STREAM = ("SSE stream ended", "SSE stream failed")


def stream_broke(error: ErrorData) -> bool:
    """The request reached the gateway, and its answer was cut off (it may have taken effect)."""
    return error.message.startswith(_BROKEN_STREAM)


def negotiated_version(message: JSONRPCResponse) -> str | None:
    """The protocol version in an `initialize` result."""
    version = message.result.get("protocolVersion") if isinstance(message.result, dict) else None
    return version if isinstance(version, str) else None


def routing_headers(message: JSONRPCMessage, negotiated: str | None) -> dict[str, str]:
    """The per-message HTTP headers of each era: a 2026-07-28 request names its version, method
    and target in headers (read from its `_meta`); after a 2025-era handshake every message
    carries the negotiated `MCP-Protocol-Version`."""
    if isinstance(message, JSONRPCRequest):
        params = message.params or {}
        meta = params.get("_meta")
        version = meta.get(wire.META_VERSION) if isinstance(meta, dict) else None
        if isinstance(version, str) and version in wire.MODERN_VERSIONS:
            headers = {"mcp-protocol-version": version, "mcp-method": message.method}
            target = _NAMED.get(message.method)
            if target is not None and isinstance(params.get(target), str):
                headers["mcp-name"] = wire.encode_header(params[target])
            return headers
        if message.method == "initialize":
            return {}
    return {"mcp-protocol-version": negotiated} if negotiated else {}


_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def link_lost(exc: BaseException) -> LinkLost | None:
    """The transport trouble in `exc` (an exception group from the task groups) as one `LinkLost`,
    or None when something else went wrong (a bug: let it surface)."""
    reasons: list[str] = []
    sent = False
    for leaf in leaves(exc):
        if isinstance(leaf, LinkLost):
            reasons.append(leaf.reason)
            sent = sent or leaf.sent
        elif isinstance(leaf, httpx2.ConnectError | httpx2.ConnectTimeout):
            reasons.append("connection refused" if _refused(leaf) else f"cannot connect: {leaf}")
        elif isinstance(leaf, httpx2.TransportError):
            reasons.append(f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__)
            sent = True
        elif isinstance(leaf, anyio.BrokenResourceError | anyio.ClosedResourceError | TimeoutError):
            reasons.append("the connection to the gateway closed")
            sent = True
        else:
            return None
    return LinkLost("; ".join(dict.fromkeys(reasons)) or "unknown", sent=sent) if reasons else None


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
