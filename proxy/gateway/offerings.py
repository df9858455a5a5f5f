"""A namespace's resources, resource templates and prompts, and the routing of reads, prompt
gets, completions and subscriptions to the connection that owns each.

Built like the tool catalog: every visible connection is asked at once, each within its own
deadline (a slow one costs only its own entries), all of an upstream's pages are walked (up to
the pool's page cap), and each connection's lists are cached until it announces a change
(`notifications/*/list_changed`) or the connection changes. Resource URIs carry their
connection id (`proxy.gateway.uris`); prompt names follow the tool naming rules
(`proxy.gateway.names`).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import mcp.types as types
from mcp.shared.exceptions import MCPError

from proxy import wire
from proxy.auth.policy import CALL, Principal, require
from proxy.directory import Directory
from proxy.errors import JunctionError, NotFound
from proxy.gateway import uris
from proxy.gateway.catalog import Catalog
from proxy.gateway.names import NameMap, NameStyle
from proxy.store import ConnectionRecord
from proxy.upstream.pool import UpstreamSession

log = logging.getLogger("junction.offerings")

# list method -> (result field, result type, the server capability it needs)
_LISTS: dict[str, tuple[str, type[Any], str]] = {
    "resources/list": ("resources", types.ListResourcesResult, "resources"),
    "resources/templates/list": ("resourceTemplates", types.ListResourceTemplatesResult, "resources"),
    "prompts/list": ("prompts", types.ListPromptsResult, "prompts"),
}
# What each upstream announcement makes stale.
_STALE = {
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list"),
    "notifications/prompts/list_changed": ("prompts/list",),
}
MAX_PAGES = 100


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


def server_capabilities(session: UpstreamSession) -> dict[str, Any]:
    """What a connected upstream said it offers ({} when it is not connected)."""
    live = session.live_client
    if live is None or live.server_capabilities is None:
        return {}
    return _dump(live.server_capabilities)


class Offerings:
    """Resources, templates and prompts of every namespace, and requests routed to their owner."""

    def __init__(self, directory: Directory, catalog: Catalog, fanout_timeout: float = 5.0):
        self._directory = directory
        self._catalog = catalog
        self._fanout_timeout = fanout_timeout
        # (namespace, connection id, list method) -> (session it came from, items)
        self._lists: dict[tuple[str, str, str], tuple[UpstreamSession, list[dict[str, Any]]]] = {}
        self._prompt_maps: dict[str, NameMap] = {}
        directory.subscribe(lambda namespace, connection_id: self.forget(namespace, connection_id))

    def forget(self, namespace: str, connection_id: str | None = None, methods: tuple[str, ...] = ()) -> None:
        """Drop cached lists of a namespace (or one connection, or some of its lists)."""
        for key in list(self._lists):
            if key[0] == namespace and connection_id in (None, key[1]) and (not methods or key[2] in methods):
                del self._lists[key]
        self._prompt_maps.pop(namespace, None)

    def announced(self, key: tuple[str, str], method: str) -> None:
        """An upstream said some of its lists changed."""
        stale = _STALE.get(method)
        if stale:
            self.forget(key[0], key[1], stale)

    # capabilities
    async def capabilities(
        self, namespace: str, principal: Principal, rpc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The server capabilities of the namespace: each kind that at least one visible
        connection offers (they are connected first, each within its deadline)."""
        records = await self._catalog.visible(namespace, principal, rpc)
        sessions = [self._directory.upstream_for(r) for r in records]

        async def connect(session: UpstreamSession) -> None:
            try:
                with anyio.move_on_after(min(session.config.connect_timeout, self._fanout_timeout)):
                    await session.client()
            except Exception:  # noqa: BLE001 - its status says why; it offers nothing meanwhile
                return

        async with anyio.create_task_group() as tg:
            for session in sessions:
                # Only a connection never tried is waited for: one that failed says so in its
                # status, and every new client must not wait for it again.
                if not session.connected and session.status is None:
                    tg.start_soon(connect, session)
        offered: dict[str, Any] = {"tools": {"listChanged": True}}
        extensions: dict[str, Any] = {}
        for session in sessions:
            caps = server_capabilities(session)
            if "resources" in caps:
                subscribe = bool(caps["resources"].get("subscribe")) or bool(
                    offered.get("resources", {}).get("subscribe")
                )
                offered["resources"] = {"listChanged": True, "subscribe": subscribe}
            if "prompts" in caps:
                offered["prompts"] = {"listChanged": True}
            if "completions" in caps:
                offered["completions"] = {}
            if "logging" in caps:
                offered["logging"] = {}
            extensions.update(caps.get("extensions") or {})
        if extensions:
            offered["extensions"] = extensions
        return offered

    # lists
    async def listing(
        self,
        method: str,
        namespace: str,
        principal: Principal,
        style: NameStyle,
        rpc: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Every visible connection's resources, templates or prompts, under exposed names."""
        field, _, _ = _LISTS[method]
        records = await self._catalog.visible(namespace, principal, rpc)
        per_connection = await self._gather(method, namespace, records)
        prompt_map = self._prompt_map(namespace) if method == "prompts/list" else None
        # `bare` names are the server's own while the caller sees one connection: so are URIs.
        bare = style == "bare" and len(records) == 1
        out: list[dict[str, Any]] = []
        for record, items in per_connection:
            cid = record.connection_id
            for item in items:
                shown = dict(item)
                if "uri" in shown and not bare:
                    shown["uri"] = uris.expose(cid, shown["uri"])
                if "uriTemplate" in shown and not bare:
                    shown["uriTemplate"] = uris.expose(cid, shown["uriTemplate"])
                if prompt_map is not None:
                    shown["name"] = prompt_map.exposed((cid, item["name"]), style)
                out.append(shown)
        del field
        return out

    async def _gather(
        self, method: str, namespace: str, records: list[ConnectionRecord]
    ) -> list[tuple[ConnectionRecord, list[dict[str, Any]]]]:
        results: dict[str, list[dict[str, Any]]] = {}

        async def one(record: ConnectionRecord) -> None:
            try:
                results[record.connection_id] = await self._list_one(method, record)
            except (JunctionError, MCPError) as exc:
                log.info("listing %s of %s/%s failed: %s", method, namespace, record.connection_id, exc)
            except Exception:  # never let one upstream fail the whole list
                log.exception("listing %s of %s/%s failed", method, namespace, record.connection_id)

        async with anyio.create_task_group() as tg:
            for record in records:
                tg.start_soon(one, record)
        return [(r, results[r.connection_id]) for r in records if r.connection_id in results]

    async def _list_one(self, method: str, record: ConnectionRecord) -> list[dict[str, Any]]:
        key = (record.namespace, record.connection_id, method)
        session = self._directory.upstream_for(record)
        cached = self._lists.get(key)
        if cached is not None and cached[0] is session and session.connected:
            return cached[1]
        field, result_type, capability = _LISTS[method]
        with anyio.fail_after(min(session.config.list_timeout, self._fanout_timeout)):
            await session.client()
            if capability not in server_capabilities(session):
                items: list[dict[str, Any]] = []
            else:
                items = []
                cursor: str | None = None
                for _ in range(MAX_PAGES):
                    params = {"cursor": cursor} if cursor is not None else None
                    page = _dump(await session.request(method, params, result_type))
                    items.extend(page.get(field, []))
                    cursor = page.get("nextCursor")
                    if cursor is None:
                        break
        self._lists[key] = (session, items)
        if method == "prompts/list":
            self._prompt_maps.pop(record.namespace, None)
        return items

    def _prompt_map(self, namespace: str) -> NameMap:
        current = self._prompt_maps.get(namespace)
        if current is None:
            refs = [
                (cid, item["name"])
                for (ns, cid, method), (_, items) in self._lists.items()
                if ns == namespace and method == "prompts/list"
                for item in items
            ]
            current = self._prompt_maps[namespace] = NameMap(refs)
        return current

    # routed requests
    async def _owner(
        self, namespace: str, principal: Principal, connection_id: str, rpc: dict[str, Any] | None
    ) -> UpstreamSession:
        """The session of a connection the caller may use; one it may not see does not exist."""
        try:
            record = await self._directory.connection(namespace, connection_id)
            if not principal.admin:
                require(principal, CALL, "connections", namespace, record.metadata or {}, rpc)
        except NotFound:
            raise
        return self._directory.upstream_for(record)

    async def _resource_owner(
        self, namespace: str, principal: Principal, uri: str, rpc: dict[str, Any] | None
    ) -> tuple[UpstreamSession, str]:
        """The owner of an exposed URI and its own URI; a URI naming no connection belongs to the
        only connection the caller sees, if there is just one (a `bare` namespace)."""
        found = uris.resolve(uri)
        if found is not None:
            try:
                return await self._owner(namespace, principal, found[0], rpc), found[1]
            except NotFound:
                pass
        records = await self._catalog.visible(namespace, principal, rpc)
        if len(records) == 1:
            try:  # the caller must be allowed to use it, not only to see it
                return await self._owner(namespace, principal, records[0].connection_id, rpc), uri
            except NotFound:
                pass
        raise MCPError(
            wire.INVALID_PARAMS, f"resource {uri!r} not found in namespace {namespace!r}", {"uri": uri}
        )

    async def read(
        self, namespace: str, principal: Principal, params: dict[str, Any], rpc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """`resources/read` of an exposed URI; the contents carry exposed URIs too."""
        exposed = str(params.get("uri", ""))
        session, uri = await self._resource_owner(namespace, principal, exposed, rpc)
        connection_id = session.key[1]
        result = await session.ask("resources/read", {**params, "uri": uri})
        if uri == exposed:
            return result  # asked by the server's own URI: answered in the same terms
        for content in result.get("contents", []):
            if isinstance(content, dict) and isinstance(content.get("uri"), str):
                content["uri"] = uris.expose(connection_id, content["uri"])
        return result

    async def owns(self, namespace: str, principal: Principal, uri: str, rpc: dict[str, Any] | None) -> bool:
        """Does `uri` name a resource of a connection the caller may use?"""
        try:
            await self._resource_owner(namespace, principal, uri, rpc)
        except (MCPError, JunctionError):
            return False
        return True

    async def subscription(
        self,
        method: str,
        namespace: str,
        principal: Principal,
        exposed: str,
        rpc: dict[str, Any] | None = None,
    ) -> tuple[UpstreamSession, str]:
        """Forward `resources/subscribe` or `unsubscribe`; (the owner, its own URI)."""
        session, uri = await self._resource_owner(namespace, principal, exposed, rpc)
        if not server_capabilities(session).get("resources", {}).get("subscribe"):
            raise MCPError(wire.METHOD_NOT_FOUND, "this resource's server does not support subscriptions")
        await session.request(method, {"uri": uri}, types.EmptyResult)
        return session, uri

    async def _prompt(
        self, namespace: str, principal: Principal, name: str, rpc: dict[str, Any] | None
    ) -> tuple[UpstreamSession, str]:
        ref = self._prompt_map(namespace).resolve(name)
        if ref is None:
            await self.listing("prompts/list", namespace, principal, "safe", rpc)
            ref = self._prompt_map(namespace).resolve(name)
        if ref is None:
            raise NotFound(f"prompt {name!r} not found in namespace {namespace!r}")
        try:
            return await self._owner(namespace, principal, ref[0], rpc), ref[1]
        except NotFound as exc:
            raise NotFound(f"prompt {name!r} not found in namespace {namespace!r}") from exc

    async def get_prompt(
        self, namespace: str, principal: Principal, params: dict[str, Any], rpc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        session, name = await self._prompt(namespace, principal, str(params.get("name", "")), rpc)
        result = await session.ask("prompts/get", {**params, "name": name})
        for message in result.get("messages", []):
            content = message.get("content") if isinstance(message, dict) else None
            resource = content.get("resource") if isinstance(content, dict) else None
            if isinstance(resource, dict) and isinstance(resource.get("uri"), str):
                resource["uri"] = uris.expose(session.key[1], resource["uri"])
        return result

    async def complete(
        self, namespace: str, principal: Principal, params: dict[str, Any], rpc: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """`completion/complete` for a prompt or a resource template, routed to its owner."""
        ref = dict(params.get("ref") or {})
        if ref.get("type") == "ref/prompt":
            session, ref["name"] = await self._prompt(namespace, principal, str(ref.get("name", "")), rpc)
        elif ref.get("type") == "ref/resource":
            session, ref["uri"] = await self._resource_owner(
                namespace, principal, str(ref.get("uri", "")), rpc
            )
        else:
            raise MCPError(wire.INVALID_PARAMS, "completion/complete needs a ref/prompt or ref/resource")
        if "completions" not in server_capabilities(session):
            return {"completion": {"values": [], "hasMore": False}}
        return _dump(
            await session.request("completion/complete", {**params, "ref": ref}, types.CompleteResult)
        )
