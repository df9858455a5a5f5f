"""Contract tests: one per private SDK or uvicorn internal the gateway relies on.

Each fails loudly, naming what changed, when an upgrade of `mcp`, `uvicorn` or `httptools` moves
something we touch (`proxy/_sdk.py`, `proxy/httpserver.py`, the fast path's disconnect watch).
The httpx2 transport internal has its own in tests/test_ssrf_pinning.py. The version ranges in
pyproject.toml are the ones these passed with.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import anyio
import httpx2
import mcp_types.version as sdk_versions
import pytest
from mcp import Client
from mcp.server import Server
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.jsonrpc import CONNECTION_CLOSED
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy import _sdk, wire
from proxy.httpserver import GatewayHttpProtocol

pytestmark = pytest.mark.anyio


def test_the_wire_module_knows_the_sdks_protocol_versions() -> None:
    assert wire.MODERN_VERSIONS == tuple(sdk_versions.MODERN_PROTOCOL_VERSIONS)
    assert wire.HANDSHAKE_VERSIONS == tuple(sdk_versions.HANDSHAKE_PROTOCOL_VERSIONS)


async def test_the_session_manager_keeps_live_sessions_and_owners_where_the_fast_path_reads_them() -> None:
    manager = StreamableHTTPSessionManager(app=Server("contract"))
    assert isinstance(_sdk.live_sessions(manager), dict), (
        "StreamableHTTPSessionManager._server_instances moved"
    )
    assert _sdk.session_owner(manager, "nope") is None, "StreamableHTTPSessionManager._session_owners moved"
    # The fast path reads these attributes of a live legacy session's transport.
    transport = StreamableHTTPServerTransport(mcp_session_id="s")
    assert hasattr(transport, "is_terminated"), "StreamableHTTPServerTransport.is_terminated moved"
    assert hasattr(transport, "idle_scope"), "StreamableHTTPServerTransport.idle_scope moved"
    assert hasattr(manager, "session_idle_timeout")


def test_the_sdk_still_names_a_closed_connection_as_the_pool_expects() -> None:
    from mcp.shared import jsonrpc_dispatcher

    closed = jsonrpc_dispatcher._CLOSED_OUTCOME  # noqa: SLF001
    assert (closed.code, closed.message) == (CONNECTION_CLOSED, _sdk.CONNECTION_CLOSED_MESSAGE)


async def test_a_client_whose_stream_ended_is_seen_as_closed() -> None:
    # The real thing: an in-process server whose connection we close under the client.
    server = Server("contract")
    async with Client(server) as client:
        assert _sdk.client_closed(client) is False, (
            "ClientSession._dispatcher._closed moved or changed meaning"
        )
        dispatcher = client.session._dispatcher  # noqa: SLF001
        assert hasattr(dispatcher, "_closed")
    assert _sdk.client_closed(client) is True


def test_uvicorn_still_has_what_the_gateway_protocol_overrides_and_calls() -> None:
    for name in (
        "connection_made",
        "data_received",
        "on_message_begin",
        "on_headers_complete",
        "_unset_keepalive_if_required",
        "send_400_response",
        "_should_upgrade",
        "handle_websocket_upgrade",
        "_unsupported_upgrade_warning",
    ):
        assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn's HttpToolsProtocol.{name} is gone"
    assert issubclass(GatewayHttpProtocol, HttpToolsProtocol)
    # data_received is copied from uvicorn with the head count added: flag a change to the original.
    source = inspect.getsource(HttpToolsProtocol.data_received)
    for needle in ("self._unset_keepalive_if_required()", "self.parser.feed_data(data)", "HttpParserUpgrade"):
        assert needle in source, f"uvicorn's data_received changed ({needle!r}); re-check proxy/httpserver.py"


def test_uvicorn_answers_receive_with_a_disconnect_once_the_client_is_gone() -> None:
    # The fast path cancels an upstream call when `receive()` says http.disconnect.
    source = inspect.getsource(RequestResponseCycle.receive)
    assert "http.disconnect" in source and "self.disconnected" in source


def test_httpx2_still_takes_an_auth_flow_generator() -> None:
    assert inspect.isasyncgenfunction(httpx2.Auth.async_auth_flow) or hasattr(httpx2.Auth, "async_auth_flow")


async def test_asyncio_tasks_still_support_uncancel() -> None:
    # The fast path swallows the cancellation it caused itself (a caller's disconnect).
    async def victim() -> Any:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await anyio.sleep(1)
        except asyncio.CancelledError:
            assert task.cancelling() == 1
            task.uncancel()
            return "survived"

    assert await victim() == "survived"
