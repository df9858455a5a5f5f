"""Change notifications of a namespace, fanned out to the downstream clients that may see them.

Sources: an upstream announcing `tools|prompts|resources/list_changed` or
`resources/updated`, and the directory adding, changing or removing a connection. Sinks: legacy
downstream sessions (on their standalone GET stream) and 2026-07-28 `subscriptions/listen`
streams. Each sink says which connections its caller may see; an event about a connection
reaches only those sinks. Bursts merge: a list change already waiting for a sink is not queued
twice, so an upstream that re-announces fifty times in a second costs each client one message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)

from proxy.gateway import uris

log = logging.getLogger("junction.events")

# Change feeds per namespace, and per owner in a namespace; beyond them a new one is refused.
MAX_SINKS = 10_000
MAX_SINKS_PER_OWNER = 1_000
_BY_METHOD: dict[str, ServerEvent] = {
    "notifications/tools/list_changed": ToolsListChanged(),
    "notifications/prompts/list_changed": PromptsListChanged(),
    "notifications/resources/list_changed": ResourcesListChanged(),
}
ALL_LISTS: tuple[ServerEvent, ...] = (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged())


@dataclass(eq=False)
class Sink:
    """One downstream client listening to a namespace."""

    namespace: str
    may_see: Callable[[str], bool | None]  # connection id -> visible to this client (None: gone)
    deliver: Callable[[ServerEvent], Awaitable[None]]
    owner: str = ""  # who opened it (a principal): each owner has its own share of sinks
    alive: Callable[[], bool] = lambda: True  # False once its client is gone (a legacy session)
    resources: set[str] = field(default_factory=set)  # exposed URIs it subscribed to
    _pending: set[ServerEvent] = field(default_factory=set)


class NamespaceEvents:
    """Fans namespace events out to sinks; delivery runs in the gateway's task group."""

    def __init__(self, task_group: TaskGroup):
        self._tg = task_group
        self._sinks: dict[str, list[Sink]] = {}

    def add(self, sink: Sink) -> Callable[[], None] | None:
        """Start delivering to `sink`; returns the function that stops it, or None when the
        namespace, or the sink's owner, has as many as it may (nobody else's is dropped)."""
        sinks = self._sinks.setdefault(sink.namespace, [])
        if len(sinks) >= MAX_SINKS or sum(s.owner == sink.owner for s in sinks) >= MAX_SINKS_PER_OWNER:
            sinks[:] = [s for s in sinks if s.alive()]  # forget clients that are gone
            if len(sinks) >= MAX_SINKS or sum(s.owner == sink.owner for s in sinks) >= MAX_SINKS_PER_OWNER:
                return None
        sinks.append(sink)

        def remove() -> None:
            current = self._sinks.get(sink.namespace, [])
            if sink in current:
                current.remove(sink)

        return remove

    def upstream(self, key: tuple[str, str], method: str, params: dict[str, object]) -> None:
        """An upstream announced something to its clients."""
        namespace, connection_id = key
        if method == "notifications/resources/updated":
            uri = params.get("uri")
            if isinstance(uri, str):
                # Each subscriber hears it under the URI it subscribed with: the namespace's form,
                # or the server's own (a `bare` namespace of one connection).
                self.publish(namespace, connection_id, ResourceUpdated(uri=uris.expose(connection_id, uri)))
                self.publish(namespace, connection_id, ResourceUpdated(uri=uri))
            return
        event = _BY_METHOD.get(method)
        if event is not None:
            self.publish(namespace, connection_id, event)

    def connection_changed(self, namespace: str, connection_id: str | None) -> None:
        """A connection was added, changed or removed: every list may differ now."""
        for event in ALL_LISTS:
            self.publish(namespace, connection_id, event)

    def publish(self, namespace: str, connection_id: str | None, event: ServerEvent) -> None:
        for sink in list(self._sinks.get(namespace, ())):
            if isinstance(event, ResourceUpdated) and event.uri not in sink.resources:
                continue
            if connection_id is not None and not _visible(sink, connection_id, event):
                continue
            if event in sink._pending:
                continue  # the same news is already on its way
            sink._pending.add(event)
            self._tg.start_soon(self._send, sink, event)

    async def _send(self, sink: Sink, event: ServerEvent) -> None:
        sink._pending.discard(event)
        try:
            with anyio.fail_after(10):
                await sink.deliver(event)
        except Exception:  # noqa: BLE001 - the client is gone or stuck: stop telling it
            log.debug("dropping a sink of %s", sink.namespace)
            current = self._sinks.get(sink.namespace, [])
            if sink in current:
                current.remove(sink)


def _visible(sink: Sink, connection_id: str, event: ServerEvent) -> bool:
    """May the sink hear this about the connection? A connection no longer known (just removed)
    is nobody's: that lists changed is news to all, anything about its resources to none."""
    try:
        seen = sink.may_see(connection_id)
    except Exception:  # noqa: BLE001 - fail closed
        return False
    if seen is None:
        return not isinstance(event, ResourceUpdated)
    return seen
