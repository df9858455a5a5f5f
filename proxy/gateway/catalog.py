"""A namespace's tools: concurrent fan-out over its connections, exposed names, call routing.

Used by the namespace MCP endpoint and by `GET /{ns}/.tools`, so both see the same view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types

from proxy.auth.policy import Principal, allows, require
from proxy.directory import Directory
from proxy.errors import JunctionError, NotFound, UpstreamError
from proxy.gateway.names import NameMap, NameStyle, Ref
from proxy.store import ConnectionRecord

log = logging.getLogger("junction.catalog")


@dataclass
class ConnectionTools:
    """One connection's share of a namespace listing: its tools, or why there are none."""

    record: ConnectionRecord
    tools: list[types.Tool] | None = None
    error: JunctionError | None = None


class Catalog:
    """Aggregates and routes the tools of each namespace."""

    def __init__(self, directory: Directory):
        self._directory = directory
        self._maps: dict[str, NameMap] = {}

    async def visible(self, namespace: str, principal: Principal) -> list[ConnectionRecord]:
        return [
            r
            for r in await self._directory.connections(namespace)
            if allows(principal, "read", "connections", namespace, r.metadata or {})
        ]

    async def gather(self, namespace: str, principal: Principal) -> list[ConnectionTools]:
        """Ask every visible connection for its tools at once; each has its own deadline."""
        records = await self.visible(namespace, principal)
        results = [ConnectionTools(record=r) for r in records]

        async def one(item: ConnectionTools) -> None:
            session = self._directory.upstream_for(item.record)
            try:
                item.tools = await session.list_tools()
            except JunctionError as exc:
                item.error = exc
            except Exception as exc:  # never let one upstream fail the whole list
                log.exception("listing tools of %s/%s failed", namespace, item.record.connection_id)
                item.error = UpstreamError(f"listing tools failed ({type(exc).__name__})")

        async with anyio.create_task_group() as tg:
            for item in results:
                tg.start_soon(one, item)
        self._rebuild(namespace)
        return results

    def _rebuild(self, namespace: str) -> NameMap:
        refs: list[Ref] = []
        for record in self._directory.cached_connections(namespace):
            session = self._directory.upstream_for(record)
            for tool in session.cached_tools() or ():
                refs.append((record.connection_id, tool.name))
        name_map = NameMap(refs)
        self._maps[namespace] = name_map
        return name_map

    async def tools(self, namespace: str, principal: Principal, style: NameStyle) -> list[types.Tool]:
        """Every visible tool of the namespace under its exposed name, in a stable order."""
        gathered = await self.gather(namespace, principal)
        name_map = self._maps[namespace]
        out: list[types.Tool] = []
        for item in gathered:
            for tool in item.tools or ():
                ref = (item.record.connection_id, tool.name)
                exposed = name_map.exposed(ref, style)
                out.append(tool.model_copy(update={"name": exposed}))
        out.sort(key=lambda t: t.name)
        return out

    async def resolve(self, namespace: str, principal: Principal, name: str) -> tuple[ConnectionRecord, str]:
        """The connection and upstream tool behind an exposed name, in either form."""
        ref = self._lookup(namespace, name)
        if ref is None:
            # After a restart or a change nobody listed yet: list (cached where possible) and look again.
            await self.gather(namespace, principal)
            ref = self._lookup(namespace, name)
        if ref is None:
            raise NotFound(f"tool {name!r} not found in namespace {namespace!r}")
        try:
            record = await self._directory.connection(namespace, ref[0])
        except NotFound as exc:
            raise NotFound(f"tool {name!r} not found in namespace {namespace!r}") from exc
        require(principal, "execute", "connections", namespace, record.metadata or {})
        return record, ref[1]

    def _lookup(self, namespace: str, name: str) -> Ref | None:
        name_map = self._maps.get(namespace)
        return name_map.resolve(name) if name_map is not None else None

    async def call(
        self, namespace: str, principal: Principal, name: str, arguments: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Call a tool by its exposed name; the upstream's raw result object."""
        record, tool = await self.resolve(namespace, principal, name)
        return await self._directory.upstream_for(record).call_tool(tool, arguments)

    def forget(self, namespace: str) -> None:
        self._maps.pop(namespace, None)
