"""Refuse upstream URLs that resolve into networks a gateway must not reach on a user's behalf."""

from __future__ import annotations

import ipaddress
import socket
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


async def check_upstream_url(url: str, allow_private: bool) -> None:
    """Resolve the URL's host and refuse it if any address is off limits."""
    validate_url_syntax(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UpstreamUnavailable(f"cannot resolve upstream host {host!r}") from exc
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        kind = classify(ip)
        if kind == "forbidden":
            raise UpstreamRefused(
                f"upstream host {host!r} resolves to {ip}, a link-local or cloud-metadata address; refused"
            )
        if kind == "private" and not allow_private:
            raise UpstreamRefused(
                f"upstream host {host!r} resolves to {ip}, a loopback or private address; "
                f"set {_SETTING} to allow it"
            )
