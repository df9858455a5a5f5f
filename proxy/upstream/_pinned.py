"""Upstream sockets that connect only to addresses the SSRF policy has just checked.

Checking a URL and then letting a client resolve its host again leaves a window: a DNS answer with
a zero TTL can say 127.0.0.1 to the check and 169.254.169.254 to the connect (DNS rebinding). Here
each socket resolves its host once (`resolve_checked`), and connects to those addresses only. The
host name still goes to TLS, for SNI and certificate verification (httpcore2 passes it to
`start_tls` apart from `connect_tcp`; asyncio takes it as `server_hostname`), and to the `Host`
header. Costs one `getaddrinfo` per new connection, the same as before; kept-alive connections
reuse their checked address. Addresses are tried in resolution order, without happy eyeballs.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from typing import TypeVar

import anyio
import httpcore2
import httpx2

from proxy.errors import UpstreamUnavailable
from proxy.upstream.ssrf import Resolver, resolve_checked

P = TypeVar("P", bound=asyncio.BaseProtocol)
SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class PinnedBackend(httpcore2.AsyncNetworkBackend):
    """An httpcore2 network backend whose TCP connections go only to checked addresses.

    `inner` makes the sockets (AnyIO's by default) and is only ever given IP addresses."""

    def __init__(
        self,
        allow_private: bool,
        *,
        resolver: Resolver | None = None,
        inner: httpcore2.AsyncNetworkBackend | None = None,
    ):
        self.allow_private = allow_private
        self._resolver = resolver
        self._inner = inner or httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's signature
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        """Resolve and check `host` (UpstreamRefused if the policy says no), then connect to its
        first address that accepts, within `timeout` overall."""
        deadline = None if timeout is None else anyio.current_time() + timeout
        try:
            with anyio.fail_after(timeout):
                addresses = await resolve_checked(host, port, self.allow_private, resolver=self._resolver)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"resolving {host!r} took longer than {timeout} s") from exc
        except UpstreamUnavailable as exc:
            # A connect error to httpx2, as a failed lookup inside httpcore2 would be: safe to retry.
            raise httpcore2.ConnectError(str(exc)) from exc
        failure: httpcore2.ConnectError | None = None
        for address in addresses:
            left = None if deadline is None else max(0.0, deadline - anyio.current_time())
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=left, local_address=local_address, socket_options=socket_options
                )
            except httpcore2.ConnectError as exc:
                failure = exc
        assert failure is not None  # resolve_checked returns at least one address
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pinned_transport(
    allow_private: bool,
    *,
    verify: ssl.SSLContext,
    limits: httpx2.Limits | None = None,
    resolver: Resolver | None = None,
) -> httpx2.AsyncHTTPTransport:
    """An httpx2 transport whose every socket goes through `PinnedBackend`.

    Pass it as `httpx2.AsyncClient(transport=...)`. Environment proxies are not used (a proxy
    would resolve the host itself, out of the policy's reach)."""
    limits = limits or httpx2.Limits(max_connections=100, max_keepalive_connections=20)
    transport = httpx2.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=False)
    # httpx2 takes no network backend, so swap in a pool built with one. `_pool` is private: fail
    # here, not silently unpinned, if httpx2 renames it (tests/test_ssrf_pinning.py checks it too).
    if not isinstance(getattr(transport, "_pool", None), httpcore2.AsyncConnectionPool):
        raise RuntimeError(
            "httpx2.AsyncHTTPTransport no longer keeps an httpcore2.AsyncConnectionPool in `_pool`; "
            "update proxy/upstream/_pinned.py for this httpx2 version"
        )
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=verify,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=PinnedBackend(allow_private, resolver=resolver),
    )
    return transport


async def open_checked_connection(
    protocol_factory: Callable[[], P],
    host: str,
    port: int,
    *,
    allow_private: bool,
    tls: ssl.SSLContext | None = None,
    resolver: Resolver | None = None,
) -> tuple[asyncio.Transport, P]:
    """`loop.create_connection()` to the first checked address of `host` that accepts.

    TLS, when `tls` is given, verifies `host`. Raises `UpstreamRefused` when the policy refuses
    the host, OSError when it does not resolve or no address accepts; bound it with a timeout."""
    loop = asyncio.get_running_loop()
    try:
        addresses = await resolve_checked(host, port, allow_private, resolver=resolver)
    except UpstreamUnavailable as exc:
        raise OSError(str(exc)) from exc
    failure: OSError | None = None
    for address in addresses:
        try:
            return await loop.create_connection(
                protocol_factory, address, port, ssl=tls, server_hostname=host if tls is not None else None
            )
        except OSError as exc:
            failure = exc
    assert failure is not None  # resolve_checked returns at least one address
    raise failure
