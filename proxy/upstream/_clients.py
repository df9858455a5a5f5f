"""The httpx2 clients the SDK path reaches upstreams with, and what they notice on the way.

Every socket goes to an address the SSRF policy checked (`pinned_transport`), credentials come
from the one `Credentials` hook (`CredentialsAuth`), and a response hook records the upstream's
session id and whether the upstream forgot it (by the rule in `proxy.wire`), so a request it
never executed can be sent again on a new session.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2

from proxy import wire
from proxy.upstream._pinned import pinned_transport


@dataclass
class WireState:
    """What the SDK path's HTTP client saw: the session id, and whether the upstream forgot it."""

    session_ids: list[str] = field(default_factory=list)
    session_lost: bool = False


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every upstream client: building one costs ~20 ms of CPU."""
    return ssl.create_default_context()


def streamable_http_client_for(
    config: Any, auth: httpx2.Auth, state: WireState, *, allow_private: bool, max_connections: int
) -> httpx2.AsyncClient:
    """The client of one Streamable HTTP upstream session (`config` is an `UpstreamConfig`)."""

    async def watch_session(response: httpx2.Response) -> None:
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            state.session_ids.append(session_id)
        status = response.status_code
        if status in (400, 404) and "mcp-session-id" in response.request.headers:
            message: wire.Message | None = None
            if status == 400 and response.headers.get("content-type", "").startswith("application/json"):
                # Read now (httpx keeps the bytes for the SDK) to see what the error is about.
                with contextlib.suppress(wire.WireError, httpx2.HTTPError):
                    message = wire.decode(await response.aread())
            if wire.session_expired(status, message):
                state.session_lost = True

    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=64)
    return httpx2.AsyncClient(
        transport=pinned_transport(allow_private, verify=tls_context(), limits=limits),
        auth=auth,
        timeout=httpx2.Timeout(
            config.connect_timeout, read=max(config.call_timeout, config.list_timeout) + 5
        ),
        follow_redirects=False,
        event_hooks={"response": [watch_session]},
    )


def sse_http_client(
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
    *,
    allow_private: bool = False,
    state: WireState | None = None,
) -> httpx2.AsyncClient:
    """A client for the HTTP+SSE transport (the SDK's `httpx_client_factory` signature)."""
    transport = pinned_transport(allow_private, verify=tls_context())
    hooks: dict[str, list[Callable[..., Any]]] = (
        {"response": [functools.partial(_watch_sse_session, state)]} if state is not None else {}
    )
    return httpx2.AsyncClient(
        transport=transport, headers=headers, timeout=timeout, auth=auth, event_hooks=hooks
    )


async def _watch_sse_session(state: WireState, response: httpx2.Response) -> None:
    """HTTP+SSE transport: a POST to the session's message URL that the upstream answers 404 (or
    400 about the session) means it forgot the session (a restart); the message was not handled."""
    status = response.status_code
    if response.request.method != "POST" or status not in (400, 404):
        return
    if status == 400:
        with contextlib.suppress(httpx2.HTTPError):
            if not wire.about_session(await response.aread()):
                return
    state.session_lost = True
