"""Request parsing and response helpers shared by the REST endpoints (and the MCP ones' edges)."""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from proxy import wirejson
from proxy.auth.policy import Principal
from proxy.errors import InvalidJSON, JunctionError, PayloadTooLarge, ValidationFailed
from proxy.state import Gateway

PRINCIPAL_KEY = "junction.principal"


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def principal(request: Request) -> Principal:
    return request.scope[PRINCIPAL_KEY]  # type: ignore[no-any-return]


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # wirejson.dumps: valid JSON in valid UTF-8 even for a lone surrogate or a NaN in stored data.
    return Response(
        wirejson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


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


def parse_json(body: bytes) -> Any:
    """The value of a request body, held to strict JSON (no NaN, Infinity or lone surrogates)."""
    try:
        return wirejson.loads_strict(body)
    except ValueError as exc:  # UnicodeDecodeError and orjson's errors are ValueErrors
        raise InvalidJSON(
            "request body is not valid JSON (UTF-8; NaN, Infinity and lone surrogate escapes are not JSON)"
        ) from exc


async def read_json_object(request: Request, *, empty_ok: bool = True) -> dict[str, Any]:
    """The body as a JSON object (an empty body counts as `{}` when `empty_ok`)."""
    body = await read_body(request, gateway(request).settings.max_body_bytes)
    if not body.strip():
        if empty_ok:
            return {}
        raise InvalidJSON("request body is empty; send a JSON object")
    value = parse_json(body)
    if not isinstance(value, dict):
        raise ValidationFailed("request body must be a JSON object")
    return value


def json_rpc_errors(send: Send) -> Send:
    """A `send` that turns an error answer that is not JSON (the MCP SDK's plain-text 400 for a
    wrong Content-Type, its 413) into a JSON-RPC error with the same status: an MCP client always
    gets a body it can parse. Other answers, streams included, pass through as they are."""
    start: Message | None = None
    chunks: list[bytes] = []
    passing = False

    async def sending(message: Message) -> None:
        nonlocal start, passing
        if passing:
            await send(message)
        elif message["type"] == "http.response.start":
            headers = message.get("headers", ())
            if message["status"] < 400 or _is_json(headers):
                passing = True
                await send(message)
            else:
                start = message
        elif message["type"] == "http.response.body" and start is not None:
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                passing = True
                await _send_rpc_error(send, start, b"".join(chunks))
        else:
            await send(message)

    return sending


def _is_json(headers: Any) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            media = value.split(b";")[0].strip().lower()
            return bool(media == b"application/json" or media.endswith(b"+json"))
    return False


async def _send_rpc_error(send: Send, start: Message, body: bytes) -> None:
    status: int = start["status"]
    text = " ".join(body.decode("utf-8", "replace").split())[:500]
    if not text:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = f"HTTP {status}"
    code = -32603 if status >= 500 else -32600
    payload = wirejson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": text}})
    headers = [
        (name, value)
        for name, value in start.get("headers", ())
        if name.lower() not in (b"content-type", b"content-length")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


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
