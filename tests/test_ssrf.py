"""Upstream URLs are checked after DNS resolution."""

from __future__ import annotations

import ipaddress

import anyio
import pytest

from proxy.errors import UpstreamRefused, ValidationFailed
from proxy.upstream.ssrf import check_address, check_upstream_url, classify, resolve_checked


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", "public"),
        ("127.0.0.1", "private"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "private"),
        ("::1", "private"),
        ("169.254.169.254", "forbidden"),
        ("169.254.10.10", "forbidden"),
        ("fe80::1", "forbidden"),
        ("::ffff:169.254.169.254", "forbidden"),
        ("0.0.0.0", "forbidden"),
        ("224.0.0.1", "forbidden"),
    ],
)
def test_classify(address: str, kind: str) -> None:
    assert classify(ipaddress.ip_address(address)) == kind


def test_loopback_is_refused_unless_allowed_and_the_message_names_the_setting() -> None:
    with pytest.raises(UpstreamRefused, match="JUNCTION_ALLOW_PRIVATE_UPSTREAMS"):
        anyio.run(check_upstream_url, "http://127.0.0.1:9/mcp", False)
    anyio.run(check_upstream_url, "http://127.0.0.1:9/mcp", True)


def test_metadata_address_is_refused_even_when_private_is_allowed() -> None:
    with pytest.raises(UpstreamRefused, match="metadata"):
        anyio.run(check_upstream_url, "http://169.254.169.254/latest", True)


@pytest.mark.parametrize("url", ["ftp://x/mcp", "not a url", "http://user:pw@127.0.0.1/mcp", "/relative", ""])
def test_bad_urls_are_validation_errors(url: str) -> None:
    with pytest.raises(ValidationFailed):
        anyio.run(check_upstream_url, url, True)


@pytest.mark.parametrize("address", ["8.8.8.8", "127.0.0.1", "10.1.2.3", "::1", "169.254.169.254", "fe80::1"])
@pytest.mark.parametrize("allow_private", [False, True])
def test_url_check_and_socket_check_make_the_same_decision(address: str, allow_private: bool) -> None:
    """`check_upstream_url` and `resolve_checked` both come down to `check_address`."""

    def outcome(check: object, *args: object) -> str:
        try:
            anyio.run(check, *args)  # type: ignore[arg-type]
        except UpstreamRefused as exc:
            return str(exc)
        return "allowed"

    ip = ipaddress.ip_address(address)
    host = f"[{address}]" if ip.version == 6 else address
    decision = outcome(_async(check_address), address, ip, allow_private)
    assert outcome(check_upstream_url, f"http://{host}:9/mcp", allow_private) == decision
    assert outcome(resolve_checked, address, 9, allow_private) == decision
    kind = classify(ip)
    assert (decision == "allowed") == (kind == "public" or (kind == "private" and allow_private))


def _async(function: object) -> object:
    async def call(*args: object) -> None:
        function(*args)  # type: ignore[operator]

    return call
