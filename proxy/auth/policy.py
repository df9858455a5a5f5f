"""THE scope check. Every surface (REST, the MCP endpoints, direct tool calls) asks `allows()`.

A caller is a `Principal`. An admin API key may do everything except what no credential may do.
A service token carries a chain of policies, one per level of minting (the API key's grant, then
each narrowing): a request must pass *every* level, so a token minted from another can never do
more than its parent, by construction rather than by a subset algorithm. A policy is a tuple of
`Constraint`s that are alternatives; within a constraint every field present narrows.

Questions about "some record" use `ANY`: `metadata=ANY` asks whether the caller may act on *some*
connection of a namespace (the gate of a list, which then filters rows by their own metadata);
`rpc=ANY` asks whether *some* MCP request could pass `rpcReqMatch` (the gate of an MCP endpoint).
`rpc=None` means the request is not an MCP request (REST management), which a constraint with
`rpcReqMatch` never grants.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from proxy.errors import Forbidden, NotFound

Operation = Literal["read", "write", "execute"]
Resource = Literal["namespaces", "connections", "servers", "skills", "keys"]
OPERATIONS: Final = ("read", "write", "execute")
# What a constraint may name. `keys` is for admin API keys only. Tokens are not a resource: any
# credential may mint, list and revoke tokens, bounded by its own chain (`proxy/auth/tokens.py`).
RESOURCES: Final = ("connections", "servers", "namespaces", "skills")


class _Any:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()
"""Stands for "some record" or "some MCP request" in a question to `allows()`."""

Matcher = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Constraint:
    """One grant: every field that is not None narrows it; `expires` is a Unix time."""

    namespaces: frozenset[str] | None = None
    resources: frozenset[str] | None = None
    operations: frozenset[str] | None = None
    # Alternatives, each a set of (key, value) pairs that must all be in a connection's metadata.
    metadata: tuple[tuple[tuple[str, str], ...], ...] | None = None
    # (dot path split into keys, matcher of the value there); all must match.
    rpc: tuple[tuple[tuple[str, ...], Matcher], ...] | None = None
    expires: float = float("inf")

    def grants(
        self,
        operations: tuple[str, ...],
        resource: str,
        namespace: str | None,
        metadata: Mapping[str, Any] | _Any,
        rpc: Mapping[str, Any] | _Any | None,
        now: float,
    ) -> bool:
        if now >= self.expires:
            return False
        if self.namespaces is not None and namespace is not None and namespace not in self.namespaces:
            return False
        if self.resources is not None and resource not in self.resources:
            return False
        if self.operations is not None and self.operations.isdisjoint(operations):
            return False
        if self.metadata is not None:
            if resource != "connections":
                return False  # only connections carry metadata
            if metadata is not ANY and not any(
                all(_text(metadata.get(k)) == v for k, v in alternative)  # type: ignore[union-attr]
                for alternative in self.metadata
            ):
                return False
        if self.rpc is not None:
            if rpc is None:
                return False  # not an MCP request: a constraint on MCP requests does not grant it
            if rpc is not ANY and not all(match(_at(rpc, path)) for path, match in self.rpc):  # type: ignore[arg-type]
                return False
        return True


Policy = tuple[Constraint, ...]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `key_id` is the API key that began the chain (revoking it ends every token minted under it);
    `policies` is the chain (empty for an API key: full rights); `token_ids` holds this token's id
    and its ancestors' (revoking any of them ends this one).
    """

    kind: Literal["api_key", "service_token", "oauth"]
    id: str
    name: str
    key_id: str = ""
    policies: tuple[Policy, ...] = ()
    token_ids: tuple[str, ...] = ()
    expires_at: float = float("inf")
    # The chain as the token carries it (claims), to sign into the tokens it mints.
    claims: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    # OAuth access tokens: the resource (RFC 8707) they were issued for, the namespace chosen at
    # consent (what `/mcp` serves), the client they were issued to, and the granted scope.
    audience: str | None = None
    namespace: str | None = None
    client_id: str | None = None
    scope: str | None = None

    @property
    def admin(self) -> bool:
        return self.kind == "api_key"

    def namespace_bound(self) -> frozenset[str] | None:
        """A superset of the namespaces this caller may touch at all (None: no bound), for
        queries that should not fetch what `allows()` will then hide."""
        bound: frozenset[str] | None = None
        for policy in self.policies:
            level: set[str] = set()
            for constraint in policy:
                if constraint.namespaces is None:
                    break
                level |= constraint.namespaces
            else:
                bound = frozenset(level) if bound is None else bound & level
        return bound


