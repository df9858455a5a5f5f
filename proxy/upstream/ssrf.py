"""Refuse upstream hosts that resolve into networks a gateway must not reach on a user's behalf.

`check_address` is the one decision; `resolve_checked` applies it to every address of a host, and
`proxy/upstream/_pinned.py` connects sockets only to the addresses it returned."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import anyio

from proxy.errors import UpstreamRefused, UpstreamUnavailable, ValidationFailed

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"),  # ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6
}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_SETTING = "JUNCTION_ALLOW_PRIVATE_UPSTREAMS=1 (config allow_private_upstreams)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# What `resolve_checked` asks: (host, port) -> addresses, in order. Raises OSError when there are none.
Resolver = Callable[[str, int], Awaitable[list[str]]]


def validate_url_syntax(url: str) -> None:
    """Check that `url` is an absolute http(s) URL without credentials in it."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise ValidationFailed("mcpUrl must be an http(s) URL of at most 2048 characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValidationFailed(f"mcpUrl is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("mcpUrl must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise ValidationFailed("mcpUrl must not carry user:password; send credentials in headers")


def classify(ip: IPAddress) -> str:
    """'public', 'private' (allowed by the setting) or 'forbidden' (never allowed)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return "forbidden"
    if ip.is_loopback or ip.is_private or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT):
        return "private"
    if ip.is_reserved:
        return "forbidden"
    return "public"


def check_address(host: str, ip: IPAddress, allow_private: bool) -> None:
    """Raise `UpstreamRefused` unless the policy lets the gateway reach `ip` when asked for `host`.

    The one SSRF decision: URL checks and every upstream socket go through it."""
    kind = classify(ip)
    if kind == "forbidden":
        raise UpstreamRefused(
            f"upstream host {host!r} resolves to {ip}, a link-local or cloud-metadata address; refused"
        )
    if kind == "private" and not allow_private:
        raise UpstreamRefused(
            f"upstream host {host!r} resolves to {ip}, a loopback or private address; set {_SETTING} to allow it"
        )


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system's resolver gives for `host`, in its order."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(
    host: str, port: int, allow_private: bool, *, resolver: Resolver | None = None
) -> list[str]:
    """Resolve `host` once and return its addresses, in resolution order, if the policy allows them all.

    Connect to these addresses, never to `host` again: a second lookup could answer differently
    (DNS rebinding). One forbidden address refuses the host, as a client could pick any of them.
    IP literals skip DNS. Raises `UpstreamRefused`, or `UpstreamUnavailable` when `host` does not
    resolve."""
    literal = _ip_literal(host)
    if literal is not None:
        check_address(host, literal, allow_private)
        return [str(literal)]
    try:
        addresses = list(dict.fromkeys(await (resolver or system_resolver)(host, port)))
    except (OSError, UnicodeError) as exc:
        raise UpstreamUnavailable(f"cannot resolve upstream host {host!r}") from exc
    if not addresses:
        raise UpstreamUnavailable(f"cannot resolve upstream host {host!r}")
    for address in addresses:
        check_address(host, ipaddress.ip_address(address), allow_private)
    return addresses


async def check_upstream_url(url: str, allow_private: bool) -> None:
    """Resolve the URL's host and refuse it if any address is off limits."""
    validate_url_syntax(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    await resolve_checked(parts.hostname or "", port, allow_private)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
