"""Turn transport failures into one-line messages that never carry credentials."""

from __future__ import annotations

import httpx2
from mcp.shared.exceptions import MCPError

from proxy.errors import UpstreamRefused
from proxy.upstream._http1 import ConnectionLost, RequestNotSent


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside `exc` and its nested exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(leaves(inner))
        return out
    return [exc]


def describe_failure(exc: BaseException) -> str:
    """A short, credential-free reason for an upstream failure."""
    for leaf in leaves(exc):
        if isinstance(leaf, UpstreamRefused):
            return str(leaf)
        if isinstance(leaf, httpx2.ConnectError | RequestNotSent):
            return "cannot connect to the upstream server (connection refused or host unreachable)"
        if isinstance(leaf, httpx2.TimeoutException | TimeoutError):
            return "the upstream server did not answer in time"
        if isinstance(leaf, httpx2.HTTPStatusError):
            return f"the upstream server answered HTTP {leaf.response.status_code}"
        if isinstance(leaf, httpx2.RemoteProtocolError | ConnectionLost | ConnectionResetError):
            return "the upstream server closed the connection or broke the HTTP protocol"
        if isinstance(leaf, MCPError):
            return f"the upstream server returned an MCP error: {leaf.error.message[:300]}"
        if isinstance(leaf, httpx2.HTTPError | OSError):
            return f"HTTP error talking to the upstream server ({type(leaf).__name__})"
    leaf = leaves(exc)[0]
    name = type(leaf).__name__
    if name in ("ValidationError", "JSONDecodeError"):
        return "the upstream server sent a response that is not valid MCP"
    return f"the upstream server failed ({name})"


def never_sent(exc: BaseException) -> bool:
    """A refused connection means the request never reached the upstream, so a retry is safe."""
    return any(isinstance(e, httpx2.ConnectError | RequestNotSent) for e in leaves(exc))


def not_mcp(exc: BaseException) -> bool:
    """The server answered, but not as an MCP server of this transport."""
    answered = (MCPError, httpx2.HTTPStatusError, httpx2.RemoteProtocolError, httpx2.SSEError)
    return all(isinstance(e, answered) for e in leaves(exc))
