"""The downstream client of one request on `/mcp/{ns}`, as its upstream reaches it.

A legacy client with a session is asked on its request's own stream (sampling, elicitation,
roots) and told there about its call (log messages at the level it set, progress); the
`relay.caller` context variable makes that the client of the request being served.
"""

from __future__ import annotations

from typing import Any

import mcp.types as types
from mcp.server import ServerRequestContext
from mcp.shared.message import ServerMessageMetadata
from pydantic import TypeAdapter

_SERVER_REQUEST: TypeAdapter[Any] = TypeAdapter(types.ServerRequest)
_RESULTS: dict[str, type[Any]] = {
    "sampling/createMessage": types.CreateMessageResult,
    "elicitation/create": types.ElicitResult,
    "roots/list": types.ListRootsResult,
}
_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
MAX_SESSIONS_WITH_LEVELS = 10_000


class LogLevels:
    """`logging/setLevel` of each legacy downstream session (the upstream session is shared,
    so the level is applied here, per client, not sent upstream)."""

    def __init__(self) -> None:
        self._levels: dict[str, str] = {}

    def set(self, session_id: str, level: str) -> None:
        if len(self._levels) >= MAX_SESSIONS_WITH_LEVELS:
            del self._levels[next(iter(self._levels))]
        self._levels[session_id] = level

    def allows(self, session_id: str | None, level: str) -> bool:
        wanted = self._levels.get(session_id or "")
        if wanted is None or level not in _LEVELS or wanted not in _LEVELS:
            return True
        return _LEVELS.index(level) >= _LEVELS.index(wanted)


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


class SessionCaller:
    """A client reached through the SDK's session for the request being handled."""

    pushes = True

    def __init__(self, ctx: ServerRequestContext[Any, Any], levels: LogLevels, session_id: str | None):
        self._ctx = ctx
        self._levels = levels
        self._session_id = session_id
        caps = ctx.session.client_capabilities
        self._caps = _dump(caps) if caps is not None else {}

    def can(self, capability: str) -> bool:
        return capability in self._caps and self._ctx.session.can_send_request

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request = _SERVER_REQUEST.validate_python({"method": method, "params": params})
        metadata = ServerMessageMetadata(related_request_id=self._ctx.request_id)
        result = await self._ctx.session.send_request(request, _RESULTS[method], metadata=metadata)
        return _dump(result)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        if method != "notifications/message":
            return
        level = str(params.get("level", "info"))
        if not self._levels.allows(self._session_id, level):
            return
        await self._ctx.session.send_log_message(
            level,  # type: ignore[arg-type]
            params.get("data"),
            params.get("logger"),
            related_request_id=self._ctx.request_id,
        )
