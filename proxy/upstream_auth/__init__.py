"""The gateway as the OAuth client of upstreams, and what upstream servers need configured."""

from proxy.upstream_auth.service import SetupFailed, UpstreamAuth

__all__ = ["SetupFailed", "UpstreamAuth"]
