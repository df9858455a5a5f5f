"""The few private internals of the `mcp` SDK the gateway relies on, in one adapter.

Each is read here and nowhere else, and `tests/test_internals.py` fails loudly when an upgrade
changes one (the versions in `pyproject.toml` are the ones those tests passed with):

- the session manager's live legacy sessions and their owners: the fast path answers only on a
  live session that belongs to the caller, exactly as the SDK would;
- whether a client session's dispatcher has closed: the HTTP+SSE client keeps its transport open
  after its event stream ended, and a request on it fails at once without reaching the upstream;
- the message of the error the SDK gives pending requests when a connection closes, which tells
  it from an upstream's own error with the same code (-32000).
"""

from __future__ import annotations

from typing import Any

from mcp import Client
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

CONNECTION_CLOSED_MESSAGE = "Connection closed"


def live_sessions(manager: StreamableHTTPSessionManager) -> dict[str, Any]:
    """Session id -> the SDK's transport of every legacy downstream session."""
    sessions: dict[str, Any] = manager._server_instances  # noqa: SLF001
    return sessions


def session_owner(manager: StreamableHTTPSessionManager, session_id: str) -> Any:
    """The authorization context that opened a legacy downstream session (None if unknown)."""
    return manager._session_owners.get(session_id)  # noqa: SLF001


def client_closed(client: Client) -> bool:
    """True when the client session can no longer send: a request would fail unsent."""
    try:
        dispatcher = client.session._dispatcher  # noqa: SLF001
    except RuntimeError:  # no session (not entered, or already left)
        return True
    return bool(getattr(dispatcher, "_closed", False))
