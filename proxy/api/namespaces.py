"""`/namespaces`: page-numbered listing, create, upsert, delete."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.api._http import gateway, int_param, iso, json_response, principal, read_json_object
from proxy.auth.policy import allows, require
from proxy.errors import ValidationFailed
from proxy.names import generate_namespace
from proxy.store import NamespaceRecord


def namespace_json(record: NamespaceRecord) -> dict[str, Any]:
    return {"name": record.name, "createdAt": iso(record.created_at), "toolNames": record.tool_names}


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
    unknown = sorted(set(body) - {"toolNames", "name"})
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}")
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
    record, _ = await gateway(request).directory.create_namespace(name, _tool_names(body))
    return json_response(namespace_json(record), 201)


async def put_namespace(request: Request) -> Response:
    name = request.path_params["name"]
    require(principal(request), "write", "namespaces", name)
    body = await read_json_object(request)
    tool_names = _tool_names(body)
    if body.get("name", name) != name:
        raise ValidationFailed("name in the body differs from the one in the path")
    record, created = await gateway(request).directory.create_namespace(name, tool_names)
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
