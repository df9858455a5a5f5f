"""`/namespaces`: page-numbered listing, create, upsert, delete.

A namespace's settings: `toolNames` (the name style of its MCP endpoint), `toolBudget` (how many
tools its `tools/list` shows: null follows the client's default from `tool_budgets`, 0 never
limits, 3 or more limits every client) and `curatedTools` (tools always listed first when the list
is limited, by exposed or dotted name; names of tools that do not exist yet are kept). A field left
out of a PUT keeps its value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.api._http import gateway, int_param, iso, json_response, principal, read_json_object
from proxy.auth.policy import allows, require
from proxy.errors import ValidationFailed
from proxy.names import generate_namespace
from proxy.store import NamespaceRecord

MAX_TOOL_BUDGET = 10_000
MAX_CURATED = 200
MAX_TOOL_NAME = 300
_FIELDS = {"toolNames", "name", "toolBudget", "curatedTools"}
_UNSET: Any = object()


def namespace_json(record: NamespaceRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "createdAt": iso(record.created_at),
        "toolNames": record.tool_names,
        "toolBudget": record.tool_budget,
        "curatedTools": list(record.curated_tools),
    }


@dataclass(frozen=True)
class NamespaceSettings:
    """The settings a request body gives; `_UNSET` where it leaves one out."""

    tool_names: str | None = None
    tool_budget: Any = field(default=_UNSET)
    curated_tools: Any = field(default=_UNSET)


def _settings(body: dict[str, Any]) -> NamespaceSettings:
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
    budget = body.get("toolBudget", _UNSET)
    if budget is not _UNSET and budget is not None:
        if type(budget) is not int or not (budget == 0 or 3 <= budget <= MAX_TOOL_BUDGET):
            raise ValidationFailed(
                "toolBudget must be null (the client's default), 0 (never limited) or an integer "
                f"from 3 to {MAX_TOOL_BUDGET} (two of them are the search_tools and call_tool meta-tools)"
            )
    curated = body.get("curatedTools", _UNSET)
    if curated is None:
        curated = ()
    elif curated is not _UNSET:
        if not isinstance(curated, list) or len(curated) > MAX_CURATED:
            raise ValidationFailed(f"curatedTools must be a list of at most {MAX_CURATED} tool names")
        for item in curated:
            if not isinstance(item, str) or not 1 <= len(item) <= MAX_TOOL_NAME or not item.isprintable():
                raise ValidationFailed(
                    f"curatedTools: each entry must be a tool name of 1 to {MAX_TOOL_NAME} printable "
                    "characters, as tools/list shows it or dotted (<connectionId>.<tool>)"
                )
        if len(set(curated)) != len(curated):
            raise ValidationFailed("curatedTools lists a tool twice")
        curated = tuple(curated)
    return NamespaceSettings(_tool_names(body), budget, curated)


async def _save(request: Request, name: str, wanted: NamespaceSettings) -> tuple[NamespaceRecord, bool]:
    """Create or update the namespace with the settings given; the others keep their values."""
    directory = gateway(request).directory
    record, created = await directory.create_namespace(name, wanted.tool_names)
    budget = record.tool_budget if wanted.tool_budget is _UNSET else wanted.tool_budget
    curated = record.curated_tools if wanted.curated_tools is _UNSET else wanted.curated_tools
    if (budget, curated) != (record.tool_budget, record.curated_tools):
        await gateway(request).store.set_namespace_budget(name, budget, curated)
        # Read back through the directory, so its cached record (and every listing) has them.
        record, _ = await directory.create_namespace(name, None)
    return record, created


async def list_namespaces(request: Request) -> Response:
    caller = principal(request)
    require(caller, "read", "namespaces")
    page = int_param(request, "page", 1, 1, 1_000_000)
    page_size = int_param(request, "pageSize", 50, 1, 100)
    records, total = await gateway(request).directory.list_namespaces(
        page,
        page_size,
        names=caller.namespace_bound(),
        visible=None if caller.admin else lambda r: allows(caller, "read", "namespaces", r.name),
    )
    return json_response(
        {
            "namespaces": [namespace_json(r) for r in records],
            "pagination": {
                "currentPage": page,
                "pageSize": page_size,
                "totalPages": math.ceil(total / page_size) if total else 0,
                "totalCount": total,
            },
        }
    )


def _tool_names(body: dict[str, Any]) -> str | None:
    value = body.get("toolNames")
    if value is not None and value not in ("auto", "dotted", "safe", "bare"):
        raise ValidationFailed("toolNames must be one of auto, dotted, safe, bare")
    return value


async def create_namespace(request: Request) -> Response:
    body = await read_json_object(request)
    name = body.get("name")
    if name is None:
        name = generate_namespace()
    if not isinstance(name, str):
        raise ValidationFailed("name must be a string")
    require(principal(request), "write", "namespaces", name)
    record, _ = await _save(request, name, _settings(body))
    return json_response(namespace_json(record), 201)


async def put_namespace(request: Request) -> Response:
    name = request.path_params["name"]
    require(principal(request), "write", "namespaces", name)
    body = await read_json_object(request)
    wanted = _settings(body)
    if body.get("name", name) != name:
        raise ValidationFailed("name in the body differs from the one in the path")
    record, created = await _save(request, name, wanted)
    return json_response(namespace_json(record), 201 if created else 200)


async def get_namespace(request: Request) -> Response:
    name = request.path_params["name"]
    require(principal(request), "read", "namespaces", name)
    record = await gateway(request).directory.namespace(name)
    return json_response(namespace_json(record))


async def delete_namespace(request: Request) -> Response:
    name = request.path_params["name"]
    require(principal(request), "write", "namespaces", name)
    directory = gateway(request).directory
    await directory.delete_namespace(name)
    return json_response({"success": True, "name": name})
