"""The running gateway's parts, built once in the app lifespan and shared by every surface."""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from proxy.auth.keys import ApiKeys
from proxy.auth.middleware import Authentication
from proxy.auth.tokens import ServiceTokens
from proxy.directory import Directory
from proxy.gateway.catalog import Catalog
from proxy.gateway.fastpath import ToolCallFastPath
from proxy.gateway.passthrough import Passthrough
from proxy.oauth_server import AuthorizationServer
from proxy.settings import Settings
from proxy.store import Store
from proxy.upstream import ConnectionPool
from proxy.upstream_auth import UpstreamAuth
from proxy.vault import Vault


@dataclass
class Gateway:
    settings: Settings
    store: Store
    vault: Vault
    keys: ApiKeys
    tokens: ServiceTokens
    authentication: Authentication
    oauth: AuthorizationServer
    upstream_auth: UpstreamAuth
    pool: ConnectionPool
    directory: Directory
    catalog: Catalog
    passthrough: Passthrough
    session_manager: StreamableHTTPSessionManager
    fast_path: ToolCallFastPath
