"""THE scope check. Every surface (REST, MCP endpoints, direct tool calls) asks `allows()`.

Today every credential is an API key with full rights; service tokens will carry constraints
(namespaces, resources, operations, metadata) and be evaluated here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.errors import Forbidden, NotFound

Operation = Literal["read", "write", "execute"]
Resource = Literal["namespaces", "connections", "keys", "servers"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    kind: Literal["api_key"]
    id: str
    name: str
    admin: bool = True
    constraints: tuple[Mapping[str, Any], ...] = field(default=())


def allows(
    principal: Principal,
    operation: Operation,
    resource: Resource,
    namespace: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bool:
    """May `principal` perform `operation` on `resource` (in `namespace`, on a connection with `metadata`)?"""
    if principal.kind == "api_key" and principal.admin:
        return True
    return False


def require(
    principal: Principal,
    operation: Operation,
    resource: Resource,
    namespace: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Raise unless allowed. Connections a caller may not see do not exist for it (404, not 403)."""
    if allows(principal, operation, resource, namespace, metadata):
        return
    if resource == "connections" and metadata is not None:
        raise NotFound("connection not found")
    raise Forbidden(f"this credential may not {operation} {resource}")
