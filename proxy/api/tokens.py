"""`/tokens`: mint (with an API key or a service token), list and revoke service tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.api._http import gateway, iso, json_response, principal, read_json_object
from proxy.auth.constraints import parse_ttl
from proxy.auth.policy import require
from proxy.errors import ValidationFailed
from proxy.store import ServiceTokenRecord


def token_json(record: ServiceTokenRecord) -> dict[str, Any]:
    """A token as listed: what it may do and until when, never the token itself."""
    return {
        "id": record.id,
        "parentId": record.parent_id,
        "policy": [_constraint_json(c) for c in record.policy],
        "createdAt": iso(record.created_at),
        "expiresAt": iso(record.expires_at),
    }


def _constraint_json(claim: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in claim.items() if k != "exp"}
    out["expiresAt"] = iso(datetime.fromtimestamp(claim["exp"], UTC))
    return out


async def create_token(request: Request) -> Response:
    caller = principal(request)
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"policy", "ttl"})
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(unknown)[:200]}; a token takes policy (and ttl)"
        )
    ttl = parse_ttl(body["ttl"]) if body.get("ttl") is not None else None
    minted = await gateway(request).tokens.mint(caller, body.get("policy"), ttl)
    return json_response(
        {"token": minted.token, "expiresAt": iso(minted.record.expires_at), "id": minted.record.id}
    )


async def list_tokens(request: Request) -> Response:
    caller = principal(request)
    records = await gateway(request).tokens.list(caller)
    return json_response({"tokens": [token_json(r) for r in records]})


async def revoke_token(request: Request) -> Response:
    caller = principal(request)
    await gateway(request).tokens.revoke(caller, request.path_params["token_id"])
    return json_response({"success": True})


async def rotate_signing_key(request: Request) -> Response:
    require(principal(request), "write", "keys")
    kid = await gateway(request).tokens.rotate()
    return json_response({"kid": kid})
