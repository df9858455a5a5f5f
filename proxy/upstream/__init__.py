"""Live sessions to upstream MCP servers."""

from proxy.upstream.pool import ConnectionPool, UpstreamConfig
from proxy.upstream.ssrf import check_upstream_url

__all__ = ["ConnectionPool", "UpstreamConfig", "check_upstream_url"]
