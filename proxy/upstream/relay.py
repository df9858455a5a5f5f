"""Requests an upstream sends its client (sampling, elicitation, roots), relayed to the caller.

Upstream sessions are shared by every caller of a connection, so a server-to-client request
is answered by the downstream client whose call caused it: the surface serving that call sets
`caller` (a context variable) for its duration, and both upstream paths (the SDK client's
callbacks and the fast lane) ask `answer()`. Context variables follow the call into the SDK's
message handling, so three concurrent callers each get their own requests and nobody else's.

The gateway declares upstream every client capability it can relay (the SDK client's callbacks),
because servers hide tools that need one the client lacks; a request reaching a caller that
cannot answer it gets a JSON-RPC error, as if that caller had been asked directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import mcp.types as types
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter, ValidationError

from proxy import wire

# The server-to-client requests the gateway relays, by the client capability each needs.
RELAYED = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


class Caller(Protocol):
    """The downstream client a call came from, as far as its upstream may reach it."""

    pushes: bool  # asked by requests pushed on its stream (2025 era), not input_required

    def can(self, capability: str) -> bool:
        """Did the client declare `capability` (`sampling`, `elicitation`, `roots`)?"""

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send the client a request and return its result (MCPError for its error)."""

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """Tell the client about its call (log messages, progress)."""


caller: ContextVar[Caller | None] = ContextVar("junction_caller", default=None)

_RESPONSE: TypeAdapter[Any] = TypeAdapter(types.InputResponse)


@dataclass(frozen=True)
class Forwarded:
    """A 2026-07-28 caller's own multi round-trip: a 2026 upstream's `input_required` goes back
    to it unchanged, and its retry brings the answers and the upstream's state."""

    responses: dict[str, Any] | None = None
    state: str | None = None
    capabilities: dict[str, Any] | None = None  # what the caller declared, mirrored upstream

    def input_responses(self) -> Any:
        """The answers, as the SDK client sends them; entries that are no answer at all are left
        out (a server ignores what it does not recognise)."""
        answers: dict[str, Any] = {}
        for key, value in (self.responses or {}).items():
            try:
                answers[key] = _RESPONSE.validate_python(value)
            except ValidationError:
                continue
        return answers or None


forwarded: ContextVar[Forwarded | None] = ContextVar("junction_forwarded", default=None)


def pushing() -> bool:
    """Is the current caller a 2025-era client that can be asked things on its stream?"""
    current = caller.get()
    return current is not None and current.pushes and interactive()


def interactive() -> bool:
    """Can the current caller be asked anything?"""
    current = caller.get()
    return current is not None and any(current.can(c) for c in set(RELAYED.values()))


class SessionRelay:
    """What one upstream session asks and tells its callers, cleaned of its credentials.

    A request or log message that arrives on the stream of the call that caused it carries that
    call's context (`caller`). One that arrives elsewhere (an HTTP+SSE or stdio transport, the
    standalone GET stream) cannot be told apart, so it reaches a caller only when exactly one
    call is in flight on the session and that call's client can be asked: never a guess between
    two callers. The session's transport tasks must start with no caller in their context.
    """

    def __init__(self, redact: Callable[[Any], Any], in_flight: Callable[[], int]):
        self._redact = redact
        self._in_flight = in_flight
        self._callers: list[Caller] = []  # clients that can be asked, with a call in flight

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Mark the current caller as having a call in flight on this session."""
        current = caller.get()
        if current is None:
            yield
            return
        self._callers.append(current)
        try:
            yield
        finally:
            self._callers.remove(current)

    def redact(self, value: Any) -> Any:
        """`value` cleaned of the credentials this session sends."""
        return self._redact(value)

    def _current(self) -> Caller | None:
        current = caller.get()
        if current is not None:
            return current
        if len(self._callers) == 1 and self._in_flight() == 1:
            return self._callers[0]
        return None

    async def answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The caller's answer to an upstream's request; MCPError when nobody can answer."""
        capability = RELAYED.get(method)
        if capability is None:
            raise MCPError(wire.METHOD_NOT_FOUND, f"{method} is not supported by the gateway")
        current = self._current()
        if current is None or not current.can(capability):
            raise MCPError(wire.METHOD_NOT_FOUND, f"the client did not declare the {capability} capability")
        return await current.ask(method, self._redact(params))

    async def tell(self, method: str, params: dict[str, Any]) -> bool:
        """Pass a notification about a call to its caller; False when there is none."""
        current = self._current()
        if current is None:
            return False
        await current.notify(method, self._redact(params))
        return True

    async def _relayed(self, method: str, params: dict[str, Any], result_type: type[Any]) -> Any:
        try:
            return result_type.model_validate(await self.answer(method, params))
        except MCPError as exc:
            return exc.error
        except ValidationError:
            return types.ErrorData(
                code=wire.INVALID_PARAMS, message=f"the client's answer to {method} is invalid"
            )

    # the SDK client's callbacks
    async def sampling_callback(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        return await self._relayed("sampling/createMessage", _dumped(params), types.CreateMessageResult)

    async def elicitation_callback(self, context: Any, params: types.ElicitRequestParams) -> Any:
        return await self._relayed("elicitation/create", _dumped(params), types.ElicitResult)

    async def roots_callback(self, context: Any) -> Any:
        return await self._relayed("roots/list", {}, types.ListRootsResult)

    async def logging_callback(self, params: types.LoggingMessageNotificationParams) -> None:
        await self.tell("notifications/message", _dumped(params))


def _dumped(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]
