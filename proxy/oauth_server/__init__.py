"""The gateway as an OAuth 2.1 authorization server for MCP clients (Claude, ChatGPT, Cursor, VS Code,
the Inspector): discovery, client registration (metadata documents, RFC 7591, configured clients),
`/authorize` with a sign-in and a consent page, `/token`, `/revoke`, and the grants people gave.

Tokens it issues are our own (service-token JWTs bound to the MCP endpoint they were asked for);
no token it receives is ever sent upstream.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime

import anyio
import httpx2

from proxy.auth.middleware import Authentication
from proxy.auth.tokens import ServiceTokens
from proxy.oauth_server.clients import Clients
from proxy.oauth_server.grants import Grants
from proxy.oauth_server.oidc import OidcLogin
from proxy.settings import Settings
from proxy.store import Store
from proxy.vault import Vault

log = logging.getLogger("junction.oauth")
PRUNE_INTERVAL = 3600.0


class AuthorizationServer:
    """The parts the OAuth endpoints share, built once in the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        vault: Vault,
        tokens: ServiceTokens,
        authentication: Authentication,
    ):
        self.settings = settings
        self.store = store
        self.vault = vault
        self.authentication = authentication
        self.clients = Clients(store.oauth, settings)
        self.grants = Grants(store.oauth, tokens, settings)
        self.oidc: OidcLogin | None = None
        self._http: httpx2.AsyncClient | None = None
        if "oidc" in settings.oauth_login:
            verify = ssl.create_default_context()
            if settings.oauth_ca_file:
                verify.load_verify_locations(settings.oauth_ca_file)
            self._http = httpx2.AsyncClient(timeout=10.0, verify=verify, trust_env=False)
            self.oidc = OidcLogin(settings, self._http)

    async def prune(self) -> None:
        """Delete spent codes and the refresh tokens of ended grants."""
        await self.store.oauth.prune(datetime.now(UTC))

    async def run_pruner(self, interval: float = PRUNE_INTERVAL) -> None:
        """`prune` every `interval` seconds, forever (the lifespan prunes once at start)."""
        while True:
            # Sleep first: a task cancelled while the store is mid-write (a failed start) would
            # hold up the process's exit.
            await anyio.sleep(interval)
            try:
                await self.prune()
            except Exception:  # the store is down: try again next round
                log.warning("could not prune spent OAuth codes and refresh tokens", exc_info=True)

    async def aclose(self) -> None:
        await self.clients.aclose()
        if self._http is not None:
            await self._http.aclose()
