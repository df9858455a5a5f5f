"""The gateway as the OAuth client of its upstreams: discovery, authorization, refresh, revocation.

- An upstream's 401 starts discovery (`oauth_client.discover`) and registration: an OAuth app from
  the configuration, else our client metadata document (when the server supports CIMD), else
  dynamic registration, stored per issuer. The connection is then `auth_required`, with a
  `setupUrl` that leads its user to the server's consent page and back to `/oauth/callback`.
- Tokens are sealed by the vault in `upstream_auth`, refreshed at 70-80 % of their lifetime (the
  jitter spreads a fleet of connections) by whichever instance takes the row's lease first, and
  on a 401. Refresh tokens rotate, so a refresh runs under a lease that names the token version:
  of two instances, one refreshes and the other adopts its result.
- A refused refresh (the user revoked the app) makes the connection `auth_required` again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
from anyio.abc import TaskGroup

from proxy.errors import JunctionError, UpstreamRefused
from proxy.settings import Settings
from proxy.store import Store
from proxy.store._upstream import UpstreamAuthRecord
from proxy.upstream._clients import tls_context
from proxy.upstream._pinned import pinned_transport
from proxy.upstream.credentials import Challenge
from proxy.upstream_auth import oauth_client as oauth
from proxy.upstream_auth.credentials import ConnectionCredentials, Key
from proxy.upstream_auth.oauth_client import ClientRegistration, InvalidGrant, OAuthProblem, ServerAuth
from proxy.vault import Vault, VaultError

log = logging.getLogger("junction.upstream_auth")

CALLBACK_PATH = "/oauth/callback"
CLIENT_METADATA_PATH = "/oauth/client-metadata.json"
# A refresh (registration included) must end well within its lease: another instance takes an
# expired lease, and two refreshes of one rotating refresh token burn the grant.
REFRESH_DEADLINE = 20.0
LEASE_SECONDS = 60.0
DISCOVERY_DEADLINE = 30.0
DISCOVERY_RETRY = 30.0  # a failed discovery is not tried again sooner (each costs several requests)
BROWSER_COOKIE = "junction_authorize"  # binds an authorization in progress to the browser that began it
_TOKENS = "oauth-tokens"
_LINK = "setup-link"
_CLIENT = "oauth-client"

Blocked = Callable[[Key, JunctionError], Awaitable[None]]


class SetupFailed(Exception):
    """A setup link or an authorization callback cannot be honoured; the message is for the user."""


class UpstreamAuth:
    """Credentials of every connection of this instance, and the flows that obtain them."""

    def __init__(self, settings: Settings, store: Store, vault: Vault):
        self._settings = settings
        self.rows = store.upstream  # this module's rows in the store
        self.vault = vault
        self._public = settings.effective_public_url
        self._allow_http = settings.allow_private_upstreams
        self.http = httpx2.AsyncClient(
            transport=pinned_transport(settings.allow_private_upstreams, verify=tls_context()),
            timeout=httpx2.Timeout(10.0),
            follow_redirects=False,
            trust_env=False,
            # No cookie from one server (or user's flow) may ride along to another.
            cookies=httpx2.Cookies(CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))),
        )
        self._creds: dict[Key, ConnectionCredentials] = {}
        self._locks: dict[Key, anyio.Lock] = {}
        self._owner = secrets.token_hex(8)  # names this instance's refresh leases
        self._wake = anyio.Event()
        self._refreshing: set[Key] = set()
        self.on_blocked: Blocked | None = None  # the directory reports it in the connection's status

    @property
    def redirect_uri(self) -> str:
        return self._public + CALLBACK_PATH

    @property
    def client_metadata_url(self) -> str:
        return self._public + CLIENT_METADATA_PATH

    def client_metadata(self) -> dict[str, Any]:
        """Our client ID metadata document (served at `client_metadata_url`)."""
        return {
            "client_id": self.client_metadata_url,
            "client_name": "mcp-junction",
            "client_uri": self._public,
            "redirect_uris": [self.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "web",
        }

    async def aclose(self) -> None:
        await self.http.aclose()

    # credentials, as the pool asks for them
    def credentials(
        self,
        key: Key,
        url: str,
        headers: Mapping[str, str],
        *,
        catalog_server: str | None = None,
        incarnation: str = "",
    ) -> ConnectionCredentials:
        """The credentials of a connection (one object per connection, kept across sessions)."""
        creds = self._creds.get(key)
        if creds is not None and creds.incarnation and creds.incarnation != incarnation:
            creds = None  # a new connection under an old id: nothing of the old one carries over
        if creds is None:
            creds = self._creds[key] = ConnectionCredentials(self, key, headers)
        else:
            creds.set_static(headers)
        creds.url = url
        creds.catalog_server = catalog_server
        creds.incarnation = incarnation
        return creds

    def lock(self, key: Key) -> anyio.Lock:
        return self._locks.setdefault(key, anyio.Lock())

    async def prepare(self, creds: ConnectionCredentials) -> None:
        """Before a connection connects: its stored tokens, refreshed when they expired."""
        if not creds.loaded or creds.needs_authorization:
            # Waiting for its user: the authorization may have finished on another instance.
            async with self.lock(creds.key):
                record = await self.rows.auth(creds.key)
                if not creds.loaded or record is None or record.version != creds.stored_version:
                    await self._load(creds, record)
        if creds.token and creds.expired:
            await self.refresh(creds)

    async def _load(self, creds: ConnectionCredentials, record: UpstreamAuthRecord | None) -> None:
        if record is None:
            creds.adopt(None, None)
            return
        tokens = self._open_tokens(record)
        creds.adopt(record.version, tokens)
        if tokens is None:  # discovered, never authorized (or authorization was lost)
            creds.needs_authorization = True

    def _open_tokens(self, record: UpstreamAuthRecord) -> dict[str, Any] | None:
        if not record.tokens_sealed:
            return None
        try:
            opened = self.vault.open(
                record.tokens_sealed,
                namespace=record.namespace,
                connection_id=record.connection_id,
                field=_TOKENS,
            )
        except VaultError:
            log.warning(
                "upstream tokens of %s/%s cannot be decrypted", record.namespace, record.connection_id
            )
            return None
        tokens: dict[str, Any] = json.loads(opened["json"])
        return tokens

    def _seal_tokens(self, key: Key, tokens: dict[str, Any]) -> str:
        return self.vault.seal(
            {"json": json.dumps(tokens)}, namespace=key[0], connection_id=key[1], field=_TOKENS
        )

    # the status and its setup link
    def setup_url(self, key: Key, incarnation: str) -> str:
        """A link for the connection's user: to the upstream's consent page, or to the form for
        missing configuration. It carries a sealed expiry and is bound to this connection (not a
        later one with the same id), so only the gateway can make one."""
        expires = int(time.time() + self._settings.setup_link_ttl)
        token = self.vault.seal(
            {"exp": str(expires)}, namespace=key[0], connection_id=key[1], field=f"{_LINK}:{incarnation}"
        )
        return f"{self._public}/setup/{quote(key[0])}/{quote(key[1])}?t={quote(token)}"

    def check_setup_link(self, key: Key, incarnation: str, token: str) -> None:
        try:
            data = self.vault.open(
                token, namespace=key[0], connection_id=key[1], field=f"{_LINK}:{incarnation}"
            )
            valid = float(data["exp"]) > time.time()
        except (VaultError, KeyError, ValueError):
            valid = False
        if not valid:
            raise SetupFailed(
                "This setup link is not valid or has expired. Ask the application for a new one "
                "(it is in the connection's status)."
            )

    def status(self, key: Key, incarnation: str) -> dict[str, Any]:
        url = self.setup_url(key, incarnation)
        return {"state": "auth_required", "setupUrl": url, "authorizationUrl": url}

    # a refusal from the upstream
    async def rejected(self, creds: ConnectionCredentials, version: int, challenge: Challenge) -> bool:
        async with self.lock(creds.key):
            if creds.version != version:
                return True  # the headers changed since that request was sent: try the new ones
            record = await self.rows.auth(creds.key)
            if record is not None and record.version != creds.stored_version:
                await self._load(creds, record)  # authorized or refreshed elsewhere meanwhile
                if creds.token:
                    return True
            if challenge.status == 401 and creds.token:
                outcome = await self._refresh_locked(creds, forced=True)
                if outcome is not None:
                    return outcome
            failed = creds.discovery_failed
            if failed is not None and time.monotonic() - failed[0] < DISCOVERY_RETRY:
                creds.failure = failed[1]  # it failed moments ago: no new round of requests for it
                return False
            creds.failure = None
            with anyio.move_on_after(DISCOVERY_DEADLINE) as scope:
                await self._require(creds, challenge)
            if scope.cancelled_caught:
                creds.failure = "discovering the upstream's authorization server timed out"
            creds.discovery_failed = (time.monotonic(), creds.failure) if creds.failure else None
            return False

    async def _require(self, creds: ConnectionCredentials, challenge: Challenge) -> None:
        """Discover how to authorize, register, and make the connection `auth_required`."""
        record = await self.rows.auth(creds.key)
        previous = (
            ServerAuth.from_json(record.discovered) if record is not None and record.discovered else None
        )
        url = creds.url
        try:
            if not url.startswith("https://") and not self._allow_http:
                raise OAuthProblem(
                    "the upstream is not https: the gateway sends no OAuth token over plain http"
                )
            server = await oauth.discover(
                self.http,
                url,
                challenge,
                allow_http=self._allow_http,
                previous=previous if challenge.insufficient_scope else None,
            )
            await self.client_for(server, creds.catalog_server)
        except (OAuthProblem, UpstreamRefused) as exc:
            creds.failure = f"the upstream refused the gateway's credentials and authorizing failed: {exc}"
            log.warning("upstream %s/%s: %s", *creds.key, creds.failure)
            return
        except Exception as exc:  # unreachable, or answers no client could use
            creds.failure = (
                "the upstream refused the gateway's credentials and its authorization server could "
                f"not be used ({type(exc).__name__})"
            )
            log.warning("upstream %s/%s: %s", *creds.key, creds.failure)
            return
        discovered = {**server.to_json(), "catalog": creds.catalog_server}
        expected = record.version if record is not None else None
        version = await self.rows.discovered(creds.key, discovered, expected, datetime.now(UTC))
        if version is None:  # someone else changed the row (authorized?) or the connection is gone
            await self._load(creds, await self.rows.auth(creds.key))
            return
        creds.adopt(version, None)
        creds.needs_authorization = True

    # registration
    async def client_for(self, server: ServerAuth, catalog_server: str | None = None) -> ClientRegistration:
        """Who we are at `server`: a configured app (the catalog server's, else one for this issuer),
        our metadata document, or a registration of our own."""
        entry = self._settings.server(catalog_server) if catalog_server else None
        configured = (
            {
                "client_id": entry["oauth_client_id"],
                "client_secret": entry.get("oauth_client_secret"),
                "auth_method": entry.get("oauth_auth_method"),
            }
            if entry and entry.get("oauth_client_id")
            else next(
                (c for c in self._settings.upstream_oauth_clients if c.get("issuer") == server.issuer), None
            )
        )
        if configured is not None:
            secret = configured.get("client_secret")
            return ClientRegistration(
                client_id=str(configured["client_id"]),
                client_secret=secret,
                auth_method=configured.get("auth_method") or _secret_method(secret, server),
                source="configured",
            )
        sealed = await self.rows.client(server.issuer, self.redirect_uri)
        if sealed is not None:
            try:
                data = self.vault.open(
                    sealed, namespace="", connection_id=_issuer_id(server.issuer), field=_CLIENT
                )
                return ClientRegistration.from_json(data)
            except VaultError:
                pass  # sealed under another master key: register again
        if server.cimd_supported and self._cimd_usable():
            return ClientRegistration(client_id=self.client_metadata_url, source="metadata_document")
        client = await oauth.register(self.http, server, self.redirect_uri, "mcp-junction", self._public)
        sealed = self.vault.seal(
            client.to_json(), namespace="", connection_id=_issuer_id(server.issuer), field=_CLIENT
        )
        stored = await self.rows.add_client(server.issuer, self.redirect_uri, sealed, datetime.now(UTC))
        if stored != sealed:  # another instance registered first: use that one
            data = self.vault.open(
                stored, namespace="", connection_id=_issuer_id(server.issuer), field=_CLIENT
            )
            return ClientRegistration.from_json(data)
        return client

    def _cimd_usable(self) -> bool:
        """A client metadata document must be served over https (http only in development)."""
        return self._public.startswith("https://") or self._allow_http

    def tokens_from(self, answer: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
        now = time.time()
        tokens: dict[str, Any] = {"access_token": answer["access_token"], "obtained_at": now}
        refresh_token = answer.get("refresh_token") or (previous or {}).get("refresh_token")
        if isinstance(refresh_token, str):
            tokens["refresh_token"] = refresh_token
        if isinstance(answer.get("scope"), str):
            tokens["scope"] = answer["scope"]
        lifetime = answer.get("expires_in")
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0:
            tokens["expires_at"] = now + lifetime
            if "refresh_token" in tokens:
                tokens["refresh_at"] = now + lifetime * random.uniform(0.7, 0.8)
        return tokens

    async def save(self, key: Key, version: int, tokens: dict[str, Any] | None) -> bool:
        saved = await self.rows.save_tokens(
            key,
            version=version,
            sealed=self._seal_tokens(key, tokens) if tokens else None,
            expires_at=tokens.get("expires_at") if tokens else None,
            refresh_at=tokens.get("refresh_at") if tokens else None,
            when=datetime.now(UTC),
        )
        if saved:
            self._wake.set()
        return saved

    async def adopt_stored(self, key: Key) -> ConnectionCredentials:
        creds = self._creds.get(key)
        if creds is None:
            creds = self._creds[key] = ConnectionCredentials(self, key, {})
        await self._load(creds, await self.rows.auth(key))
        return creds

    # refreshing
    async def refresh(self, creds: ConnectionCredentials) -> bool:
        async with self.lock(creds.key):
            outcome = await self._refresh_locked(creds, forced=False)
        return bool(outcome)

    async def _refresh_locked(self, creds: ConnectionCredentials, *, forced: bool) -> bool | None:
        """Refresh (or adopt another instance's refresh). True: new headers; False: could not
        now (the failure is kept); None: the grant is gone, a person must authorize again."""
        key = creds.key
        record = await self.rows.auth(key)
        if record is None or not record.tokens_sealed:
            await self._load(creds, record)
            return None
        if record.version != creds.stored_version:
            await self._load(creds, record)  # someone refreshed (or authorized) meanwhile
            return True
        tokens = self._open_tokens(record)
        if not tokens or not tokens.get("refresh_token"):
            return None
        if not forced and record.refresh_at is not None and record.refresh_at > time.time():
            return True
        now = time.time()
        if not await self.rows.lease(key, record.version, self._owner, now, now + LEASE_SECONDS):
            return await self._await_other(creds, record.version)
        # Once the server may have rotated the refresh token, its answer must be stored: the
        # caller giving up (a timeout, a client gone) must not cancel this half-way.
        with anyio.CancelScope(shield=True):
            outcome = await self._refresh_leased(creds, record, tokens)
        return outcome

    async def _refresh_leased(
        self, creds: ConnectionCredentials, record: UpstreamAuthRecord, tokens: dict[str, Any]
    ) -> bool | None:
        key = creds.key
        server = ServerAuth.from_json(record.discovered)
        try:
            with anyio.fail_after(REFRESH_DEADLINE):  # well within the lease
                client = await self.client_for(server, record.discovered.get("catalog"))
                answer = await oauth.refresh(self.http, server, client, tokens["refresh_token"])
        except InvalidGrant as exc:
            log.warning("upstream %s/%s: refreshing its token failed: %s", *key, exc)
            await self.save(key, record.version, None)
            await self._load(creds, await self.rows.auth(key))
            return None
        except Exception as exc:
            creds.failure = f"refreshing the upstream's token failed ({reason(exc)})"
            log.warning("upstream %s/%s: %s", *key, creds.failure)
            await self.rows.release(key, self._owner)
            await self.rows.postpone(key, record.version, time.time() + random.uniform(10, 30))
            return False
        fresh = self.tokens_from(answer, tokens)
        # Fenced by the version alone: within the deadline our lease is still ours.
        if not await self.save(key, record.version, fresh):
            log.warning("upstream %s/%s: the tokens changed while refreshing them", *key)
        await self._load(creds, await self.rows.auth(key))
        return creds.token is not None

    async def _await_other(self, creds: ConnectionCredentials, version: int) -> bool | None:
        """Another refresher holds the lease: wait (bounded) for its result and use it."""
        with anyio.move_on_after(LEASE_SECONDS + 5):
            while True:
                await anyio.sleep(0.1)
                record = await self.rows.auth(creds.key)
                if record is None or record.version != version:
                    await self._load(creds, record)
                    return True if creds.token else None
                if record.lease_owner is None:  # it gave up (the server was down): try ourselves
                    return False
        return False

    async def run_refresher(self, task_group: TaskGroup) -> None:
        """Refresh every connection's tokens when due, on whichever instance leases them first."""
        poll = self._settings.upstream_refresh_poll
        while True:
            self._wake = anyio.Event()
            now = time.time()
            try:
                # Shielded: a query cancelled half-way (the gateway stopping) leaves an aiosqlite
                # connection whose close the event loop then waits for forever.
                with anyio.CancelScope(shield=True):
                    due = await self.rows.due(now)
                    next_due = await self.rows.next_due()
                for key, _version in due:
                    if key not in self._refreshing:
                        self._refreshing.add(key)
                        task_group.start_soon(self._refresh_due, key)
            except Exception:
                log.exception("looking for upstream tokens to refresh failed")
                next_due = None
            delay = poll if next_due is None else min(poll, max(0.05, next_due - time.time()))
            with anyio.move_on_after(delay):
                await self._wake.wait()

    async def _refresh_due(self, key: Key) -> None:
        try:
            creds = self._creds.get(key)
            if creds is None:
                creds = self._creds[key] = ConnectionCredentials(self, key, {})
            async with self.lock(key):
                if not creds.loaded:
                    await self._load(creds, await self.rows.auth(key))
                outcome = await self._refresh_locked(creds, forced=False)
            problem = creds.problem
            if outcome is None and problem is not None and self.on_blocked is not None:
                await self.on_blocked(key, problem)
        except Exception:
            log.exception("refreshing the upstream token of %s/%s failed", *key)
        finally:
            self._refreshing.discard(key)

    # the end of a connection
    async def forget(self, key: Key) -> Callable[[], Awaitable[None]]:
        """The connection is being deleted: drop its tokens now; the returned function revokes
        them where the server offers it (network I/O, for after the caller's locks)."""
        async with self.lock(key):
            self._creds.pop(key, None)
            record = await self.rows.auth(key)
            await self.rows.forget(key)
        tokens = self._open_tokens(record) if record is not None else None

        async def revoke() -> None:
            if record is None or not tokens:
                return
            server = ServerAuth.from_json(record.discovered)
            with anyio.move_on_after(10):
                try:
                    client = await self.client_for(server, record.discovered.get("catalog"))
                    for name in ("refresh_token", "access_token"):
                        if tokens.get(name):
                            await oauth.revoke(self.http, server, client, tokens[name], name)
                except Exception as exc:
                    log.warning("revoking the upstream tokens of %s/%s failed: %s", *key, type(exc).__name__)

        return revoke


def _secret_method(secret: str | None, server: ServerAuth) -> str:
    """How a configured app without an `auth_method` authenticates: as the server prefers."""
    if not secret:
        return "none"
    if "client_secret_basic" not in server.auth_methods and "client_secret_post" in server.auth_methods:
        return "client_secret_post"
    return "client_secret_basic"


def reason(exc: BaseException) -> str:
    """A short reason without secrets: ours are written for users; others are named by type."""
    if isinstance(exc, OAuthProblem | UpstreamRefused):
        return str(exc)
    return type(exc).__name__


def _issuer_id(issuer: str) -> str:
    return hashlib.sha256(issuer.encode()).hexdigest()[:32]
