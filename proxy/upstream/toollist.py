"""One upstream's tool list: cached, refreshed in the background, its failures remembered.

A refresh runs in the pool's task group, so a caller that stops waiting (a namespace listing at
its fan-out deadline) leaves it running and the next caller finds the list cached. A failed
listing is remembered until a refresh succeeds: callers get the failure at once instead of
waiting for a broken upstream again, while a background refresh retries it at most every
`failure_ttl` seconds.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp.types as types
from anyio.abc import TaskGroup

from proxy.errors import JunctionError, UpstreamTimeout

_versions = itertools.count(1)

Fetch = Callable[[], Awaitable[list[types.Tool]]]


def uses_mcp_headers(schema: Any) -> bool:
    """True when a tool's input schema asks clients to mirror parameters into `Mcp-Param-*` headers."""
    return "x-mcp-header" in json.dumps(schema) if schema else False


class ToolList:
    """The cached tools of one upstream and how they are refreshed."""

    def __init__(
        self,
        fetch: Fetch,
        task_group: TaskGroup,
        *,
        ttl: float,
        failure_ttl: float,
        on_change: Callable[[], None],
    ):
        self._fetch = fetch  # every page, or a JunctionError saying why not
        self._task_group = task_group
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._on_change = on_change
        self._tools: list[types.Tool] | None = None
        self._fetched_at = 0.0
        self._inflight: anyio.Event | None = None
        self._error: JunctionError | None = None
        self._attempted_at = 0.0
        self._generation = 0  # bumped by invalidate(): a refresh begun before it is stale
        # Changes whenever the cached list does; lets callers cache what they derive from it.
        self.version = next(_versions)
        # Tools whose calls must mirror arguments into Mcp-Param-* headers: the SDK does that.
        self.header_tools: frozenset[str] = frozenset()

    def cached(self) -> list[types.Tool] | None:
        """The list if it is cached and fresh, else None (no I/O)."""
        if self._tools is not None and time.monotonic() - self._fetched_at < self._ttl:
            return self._tools
        return None

    def invalidate(self) -> None:
        """The upstream said its tools changed: the next caller lists again."""
        self._generation += 1
        self._tools = None
        self.version = next(_versions)
        self._on_change()

    async def get(self, wait: float) -> list[types.Tool]:
        """Every tool, waiting at most `wait` seconds for a refresh; a remembered failure at once."""
        tools = self.cached()
        if tools is not None:
            return tools
        error = self._error
        if error is not None:
            if self._inflight is None and time.monotonic() - self._attempted_at >= self._failure_ttl:
                self._refresh()
            # Raised again and again: without a traceback, or each raise would add its frames.
            raise error.with_traceback(None)
        inflight = self._inflight or self._refresh()
        try:
            with anyio.fail_after(wait):
                await inflight.wait()
        except TimeoutError as exc:
            self._error = UpstreamTimeout(f"listing tools timed out after {wait:g} s")
            raise self._error.with_traceback(None) from exc
        if self._error is not None:
            raise self._error.with_traceback(None)
        assert self._tools is not None
        return self._tools

    def recovered(self) -> None:
        """The upstream is reachable again: retry a remembered listing failure now."""
        if self._error is not None and self._inflight is None:
            self._refresh()

    def _refresh(self) -> anyio.Event:
        done = self._inflight = anyio.Event()
        self._attempted_at = time.monotonic()
        self._task_group.start_soon(self._run, done)
        return done

    async def _run(self, done: anyio.Event) -> None:
        generation = self._generation
        try:
            tools = await self._fetch()
        except JunctionError as exc:
            self._error = exc
        else:
            # A list the upstream announced as changed while we fetched is served once, not cached.
            fresh = generation == self._generation
            self._tools, self._error = tools, None
            self._fetched_at = time.monotonic() if fresh else -math.inf
            self.version = next(_versions)
            self.header_tools = frozenset(t.name for t in tools if uses_mcp_headers(t.input_schema))
            self._on_change()
        finally:
            self._inflight = None
            done.set()
