"""Tool budgets: a `tools/list` that fits what the client accepts, and two meta-tools for the rest.

Clients cap the tools they take (Cursor warns above ~40 and drops names over 60 characters with
its server prefix, Windsurf takes 100 over all servers, VS Code 128), and a namespace of a few
servers passes that quickly. When the visible tools exceed a caller's budget, `tools/list` shows
the namespace's curated tools first, then the two meta-tools (before the rest, so a client that
cuts the list short keeps the way to everything), then as many others as fit, taken round-robin
over the connections in id order, each connection's in the order its server lists them (servers
list their main tools first, and every connection stays represented). `search_tools` finds any
visible tool by words of its name and description; `call_tool` calls one exactly as `tools/call`
would (same policy check, errors and progress). Without a budget nothing here runs per call:
callers test a name against `META_NAMES` (a set lookup) before anything else.

The budget is the namespace's `toolBudget` when set (0: never limited), else the first
`tool_budgets` rule whose client pattern matches the client's name; the name length comes from
that rule alone.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mcp.shared.exceptions import MCPError

from proxy.auth.policy import Principal, require_mcp
from proxy.errors import JunctionError, NotFound
from proxy.gateway.names import NameStyle, Ref, choose_style
from proxy.settings import Settings
from proxy.store import NamespaceRecord
from proxy.upstream.fastlane import NotificationSink


class Catalog(Protocol):
    """What the meta-tools need of the namespace's catalog (`proxy.gateway.catalog.Catalog`)."""

    async def meta_names(
        self, namespace: str, principal: Principal, rpc: dict[str, Any] | None = None
    ) -> tuple[str, str]: ...

    async def tool_dicts(
        self,
        namespace: str,
        principal: Principal,
        style: NameStyle,
        rpc: dict[str, Any] | None = None,
        *,
        limits: Limits = ...,
    ) -> list[dict[str, Any]]: ...


SEARCH, CALL = "search_tools", "call_tool"
# The meta-tools' names, the first pair no tool of the namespace already has under any form.
_META_PREFIXES = ("", "junction__", "junction_meta__")
META_NAMES = frozenset(prefix + name for prefix in _META_PREFIXES for name in (SEARCH, CALL))
DEFAULT_RESULTS, MAX_RESULTS, MAX_QUERY = 10, 50, 1000
_WORD = re.compile(r"[a-z0-9]+")
_MAX_REMEMBERED_CLIENTS = 1000


@dataclass(frozen=True)
class Limits:
    """What a caller's `tools/list` must fit: at most `budget` tools (None: any number), names of
    at most `max_length` characters (None: the style's own), and the tools always listed first."""

    budget: int | None = None
    max_length: int | None = None
    curated: tuple[str, ...] = ()


NO_LIMITS = Limits()


class _Rules:
    """`tool_budgets` matched against client names, each name once (a dict lookup afterwards)."""

    def __init__(self, rules: tuple[dict[str, Any], ...]):
        self.source = rules
        self._by_client: dict[str | None, tuple[int | None, int | None]] = {}

    def limits(self, client_name: str | None) -> tuple[int | None, int | None]:
        """(budget, name length) for a client, from the first rule whose pattern matches it."""
        found = self._by_client.get(client_name)
        if found is not None:
            return found
        found = (None, None)
        name = (client_name or "").lower()
        for rule in self.source if client_name else ():
            if fnmatch.fnmatchcase(name, str(rule["client"]).lower()):
                length = rule.get("name_length")
                if length is not None:
                    length -= rule.get("server_name_length", 0)
                found = (rule.get("budget"), length)
                break
        if len(self._by_client) >= _MAX_REMEMBERED_CLIENTS:
            self._by_client.clear()  # names are the clients' own choice: keep the memo bounded
        self._by_client[client_name] = found
        return found


_rules: _Rules | None = None


def limits_for(settings: Settings, record: NamespaceRecord, client_name: str | None) -> Limits:
    """The limits of one caller of a namespace (see the module's docstring)."""
    global _rules
    if _rules is None or _rules.source is not settings.tool_budgets:
        _rules = _Rules(settings.tool_budgets)
    budget, length = _rules.limits(client_name)
    if record.tool_budget is not None:
        budget = record.tool_budget or None
    if budget is None and length is None:
        return NO_LIMITS
    return Limits(budget, length, record.curated_tools if budget is not None else ())


