"""Grants: a person's consent for one client to use one namespace, and the tokens it yields.

A grant narrows the chain of whoever logged in (an API key, a service token, or a federated
identity bound to its own `metadata.userId`) to one namespace and the consented operations. Its
access tokens are signed service-token JWTs (`ServiceTokens.issue_access`) that carry the grant id
among their ancestors, so revoking the grant ends them at once, through the same revocation set
as every token. Refresh tokens are opaque, stored as hashes, single-use and rotated: using one
twice revokes the grant (RFC 6819 §5.2.2.3, the OAuth 2.1 rule for public clients).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from proxy.auth.middleware import SCOPES
from proxy.auth.policy import Principal
from proxy.auth.tokens import AccessGrant, ServiceTokens
from proxy.errors import NotFound, OAuthError
from proxy.oauth_server.clients import Client
from proxy.oauth_server.flow import Flow, Login
from proxy.pkce import s256
from proxy.settings import Settings
from proxy.store import AuthCodeRecord, OAuthGrantRecord, OAuthStore

CODE_SECONDS: Final = 60


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def normalize_scope(requested: str | None) -> str:
    """The scope granted for a requested one: the known scopes asked for, or all when none is
    asked (or only scopes we do not have, such as offline_access: refresh tokens are always given)."""
    asked = [s for s in (requested or "").split() if s in SCOPES]
    return " ".join(s for s in SCOPES if s in asked) or " ".join(SCOPES)


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    scope: str

    def json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
        }


class Grants:
    """Creates grants at consent, turns codes and refresh tokens into tokens, lists and revokes."""

    def __init__(self, store: OAuthStore, tokens: ServiceTokens, settings: Settings):
        self._store = store
        self._tokens = tokens
        self._access_ttl = settings.oauth_access_token_ttl
        self._grant_ttl = settings.oauth_grant_ttl

    async def approve(self, flow: Flow, client: Client, namespace: str) -> str:
        """Record the consent and answer a one-minute, single-use authorization code."""
        login = flow.login
        assert login is not None
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=self._grant_ttl)
        if login.expires_at < expires.timestamp():
            expires = datetime.fromtimestamp(login.expires_at, UTC)
        grant = OAuthGrantRecord(
            id="grt_" + secrets.token_hex(12),
            client_id=client.client_id,
            client_name=client.name,
            redirect_uri=flow.redirect_uri,
            resource=flow.resource,
            namespace=namespace,
            scope=flow.scope,
            key_id=login.key_id,
            login={
                "subject": login.subject,
                "tokenIds": list(login.token_ids),
                "claims": list(login.claims),
                "expiresAt": login.expires_at if math.isfinite(login.expires_at) else None,
            },
            created_at=now,
            expires_at=expires,
        )
        await self._store.add_grant(grant)
        code = secrets.token_urlsafe(32)
        await self._store.add_code(
            AuthCodeRecord(
                code_hash=_hash(code),
                grant_id=grant.id,
                code_challenge=flow.code_challenge,
                expires_at=now + timedelta(seconds=CODE_SECONDS),
            )
        )
        return code

    async def exchange_code(
        self, client: Client, code: str, redirect_uri: str | None, verifier: str | None, resource: str | None
    ) -> Tokens:
        """`authorization_code`: PKCE S256, the same client, redirect URI and resource."""
        now = datetime.now(UTC)
        outcome, record = await self._store.use_code(_hash(code), now)
        if record is None:
            raise OAuthError("invalid_grant", "unknown authorization code")
        grant = await self._store.grant(record.grant_id)
        if outcome == "used":
            # A code used twice was stolen or replayed: end everything issued from it.
            await self.revoke_record(grant)
            raise OAuthError(
                "invalid_grant", "this authorization code was already used; its grant is revoked"
            )
        if grant is None or record.expires_at <= now:
            raise OAuthError("invalid_grant", "the authorization code has expired")
        if grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "the authorization code was issued to another client")
        if redirect_uri is not None and redirect_uri != grant.redirect_uri:
            raise OAuthError(
                "invalid_grant", "redirect_uri differs from the one of the authorization request"
            )
        if resource is not None and resource != grant.resource:
            raise OAuthError("invalid_target", "resource differs from the one of the authorization request")
        if not verifier or not 43 <= len(verifier) <= 128:
            raise OAuthError("invalid_grant", "code_verifier is missing or malformed")
        challenge = s256(verifier)
        if not hmac.compare_digest(challenge, record.code_challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return await self._issue(grant, grant.scope)

    async def refresh(
        self, client: Client, refresh_token: str, scope: str | None, resource: str | None
    ) -> Tokens:
        """`refresh_token`: rotate; a token used twice revokes its grant."""
        outcome, grant_id = await self._store.use_refresh_token(
            _hash(refresh_token), client.client_id, datetime.now(UTC)
        )
        grant = await self._store.grant(grant_id) if grant_id else None
        if grant is None:
            raise OAuthError("invalid_grant", "unknown refresh token (or one issued to another client)")
        if outcome == "used":
            await self.revoke_record(grant)
            raise OAuthError("invalid_grant", "this refresh token was already used; its grant is revoked")
        if resource is not None and resource != grant.resource:
            raise OAuthError("invalid_target", "resource differs from the one of the grant")
        granted = grant.scope
        if scope:
            asked = set(scope.split()) - {"offline_access"}  # refresh tokens are always given
            held = granted.split()
            if not asked <= set(held):
                raise OAuthError("invalid_scope", "a refresh cannot widen the granted scope")
            granted = " ".join(s for s in held if s in asked) or granted
        return await self._issue(grant, granted)

    async def _issue(self, grant: OAuthGrantRecord, scope: str) -> Tokens:
        now = datetime.now(UTC)
        if grant.revoked_at is not None or grant.expires_at <= now:
            raise OAuthError("invalid_grant", "the grant was revoked or has expired; sign in again")
        login = grant.login
        access = AccessGrant(
            grant_id=grant.id,
            key_id=grant.key_id,
            token_ids=tuple(login["tokenIds"]),
            claims=tuple(login["claims"]),
            level=[
                {"namespaces": [grant.namespace], "resources": ["connections"], "operations": scope.split()}
            ],
            login_expires_at=login["expiresAt"] if login["expiresAt"] is not None else math.inf,
            audience=grant.resource,
            namespace=grant.namespace,
            client_id=grant.client_id,
            scope=scope,
            subject=login["subject"],
        )
        token = self._tokens.issue_access(access, self._access_ttl)
        principal = await self._tokens.authenticate(token)
        if principal is None:  # the key or token logged in with was revoked, or expired
            await self.revoke_record(grant)
            raise OAuthError("invalid_grant", "the credential this grant was given with is no longer valid")
        refresh = "jrt_" + secrets.token_urlsafe(32)
        await self._store.add_refresh_token(_hash(refresh), grant.id, now)
        return Tokens(token, refresh, max(1, int(principal.expires_at - now.timestamp())), scope)

    # --- revocation and listing -------------------------------------------------------------
    async def revoke_token(self, client: Client, token: str) -> None:
        """RFC 7009: a refresh token or an access token of this client ends its whole grant."""
        grant: OAuthGrantRecord | None = None
        if token.startswith("jrt_"):
            grant_id = await self._store.refresh_token_grant(_hash(token))
            grant = await self._store.grant(grant_id) if grant_id else None
        else:
            principal = await self._tokens.authenticate(token)
            if principal is not None and principal.kind == "oauth":
                grant = await self._store.grant(principal.token_ids[-2])
        if grant is not None and grant.client_id == client.client_id:
            await self.revoke_record(grant)

    async def revoke_record(self, grant: OAuthGrantRecord | None) -> None:
        if grant is None:
            return
        await self._store.revoke_grant(grant.id, datetime.now(UTC))
        self._tokens.mark_revoked(grant.id, grant.expires_at.timestamp())

    async def list(self, caller: Principal) -> list[OAuthGrantRecord]:
        """The live grants a caller may see: every one for an API key; those given with a
        service token (or one above it) for that token; its own for an OAuth access token."""
        key = None if caller.kind == "api_key" else caller.key_id
        records = await self._store.grants(key, datetime.now(UTC))
        return [r for r in records if _sees(caller, r)]

    async def revoke(self, caller: Principal, grant_id: str) -> None:
        grant = await self._store.grant(grant_id) if len(grant_id) <= 64 else None
        if grant is None or grant.revoked_at is not None or not _sees(caller, grant):
            raise NotFound(f"grant {grant_id[:64]!r} not found")
        await self.revoke_record(grant)


def _sees(caller: Principal, grant: OAuthGrantRecord) -> bool:
    if caller.kind == "api_key":
        return True
    if caller.kind == "oauth":
        return grant.id in caller.token_ids
    return caller.id in grant.login["tokenIds"]


def login_of(principal: Principal) -> Login:
    """The login a pasted API key or service token stands for."""
    subject = f"API key {principal.name}" if principal.kind == "api_key" else f"service token {principal.id}"
    return Login(
        subject=subject,
        key_id=principal.key_id,
        token_ids=principal.token_ids,
        claims=principal.claims,
        expires_at=principal.expires_at,
    )
