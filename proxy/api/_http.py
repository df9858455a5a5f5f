"""Request parsing and response helpers shared by the REST endpoints."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from proxy.auth.policy import Principal
from proxy.errors import InvalidJSON, JunctionError, PayloadTooLarge, ValidationFailed
from proxy.state import Gateway

PRINCIPAL_KEY = "junction.principal"


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def principal(request: Request) -> Principal:
    return request.scope[PRINCIPAL_KEY]  # type: ignore[no-any-return]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error_response(exc: JunctionError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing anything over `limit` bytes before reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_asgi_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """`read_body` for plain ASGI callables (no Request object on the hot path)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def read_json_object(request: Request, *, empty_ok: bool = True) -> dict[str, Any]:
    """The body as a JSON object (an empty body counts as `{}` when `empty_ok`)."""
    body = await read_body(request, gateway(request).settings.max_body_bytes)
    if not body.strip():
        if empty_ok:
            return {}
        raise InvalidJSON("request body is empty; send a JSON object")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidJSON("request body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ValidationFailed("request body must be a JSON object")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValidationFailed(f"{name} must be an integer between {low} and {high}") from exc
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be an integer between {low} and {high}")
    return value
