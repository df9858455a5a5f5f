"""A namespace's tools: concurrent fan-out over its connections, exposed names, call routing.

Used by the namespace MCP endpoint and by `GET /{ns}/.tools`, so both see the same view.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types

from proxy.auth.policy import CALL, LIST, Principal, allows, require
from proxy.directory import Directory
from proxy.errors import AuthRequired, InputRequired, JunctionError, NotFound, UpstreamError
from proxy.gateway import uris
from proxy.gateway.budget import NO_LIMITS, Limits, fit, meta_names
from proxy.gateway.names import NameMap, NameStyle, Ref
from proxy.store import ConnectionRecord
from proxy.upstream.fastlane import NotificationSink
from proxy.upstream.toollist import uses_mcp_headers

log = logging.getLogger("junction.catalog")
ListingKey = tuple[str, NameStyle, Limits, tuple[str, ...]]

# Rendered tool lists kept: one per namespace, name style, limits (tool budget, name length) and
# set of connections a caller sees (service tokens scoped by metadata see different sets).
MAX_LISTINGS = 1000


@dataclass
class ConnectionTools:
    """One connection's share of a namespace listing: its tools, or why there are none."""

    record: ConnectionRecord
    tools: list[types.Tool] | None = None
    error: JunctionError | None = None


class Catalog:
    """Aggregates and routes the tools of each namespace."""

    def __init__(self, directory: Directory, fanout_timeout: float = 5.0):
        self._directory = directory
        self._fanout_timeout = fanout_timeout
        self._maps: dict[str, NameMap] = {}
        self._map_signatures: dict[str, tuple[Any, ...]] = {}
        # Input schemas of the tools that declare `x-mcp-header` arguments, per namespace.
        self._header_schemas: dict[str, dict[Ref, dict[str, Any]]] = {}
        # (namespace, style, limits, visible connection ids) -> (signature, tools, tools as JSON)
        self._lists: dict[ListingKey, tuple[Any, list[dict[str, Any]], bytes]] = {}
        # Every change to a namespace or its connections invalidates what was derived from it.
        directory.subscribe(lambda namespace, _connection: self.forget(namespace))

    async def visible(
        self, namespace: str, principal: Principal, rpc: dict[str, Any] | None = None
    ) -> list[ConnectionRecord]:
        """The connections whose tools `principal` may list. `rpc` is the MCP request asking
        (None: not an MCP request, which constraints on MCP requests do not grant)."""
        records = await self._directory.connections(namespace)
        if principal.admin:
            return records
        return [
            r for r in records if allows(principal, LIST, "connections", namespace, r.metadata or {}, rpc)
        ]

    async def gather(
        self, namespace: str, principal: Principal, rpc: dict[str, Any] | None = None
    ) -> list[ConnectionTools]:
        """Ask every visible connection for its tools at once; each has its own deadline."""
        records = await self.visible(namespace, principal, rpc)
        results = [ConnectionTools(record=r) for r in records]
        missing: list[ConnectionTools] = []
        for item in results:
            item.tools = self._directory.upstream_for(item.record).cached_tools()
            if item.tools is None:
                missing.append(item)

        async def one(item: ConnectionTools) -> None:
            session = self._directory.upstream_for(item.record)
            try:
                item.tools = await session.list_tools(
                    wait=min(session.config.list_timeout, self._fanout_timeout)
                )
            except JunctionError as exc:
                item.error = exc
            except Exception as exc:  # never let one upstream fail the whole list
                log.exception("listing tools of %s/%s failed", namespace, item.record.connection_id)
                item.error = UpstreamError(f"listing tools failed ({type(exc).__name__})")

        if missing:  # only the connections without a fresh cached list cost I/O
            async with anyio.create_task_group() as tg:
                for item in missing:
                    tg.start_soon(one, item)
        self._name_map(namespace)
        return results

    def _name_map(self, namespace: str) -> NameMap:
        """The namespace's name map, rebuilt only when some connection's tool list changed."""
        lists, versions = [], []
        for record in self._directory.cached_connections(namespace):
            session = self._directory.upstream_for(record)
            tools = session.cached_tools()
            lists.append((record.connection_id, tools))
            versions.append((record.connection_id, session.tools_version if tools is not None else 0))
        signature = tuple(versions)
        current = self._maps.get(namespace)
        if current is not None and self._map_signatures.get(namespace) == signature:
            return current
        refs: list[Ref] = [(cid, tool.name) for cid, tools in lists for tool in tools or ()]
        name_map = NameMap(refs)
        self._maps[namespace] = name_map
        self._map_signatures[namespace] = signature
        self._header_schemas[namespace] = {
            (cid, tool.name): tool.input_schema
            for cid, tools in lists
            for tool in tools or ()
            if uses_mcp_headers(tool.input_schema)
        }
        return name_map

    async def tool_dicts(
        self,
        namespace: str,
        principal: Principal,
        style: NameStyle,
        rpc: dict[str, Any] | None = None,
        *,
        limits: Limits = NO_LIMITS,
    ) -> list[dict[str, Any]]:
        """Every visible tool under its exposed name, as JSON-ready dicts in a stable order (cached);
        with a tool budget, what fits it (`proxy/gateway/budget.py`)."""
        return (await self._listing(namespace, principal, style, rpc, limits))[0]

    async def tools_json(
        self,
        namespace: str,
        principal: Principal,
        style: NameStyle,
        rpc: dict[str, Any] | None = None,
        *,
        limits: Limits = NO_LIMITS,
    ) -> bytes:
        """`tool_dicts` already serialized as a JSON array (cached with it)."""
        return (await self._listing(namespace, principal, style, rpc, limits))[1]

    async def _listing(
        self,
        namespace: str,
        principal: Principal,
        style: NameStyle,
        rpc: dict[str, Any] | None,
        limits: Limits = NO_LIMITS,
    ) -> tuple[list[dict[str, Any]], bytes]:
        gathered = await self.gather(namespace, principal, rpc)
        name_map = self._maps[namespace]
        signature = (
            self._map_signatures[namespace],
            tuple(
                (
                    i.record.connection_id,
                    self._directory.upstream_for(i.record).tools_version if i.tools else 0,
                )
                for i in gathered
            ),
        )
        # Callers with different views (service tokens scoped by metadata) get their own entry.
        key = (namespace, style, limits, tuple(i.record.connection_id for i in gathered))
        cached = self._lists.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        return self._render(key, signature, gathered, name_map)

    def _render(
        self,
        key: ListingKey,
        signature: Any,
        gathered: list[ConnectionTools],
        name_map: NameMap,
    ) -> tuple[list[dict[str, Any]], bytes]:
        style, limits = key[1], key[2]
        entries: list[tuple[Ref, dict[str, Any]]] = []
        for item in gathered:
            for tool in item.tools or ():
                ref = (item.record.connection_id, tool.name)
                if ref not in name_map.safe:
                    continue  # listed before the namespace's map knew it: in the next listing
                data = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
                data["name"] = name_map.exposed(ref, style, limits.max_length)
                if "_meta" in data and not (style == "bare" and len(gathered) == 1):
                    uris.expose_tool_ui(ref[0], data)
                entries.append((ref, data))
        if limits.budget is not None and len(entries) > limits.budget:
            curated = [name_map.resolve(name) for name in limits.curated]
            out = fit(entries, curated, limits.budget, meta_names(name_map.resolve))
        else:
            out = sorted((data for _, data in entries), key=lambda t: str(t["name"]))
        encoded = json.dumps(out, separators=(",", ":")).encode()
        self._lists.pop(key, None)
        if len(self._lists) >= MAX_LISTINGS:  # many distinct views: drop the oldest rendered one
            del self._lists[next(iter(self._lists))]
        self._lists[key] = (signature, out, encoded)
        return out, encoded

    async def tools(
        self,
        namespace: str,
        principal: Principal,
        style: NameStyle,
        rpc: dict[str, Any] | None = None,
        *,
        limits: Limits = NO_LIMITS,
    ) -> list[types.Tool]:
        """Every visible tool of the namespace under its exposed name, in a stable order (what fits
        the tool budget, when there is one)."""
        dicts = await self.tool_dicts(namespace, principal, style, rpc, limits=limits)
        return [types.Tool.model_validate(t) for t in dicts]

    async def resolve(
        self, namespace: str, principal: Principal, name: str, rpc: dict[str, Any] | None = None
    ) -> tuple[ConnectionRecord, str]:
        """The connection and upstream tool behind an exposed name, in either form. A tool of a
        connection the caller may not see fails exactly as a tool that does not exist."""
        missing = NotFound(f"tool {name!r} not found in namespace {namespace!r}")
        ref = self._lookup(namespace, name)
        if ref is None:
            # After a restart or a change nobody listed yet: list (cached where possible) and look again.
            await self.gather(namespace, principal, rpc)
            ref = self._lookup(namespace, name)
        if ref is None:
            self._raise_if_blocked(namespace, principal, name, rpc)
            raise missing
        try:
            record = await self._directory.connection(namespace, ref[0])
            if not principal.admin:
                require(principal, CALL, "connections", namespace, record.metadata or {}, rpc)
        except NotFound as exc:
            raise missing from exc
        return record, ref[1]

    def _raise_if_blocked(
        self, namespace: str, principal: Principal, name: str, rpc: dict[str, Any] | None
    ) -> None:
        """A tool of a connection waiting for its user (authorization or configuration) is not
        listed; calling it says what the connection needs instead of "not found"."""
        for record in self._directory.cached_connections(namespace):
            cid = record.connection_id
            if not name.startswith((cid + "__", cid + ".")):
                continue
            state = record.status.get("state")
            if state not in ("auth_required", "input_required"):
                continue
            if not principal.admin and not allows(
                principal, CALL, "connections", namespace, record.metadata or {}, rpc
            ):
                continue
            status = self._directory.shown(record).status  # with a fresh setupUrl
            if state == "auth_required":
                raise AuthRequired(status)
            raise InputRequired(status)

    async def meta_names(
        self, namespace: str, principal: Principal, rpc: dict[str, Any] | None = None
    ) -> tuple[str, str]:
        """The names `search_tools` and `call_tool` have in this namespace (`budget.meta_names`)."""
        if namespace not in self._maps:
            await self.gather(namespace, principal, rpc)
        return meta_names(self._name_map(namespace).resolve)

    def header_schema(
        self, namespace: str, name: str, principal: Principal, rpc: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The input schema of a listed tool that carries `x-mcp-header` annotations, else None
        (no I/O: what the last listing knows; most namespaces have none, and cost one lookup)."""
        schemas = self._header_schemas.get(namespace)
        if not schemas:
            return None
        ref = self._lookup(namespace, name)
        schema = schemas.get(ref) if ref is not None else None
        if schema is None or principal.admin or ref is None:
            return schema
        # A tool of a connection the caller may not use is as unknown to it as any other.
        for record in self._directory.cached_connections(namespace):
            if record.connection_id == ref[0]:
                allowed = allows(principal, CALL, "connections", namespace, record.metadata or {}, rpc)
                return schema if allowed else None
        return None

    def _lookup(self, namespace: str, name: str) -> Ref | None:
        name_map = self._maps.get(namespace)
        return name_map.resolve(name) if name_map is not None else None

    async def call(
        self,
        namespace: str,
        principal: Principal,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        meta: dict[str, Any] | None = None,
        notify: NotificationSink | None = None,
        rpc: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Call a tool by its exposed name; the upstream's raw result object. `meta` and `notify`
        carry a caller's progress token there and its progress back; `rpc` is the caller's MCP
        request, for the policy."""
        record, tool = await self.resolve(namespace, principal, name, rpc)
        return await self._directory.upstream_for(record).call_tool(tool, arguments, meta=meta, notify=notify)

    def forget(self, namespace: str) -> None:
        self._maps.pop(namespace, None)
        self._header_schemas.pop(namespace, None)
        self._map_signatures.pop(namespace, None)
        for key in [k for k in self._lists if k[0] == namespace]:
            del self._lists[key]