def allows(
    principal: Principal,
    operation: Operation | tuple[Operation, ...],
    resource: Resource,
    namespace: str | None = None,
    metadata: Mapping[str, Any] | _Any = ANY,
    rpc: Mapping[str, Any] | _Any | None = None,
) -> bool:
    """May `principal` perform `operation` (any of several, when a tuple) on `resource`, in
    `namespace`, on a connection with `metadata`, for the MCP request `rpc`?"""
    if principal.kind == "api_key":
        return True
    if resource == "keys":
        return False
    now = time.time()
    if now >= principal.expires_at:
        return False
    operations = (operation,) if isinstance(operation, str) else operation
    for policy in principal.policies:
        for constraint in policy:
            if constraint.grants(operations, resource, namespace, metadata, rpc, now):
                break
        else:
            return False
    return True


def require(
    principal: Principal,
    operation: Operation | tuple[Operation, ...],
    resource: Resource,
    namespace: str | None = None,
    metadata: Mapping[str, Any] | _Any = ANY,
    rpc: Mapping[str, Any] | _Any | None = None,
    connection_id: str | None = None,
) -> None:
    """Raise unless allowed. A connection a caller may not see does not exist for it: the same
    404 as a missing one. One it may see but not act on this way is a 403."""
    if allows(principal, operation, resource, namespace, metadata, rpc):
        return
    if (
        resource == "connections"
        and isinstance(metadata, Mapping)
        and not visible(principal, namespace, metadata)
    ):
        raise NotFound.connection(namespace, connection_id)
    ops = operation if isinstance(operation, str) else " or ".join(operation)
    if rpc is not None and rpc is not ANY:
        raise Forbidden(f"this credential's policy does not allow this request ({_method(rpc)})")
    where = f" in namespace {namespace!r}" if namespace else ""
    raise Forbidden(f"this credential may not {ops} {resource}{where}")


def visible(principal: Principal, namespace: str | None, metadata: Mapping[str, Any]) -> bool:
    """Whether a connection exists for `principal`: it may read it, or list its tools."""
    return allows(principal, LIST, "connections", namespace, metadata, ANY)


# --- MCP requests --------------------------------------------------------------------------
# Messages that ask nothing of an upstream: allowed to anyone who may use the endpoint at all.
LIFECYCLE: Final = frozenset(
    {
        "initialize",
        "ping",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    }
)
USE: Final[tuple[Operation, ...]] = ("read", "write", "execute")
LIST: Final[tuple[Operation, ...]] = ("read", "execute")
CALL: Final[tuple[Operation, ...]] = ("execute",)


def mcp_operations(method: object) -> tuple[Operation, ...] | None:
    """The operations an MCP method needs on a connection; None for lifecycle messages (and for
    responses to the server's own requests, which carry no method)."""
    if not isinstance(method, str) or method in LIFECYCLE:
        return None
    if method.endswith("/list"):
        return LIST
    return CALL


def require_mcp(
    principal: Principal,
    message: Mapping[str, Any] | None,
    namespace: str,
    metadata: Mapping[str, Any] | _Any = ANY,
    connection_id: str | None = None,
) -> None:
    """The gate of an MCP endpoint, for one JSON-RPC message (None: a GET stream or a DELETE)."""
    operations = mcp_operations(message.get("method")) if message is not None else None
    if operations is None:
        require(principal, USE, "connections", namespace, metadata, ANY, connection_id)
    else:
        require(principal, operations, "connections", namespace, metadata, message, connection_id)


def tool_call_request(name: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON-RPC request a REST tool call stands for (what `rpcReqMatch` is matched against)."""
    return {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": name, "arguments": arguments or {}}}


TOOLS_LIST_REQUEST: Final = {"jsonrpc": "2.0", "method": "tools/list", "params": {}}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


MAX_MATCHED_TEXT: Final = 64 * 1024


def _at(message: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The value at a dot path as text: a string as it is, a number or boolean as JSON. Objects,
    lists, nulls, missing values and strings over 64 KiB match no pattern (so one request cannot
    make the policy serialize or scan megabytes once per pattern and connection)."""
    value: Any = message
    for key in path:
        if isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    if isinstance(value, str):
        return value if len(value) <= MAX_MATCHED_TEXT else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # over Python's digit limit for int-to-text
            return None
    if isinstance(value, float):
        return orjson.dumps(value).decode()
    return None


def _method(rpc: Any) -> str:
    method = rpc.get("method") if isinstance(rpc, Mapping) else None
    return str(method)[:100] if isinstance(method, str) else "a JSON-RPC message"
