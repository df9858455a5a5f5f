"""What a server needs configured, and what a connection still lacks (`input_required`).

A server declares a JSON Schema whose properties say where each value comes from: `x-from`
`{"header": name}` or `{"query": name}` (default: the query parameter named like the property),
and optionally where it goes upstream (`x-to`, default: the same place). Query values live in the
connection's `mcpUrl`, header values in its write-only `headers`. Schemas come from the catalog in
`config.toml` or from the upstream's `/.well-known/mcp-config`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import httpx2

from proxy.errors import ValidationFailed

# Headers the gateway itself sets on every upstream request: no value may replace them.
MANAGED_HEADERS = {
    "host", "content-length", "content-type", "accept", "connection", "transfer-encoding",
    "mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name", "upgrade", "te", "trailer",
}  # fmt: skip
Place = Literal["header", "query"]
MAX_SCHEMA_BYTES = 16 * 1024
MAX_FIELDS = 50
_SCALARS = ("string", "number", "integer", "boolean")


@dataclass(frozen=True)
class ConfigField:
    """One configurable value: where the client supplies it and where the upstream gets it."""

    name: str
    place: Place
    key: str
    to_place: Place
    to_key: str
    label: str
    description: str | None
    required: bool
    type: str
    choices: tuple[str, ...] = ()

    @property
    def secret(self) -> bool:
        """Header values are credentials: never shown, typed into password inputs."""
        return self.place == "header"


def _location(value: Any, default: tuple[Place, str], what: str) -> tuple[Place, str]:
    if value is None:
        return default
    if isinstance(value, dict) and len(value) == 1:
        ((place, key),) = value.items()
        if place in ("header", "query") and isinstance(key, str) and 0 < len(key) <= 256:
            if place == "header" and not all(c.isalnum() or c in "-_." for c in key):
                raise ValidationFailed(f"config schema: {what} header {key[:64]!r} is not a header name")
            if place == "header" and key.lower() in MANAGED_HEADERS:
                raise ValidationFailed(f"config schema: {what} header {key!r} is set by the gateway itself")
            return place, key
    raise ValidationFailed(f'config schema: {what} must be {{"header": name}} or {{"query": name}}')


def parse_schema(schema: Any) -> tuple[ConfigField, ...]:
    """The fields of a config schema; `ValidationFailed` when it is not one we can serve."""
    if not isinstance(schema, dict):
        raise ValidationFailed("config schema must be a JSON object")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValidationFailed(f"config schema must be at most {MAX_SCHEMA_BYTES} bytes of JSON")
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise ValidationFailed("config schema: properties must be an object and required a list")
    if len(properties) > MAX_FIELDS:
        raise ValidationFailed(f"config schema: at most {MAX_FIELDS} properties")
    fields: list[ConfigField] = []
    seen: set[tuple[str, str]] = set()
    for name, spec in properties.items():
        if not isinstance(spec, dict):
            raise ValidationFailed(f"config schema: property {name[:64]!r} must be an object")
        kind = spec.get("type", "string")
        if kind not in _SCALARS:
            continue  # objects and lists cannot travel in a header or query parameter
        place, key = _location(spec.get("x-from"), ("query", name), f"{name[:64]}.x-from")
        to_place, to_key = _location(spec.get("x-to"), (place, key), f"{name[:64]}.x-to")
        if (place, key.lower() if place == "header" else key) in seen:
            raise ValidationFailed(f"config schema: two properties read {place} {key[:64]!r}")
        seen.add((place, key.lower() if place == "header" else key))
        enum = spec.get("enum")
        fields.append(
            ConfigField(
                name=name,
                place=place,
                key=key,
                to_place=to_place,
                to_key=to_key,
                label=str(spec.get("title") or name)[:200],
                description=str(spec["description"])[:1000] if spec.get("description") else None,
                required=name in required,
                type=kind,
                choices=tuple(str(v) for v in enum) if isinstance(enum, list) else (),
            )
        )
    return tuple(fields)


def http_spec(fields: tuple[ConfigField, ...]) -> dict[str, dict[str, Any]]:
    """The `http` object of an `input_required` status: every field by where it is supplied."""
    spec: dict[str, dict[str, Any]] = {"headers": {}, "query": {}}
    for f in fields:
        entry: dict[str, Any] = {"label": f.label, "required": f.required}
        if f.description:
            entry["description"] = f.description
        if f.choices:
            entry["enum"] = list(f.choices)  # (beyond Smithery's shape) what a form may offer
        spec["headers" if f.place == "header" else "query"][f.key] = entry
    return spec


def missing(fields: tuple[ConfigField, ...], url: str, header_names: tuple[str, ...]) -> dict[str, list[str]]:
    """The required fields the connection was not given."""
    query = {k for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if v != ""}
    headers = {h.lower() for h in header_names}
    out: dict[str, list[str]] = {"headers": [], "query": []}
    for f in fields:
        if not f.required:
            continue
        if f.place == "header" and f.key.lower() not in headers:
            out["headers"].append(f.key)
        elif f.place == "query" and f.key not in query:
            out["query"].append(f.key)
    return out


def input_required(
    fields: tuple[ConfigField, ...], url: str, header_names: tuple[str, ...], setup_url: str
) -> dict[str, Any] | None:
    """The `input_required` status of a connection, or None when nothing required is missing."""
    lacking = missing(fields, url, header_names)
    if not lacking["headers"] and not lacking["query"]:
        return None
    return {"state": "input_required", "setupUrl": setup_url, "http": http_spec(fields), "missing": lacking}


def upstream_request(
    fields: tuple[ConfigField, ...], url: str, headers: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """Where each value goes upstream (`x-to`): the URL and headers to send."""
    moved = [f for f in fields if (f.place, f.key) != (f.to_place, f.to_key)]
    if not moved:
        return url, headers
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    out_headers = dict(headers)
    for f in moved:
        if f.place == "query":
            values = [v for k, v in query if k == f.key]
            query = [(k, v) for k, v in query if k != f.key]
        else:
            found = [k for k in out_headers if k.lower() == f.key.lower()]
            values = [out_headers.pop(k) for k in found]
        if not values or any(c < " " or c == "\x7f" for c in values[0]):
            continue  # nothing given, or a value no header line may carry
        if f.to_place == "query":
            query.append((f.to_key, values[0]))
        else:
            out_headers[f.to_key] = values[0]
    return urlunsplit(parts._replace(query=urlencode(query))), out_headers


def same_target(current: str, new: str) -> bool:
    """While `input_required`, `mcpUrl` may change its query, not its scheme, host or path."""
    a, b = urlsplit(current), urlsplit(new)
    return (a.scheme, a.netloc.lower(), a.path) == (b.scheme, b.netloc.lower(), b.path) and not b.fragment


async def fetch_schema(http: httpx2.AsyncClient, mcp_url: str) -> dict[str, Any] | None:
    """The upstream's `/.well-known/mcp-config` schema, or None (absent, unreachable, invalid)."""
    parts = urlsplit(mcp_url)
    url = f"{parts.scheme}://{parts.netloc}/.well-known/mcp-config"
    try:
        with anyio.fail_after(3):  # a server slow to say it has no schema must not hold up creation
            async with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    return None
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_SCHEMA_BYTES:
                        return None
        schema = json.loads(body)
        parse_schema(schema)
    except Exception:  # unreachable, refused by the SSRF policy, slow, not JSON, not a schema: none
        return None
    return schema if isinstance(schema, dict) else None
