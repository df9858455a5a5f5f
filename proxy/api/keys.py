"""`/keys`: admin API keys (shown once, stored as hashes)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.api._http import gateway, iso, json_response, principal, read_json_object
from proxy.auth.policy import require
from proxy.errors import NotFound, ValidationFailed


async def list_keys(request: Request) -> Response:
    require(principal(request), "read", "keys")
    records = await gateway(request).keys.list()
    return json_response(
        {
            "keys": [
                {
                    "id": r.id,
                    "name": r.name,
                    "prefix": r.prefix,
                    "createdAt": iso(r.created_at),
                    "lastUsedAt": iso(r.last_used_at),
                }
                for r in records
            ]
        }
    )


async def create_key(request: Request) -> Response:
    require(principal(request), "write", "keys")
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"name"})
    if unknown:
        raise ValidationFailed(f"unknown field(s): {', '.join(unknown)}; a key takes only a name")
    name = body.get("name", "api key")
    if not isinstance(name, str) or not 1 <= len(name) <= 255:
        raise ValidationFailed("name must be a string of 1-255 characters")
    issued = await gateway(request).keys.create(name)
    r = issued.record
    return json_response(
        {"id": r.id, "name": r.name, "prefix": r.prefix, "createdAt": iso(r.created_at), "key": issued.key},
        201,
    )


async def revoke_key(request: Request) -> Response:
    require(principal(request), "write", "keys")
    key_id = request.path_params["key_id"]
    if not await gateway(request).keys.revoke(key_id):
        raise NotFound(f"API key {key_id!r} not found")
    return json_response({"success": True})