def view(
    settings: Settings, record: NamespaceRecord, requested: str | None, client_name: str | None
) -> tuple[NameStyle, Limits]:
    """The name style and limits of a caller: what both `tools/list` paths render by."""
    style = choose_style(requested, record.tool_names, settings.tool_names, client_name)
    return style, limits_for(settings, record, client_name)


def meta_names(taken: Callable[[str], object]) -> tuple[str, str]:
    """The names of `search_tools` and `call_tool` in a namespace where `taken(name)` tells
    whether a tool already has that name (in any form)."""
    for prefix in _META_PREFIXES:
        search, call = prefix + SEARCH, prefix + CALL
        if not taken(search) and not taken(call):
            return search, call
    return _META_PREFIXES[-1] + SEARCH, _META_PREFIXES[-1] + CALL


def fit(
    entries: Sequence[tuple[Ref, dict[str, Any]]],
    curated: Iterable[Ref | None],
    budget: int,
    names: tuple[str, str],
) -> list[dict[str, Any]]:
    """The listing of a namespace whose `entries` (connections in id order, each connection's tools
    in its server's order) exceed `budget`: curated, the meta-tools, then round-robin."""
    slots = max(budget - 2, 0)
    by_ref = dict(entries)
    chosen: list[Ref] = []
    for ref in curated:
        if ref is not None and ref in by_ref and ref not in chosen and len(chosen) < slots:
            chosen.append(ref)
    taken = set(chosen)
    queues: dict[str, list[Ref]] = {}
    for ref, _ in entries:
        if ref not in taken:
            queues.setdefault(ref[0], []).append(ref)
    rest: list[Ref] = []
    lanes = [iter(q) for q in queues.values()]
    while lanes and len(chosen) + len(rest) < slots:
        for lane in list(lanes):
            ref = next(lane, None)
            if ref is None:
                lanes.remove(lane)
            elif len(chosen) + len(rest) < slots:
                rest.append(ref)
    listed = [by_ref[ref] for ref in chosen]
    listed += meta_tools(names, total=len(entries), shown=len(chosen) + len(rest))
    listed += sorted((by_ref[ref] for ref in rest), key=lambda t: str(t["name"]))
    return listed


def meta_tools(names: tuple[str, str], *, total: int, shown: int) -> list[dict[str, Any]]:
    """The two meta-tools as `tools/list` entries."""
    search, call = names
    return [
        {
            "name": search,
            "description": (
                f"Find tools of this namespace: {total} tools, of which {total - shown} are not listed "
                "here (the client takes only so many). Matches words of the tools' names and "
                f"descriptions; answers each match's name, description and inputSchema. Call a "
                f"match with {call}."
            ),
            "inputSchema": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Words to look for, e.g. 'create issue'"},
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_RESULTS,
                        "description": f"At most this many tools (default {DEFAULT_RESULTS})",
                    },
                },
                "required": ["query"],
            },
            "annotations": {"readOnlyHint": True},
        },
        {
            "name": call,
            "description": (
                f"Call any tool of this namespace by the name {search} gave, listed or not, with its "
                "arguments."
            ),
            "inputSchema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": f"The tool's name, as {search} gave it"},
                    "arguments": {"type": "object", "description": "The tool's arguments"},
                },
                "required": ["name"],
            },
        },
    ]


