"""Upstream URLs are checked after DNS resolution."""

from __future__ import annotations

import ipaddress

import anyio
import pytest

from proxy.errors import UpstreamRefused, ValidationFailed
from proxy.upstream.ssrf import check_upstream_url, classify


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