def rank(tools: Sequence[dict[str, Any]], query: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The tools matching the words of `query`, best first, and how many matched: a word of a
    tool's name counts most, then a part of its name, a word of its description, a part of it.
    An empty query matches every tool, in listing order."""
    words = _WORD.findall(query.lower())
    scored: list[tuple[int, int, dict[str, Any]]] = []
    for index, tool in enumerate(tools):
        name = str(tool.get("name", "")).lower()
        text = f"{tool.get('title') or ''} {tool.get('description') or ''}".lower()
        name_words, text_words = set(_WORD.findall(name)), set(_WORD.findall(text))
        score = 0
        for word in words:
            score += 4 if word in name_words else 2 if word in name else 0
            score += 2 if word in text_words else 1 if word in text else 0
        if score or not words:
            scored.append((-score, index, tool))
    scored.sort(key=lambda s: (s[0], s[1]))
    found: list[dict[str, Any]] = [
        {k: tool[k] for k in ("name", "title", "description", "inputSchema") if k in tool}
        for _, _, tool in scored[:limit]
    ]
    return found, len(scored)


Inner = Callable[..., Awaitable[dict[str, Any]]]


async def call_meta(
    catalog: Catalog,
    namespace: str,
    principal: Principal,
    name: str,
    arguments: dict[str, Any] | None,
    *,
    style: NameStyle,
    limits: Limits,
    inner: Inner,
    meta: dict[str, Any] | None = None,
    notify: NotificationSink | None = None,
    rpc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`tools/call` of a name in `META_NAMES`: a meta-tool of this namespace, or (a tool that has
    the name, or none) `inner`, the plain `tools/call` (`endpoint.call_for_mcp`)."""
    names = await catalog.meta_names(namespace, principal, rpc)
    if name not in names:
        return await inner(catalog, namespace, principal, name, arguments, meta=meta, notify=notify, rpc=rpc)
    arguments = arguments or {}
    try:
        if name == names[0]:
            return await _search(catalog, namespace, principal, arguments, style, limits, rpc)
        target, target_arguments = arguments.get("name"), arguments.get("arguments")
        if not isinstance(target, str) or not target:
            raise MCPError(-32602, f"{name} needs `name`, the name of a tool (from {names[0]})")
        if target_arguments is not None and not isinstance(target_arguments, dict):
            raise MCPError(-32602, f"{name}: `arguments` must be an object")
        if target in names:
            raise MCPError(-32602, f"{name} calls the namespace's tools: call {target} directly")
        inner_rpc = None
        if rpc is not None:  # what the policy matches, as if the tool had been called directly
            params: dict[str, Any] = {"name": target, "arguments": target_arguments or {}}
            outer = rpc.get("params")
            if isinstance(outer, dict) and "_meta" in outer:
                params["_meta"] = outer["_meta"]
            inner_rpc = {**rpc, "params": params}
        if not principal.admin:
            require_mcp(principal, inner_rpc, namespace)
    except NotFound as exc:
        raise MCPError(-32602, exc.message) from exc
    except JunctionError as exc:
        raise MCPError(exc.jsonrpc_code, exc.message, exc.data) from exc
    return await inner(
        catalog, namespace, principal, target, target_arguments, meta=meta, notify=notify, rpc=inner_rpc
    )


async def _search(
    catalog: Catalog,
    namespace: str,
    principal: Principal,
    arguments: dict[str, Any],
    style: NameStyle,
    limits: Limits,
    rpc: dict[str, Any] | None,
) -> dict[str, Any]:
    query, limit = arguments.get("query", ""), arguments.get("limit", DEFAULT_RESULTS)
    if not isinstance(query, str) or len(query) > MAX_QUERY:
        raise MCPError(-32602, f"search_tools: `query` must be a string of at most {MAX_QUERY} characters")
    if type(limit) is not int or not 1 <= limit <= MAX_RESULTS:
        raise MCPError(-32602, f"search_tools: `limit` must be an integer from 1 to {MAX_RESULTS}")
    # The caller's own view: a metadata-scoped token finds only the tools it may list.
    list_rpc: dict[str, Any] | None = (
        None if rpc is None else {"jsonrpc": "2.0", "id": rpc.get("id"), "method": "tools/list", "params": {}}
    )
    if not principal.admin:
        require_mcp(principal, list_rpc, namespace)
    tools = await catalog.tool_dicts(
        namespace, principal, style, list_rpc, limits=Limits(max_length=limits.max_length)
    )
    found, total = rank(tools, query, limit)
    structured = {"tools": found, "total": total}
    text = json.dumps(structured, ensure_ascii=False)
    return {"content": [{"type": "text", "text": text}], "structuredContent": structured}
