"""Service tokens: signed JWTs (Ed25519, `kid`) that carry their whole chain of policies.

A token names the API key that began its chain (`key`), the ids of the tokens above it (`anc`) and
one policy per level (`pol`). Verifying needs no database read: the signature, then three set
lookups (is the key alive, is this token or an ancestor revoked). Verified tokens are cached by
their text, so a request with a known token costs a dict lookup and those checks.

Revocation reaches this instance at once (the sets change in the same call) and other instances
sharing the database within `sync_interval` seconds (each polls the key ids and new revocations).
Signing keys rotate: a new key signs, retired ones still verify until every token they signed has
expired (24 h at most).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import anyio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proxy.auth.constraints import MAX_CHAIN_PATTERNS, MAX_TTL, compile_policy, parse_policy
from proxy.auth.keys import ApiKeys
from proxy.auth.middleware import MAX_CREDENTIAL
from proxy.auth.policy import Principal
from proxy.errors import Forbidden, NotFound, ValidationFailed
from proxy.store import ServiceTokenRecord, SigningKeyRecord, Store
from proxy.vault import Vault, VaultError

log = logging.getLogger("junction.tokens")

MAX_DEPTH: Final = 8  # levels of narrowing (and so the size of a token) are bounded
# Verified tokens kept, and the patterns they hold at most in all (a pattern is ~2 KB compiled):
# past either, the cache starts over (tokens are verified again on their next use).
_CACHE_SIZE: Final = 20_000
_CACHE_PATTERNS: Final = 50_000
_SEALED_FIELD: Final = "token_signing_key"


@dataclass(frozen=True)
class MintedToken:
    token: str
    record: ServiceTokenRecord


class ServiceTokens:
    """Mints, verifies, lists and revokes service tokens; an authenticator of the chain."""

    def __init__(self, store: Store, vault: Vault, keys: ApiKeys, issuer: str, sync_interval: float = 2.0):
        self._store = store
        self._vault = vault
        self._keys = keys
        self._issuer = issuer
        self._sync_interval = sync_interval
        self._public: dict[str, Ed25519PublicKey] = {}
        self._signing: tuple[str, Ed25519PrivateKey] | None = None
        self._revoked: dict[str, float] = {}  # token id -> its expiry (forgotten after it)
        self._cache: dict[str, Principal] = {}
        self._cached_patterns = 0
        self._asked: dict[str, float] = {}  # unknown key id -> when the store was last asked
        # The first sync reads every revocation of a token that may still be alive (24 h at most).
        self._synced_at = datetime.now(UTC) - timedelta(seconds=MAX_TTL)
        self._reloaded_at = 0.0

    # --- lifecycle --------------------------------------------------------------------------
    async def load(self) -> None:
        """Read signing keys (making the first one if there is none) and current revocations."""
        await self._load_signing_keys()
        if self._signing is None:
            await self.rotate()
        await self.sync()

    async def run_sync(self) -> None:
        """Poll the store for revocations and key changes made by other instances, forever."""
        while True:
            await anyio.sleep(self._sync_interval)
            try:
                await self.sync()
            except Exception:  # the store is down: keep what we know, try again next round
                log.warning("could not read token revocations from the store", exc_info=True)

    async def sync(self) -> None:
        started = datetime.now(UTC)
        # A little overlap: a revocation written just before our last read is not missed.
        for token_id, expires in await self._store.revocations(self._synced_at - timedelta(seconds=30)):
            self._revoked[token_id] = expires.timestamp()
        generation = self._keys.generation
        self._keys.set_live(await self._store.api_key_ids(), generation)
        await self._load_signing_keys()
        self._synced_at = started
        now = time.time()
        self._revoked = {t: exp for t, exp in self._revoked.items() if exp > now}
        if len(self._cache) > _CACHE_SIZE // 2:
            self._cache = {k: p for k, p in self._cache.items() if p.expires_at > now}
            self._cached_patterns = sum(_patterns(p) for p in self._cache.values())

    async def rotate(self) -> str:
        """Make a new signing key the active one; older keys only verify from now on. Returns its kid."""
        private = Ed25519PrivateKey.generate()
        kid = "k" + secrets.token_hex(8)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public_pem = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        now = datetime.now(UTC)
        sealed = self._vault.seal({"pem": pem}, namespace="", connection_id=kid, field=_SEALED_FIELD)
        await self._store.add_signing_key(
            SigningKeyRecord(kid=kid, private_sealed=sealed, public_pem=public_pem, created_at=now)
        )
        await self._store.retire_signing_keys(before=now, when=now)
        self._public[kid] = private.public_key()
        self._signing = (kid, private)
        return kid

    async def _load_signing_keys(self) -> None:
        now = datetime.now(UTC)
        public: dict[str, Ed25519PublicKey] = {}
        active: SigningKeyRecord | None = None
        for record in await self._store.signing_keys():  # newest first
            if record.retired_at is not None and record.retired_at + timedelta(seconds=MAX_TTL) < now:
                continue  # every token it signed has expired
            key = serialization.load_pem_public_key(record.public_pem.encode())
            if isinstance(key, Ed25519PublicKey):
                public[record.kid] = key
            if active is None and record.retired_at is None:
                active = record
        self._public = public
        if active is not None and (self._signing is None or self._signing[0] != active.kid):
            try:
                opened = self._vault.open(
                    active.private_sealed, namespace="", connection_id=active.kid, field=_SEALED_FIELD
                )
            except VaultError:
                # Sealed under another master key: tokens it signed still verify (the public key
                # is in the clear); this instance signs with a key of its own (load() makes one).
                log.warning("the token signing key %s was sealed with another master key", active.kid)
                return
            private = serialization.load_pem_private_key(opened["pem"].encode(), password=None)
            assert isinstance(private, Ed25519PrivateKey)
            self._signing = (active.kid, private)

    # --- authenticator ----------------------------------------------------------------------
    def recognizes(self, credential: str) -> bool:
        """A JWT (three base64url parts, a JSON header) is ours to verify; anything else is not."""
        return credential.startswith("eyJ") and credential.count(".") == 2

    async def authenticate(self, credential: str) -> Principal | None:
        principal = self._cache.get(credential)
        if principal is None:
            principal = await self._verify(credential)
            if principal is None:
                return None
            weight = _patterns(principal)
            if len(self._cache) >= _CACHE_SIZE or self._cached_patterns + weight > _CACHE_PATTERNS:
                self._cache.clear()
                self._cached_patterns = 0
            self._cache[credential] = principal
            self._cached_patterns += weight
        if time.time() >= principal.expires_at or any(t in self._revoked for t in principal.token_ids):
            return None
        if not principal.key_id:  # a federated login's grant: it is its chain's root
            return principal
        if not self._keys.is_live(principal.key_id) and not await self._unknown_key(principal.key_id):
            return None
        return principal

    async def _unknown_key(self, key_id: str) -> bool:
        """A key this instance does not know may have been made on another one since the last
        sync: ask the store, at most once per sync interval for each such key."""
        now = time.monotonic()
        if now - self._asked.get(key_id, -math.inf) < self._sync_interval:
            return False
        if len(self._asked) > 10_000:
            self._asked.clear()
        self._asked[key_id] = now
        return await self._keys.confirm_live(key_id)

    async def _verify(self, credential: str) -> Principal | None:
        try:
            header = jwt.get_unverified_header(credential)
        except jwt.PyJWTError:
            return None
        kid = header.get("kid")
        if header.get("alg") != "EdDSA" or not isinstance(kid, str):
            return None
        key = self._public.get(kid)
        if key is None and time.monotonic() - self._reloaded_at > 1.0:
            # Another instance may have rotated: look once a second at most, whatever is sent.
            self._reloaded_at = time.monotonic()
            await self._load_signing_keys()
            key = self._public.get(kid)
        if key is None:
            return None
        try:
            claims = jwt.decode(
                credential,
                key,
                algorithms=["EdDSA"],
                issuer=self._issuer,
                # An access token's audience is the endpoint it was issued for; the route checks it.
                options={"require": ["exp", "iat", "iss", "jti"], "verify_aud": False},
                # Instances' clocks may differ by seconds: a fresh token is not "issued in the
                # future". Expiry is checked without it, below and on every later use.
                leeway=30,
            )
            return _principal(claims)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return None

    # --- minting, listing, revoking ---------------------------------------------------------
    async def mint(self, parent: Principal, policy: Any, ttl: int | None = None) -> MintedToken:
        """A token with `policy` under `parent` (an API key, or a token it narrows)."""
        if parent.kind == "oauth":
            raise Forbidden(
                "an OAuth access token cannot mint service tokens; use an API key or a service token"
            )
        if parent.kind == "service_token" and len(parent.policies) >= MAX_DEPTH:
            raise ValidationFailed(f"a token can be narrowed at most {MAX_DEPTH} times")
        now = int(time.time())
        claims, explicit = parse_policy(policy, now, ttl)
        patterns = sum(len(c.get("rpcReqMatch", ())) for level in (*parent.claims, claims) for c in level)
        if patterns > MAX_CHAIN_PATTERNS:
            raise ValidationFailed(
                f"a token and the tokens it was minted from may hold at most {MAX_CHAIN_PATTERNS} "
                f"rpcReqMatch patterns in all; this one would hold {patterns}"
            )
        expires = max(c["exp"] for c in claims)
        if parent.kind == "service_token":
            limit = int(parent.expires_at)
            if explicit and expires > limit:
                raise Forbidden(
                    f"a token cannot outlive the token that mints it, which expires in {max(0, limit - now)} s"
                )
            for claim in claims:
                claim["exp"] = min(claim["exp"], limit)
            expires = min(expires, limit)
        compile_policy(claims)  # what we sign must be what every verifier can read
        token_id = "tok_" + secrets.token_hex(12)
        ancestors = parent.token_ids
        record = ServiceTokenRecord(
            id=token_id,
            key_id=parent.key_id,
            parent_id=parent.id if parent.kind == "service_token" else None,
            ancestors=ancestors,
            policy=claims,
            created_at=datetime.fromtimestamp(now, UTC),
            expires_at=datetime.fromtimestamp(expires, UTC),
        )
        payload = {
            "iss": self._issuer,
            "jti": token_id,
            "key": parent.key_id,
            "iat": now,
            "exp": expires,
            "anc": list(ancestors),
            "pol": [*parent.claims, claims],
        }
        token = self._sign(payload)
        await self._store.add_service_token(record)
        return MintedToken(token=token, record=record)

    def issue_access(self, grant: AccessGrant, ttl: int) -> str:
        """An OAuth access token for `grant`: its login's chain of policies plus the consented
        level, the grant's id among its ancestors (revoking the grant ends it), bound to the
        resource it was asked for. Not stored: it lives `ttl` seconds at most."""
        now = int(time.time())
        expires = now + ttl
        if math.isfinite(grant.login_expires_at):  # an API key's login never expires
            expires = min(expires, int(grant.login_expires_at))
        level = [{**claim, "exp": min(claim.get("exp", expires), expires)} for claim in grant.level]
        payload = {
            "iss": self._issuer,
            "jti": "oat_" + secrets.token_hex(12),
            "key": grant.key_id,
            "iat": now,
            "exp": expires,
            "anc": [*grant.token_ids, grant.grant_id],
            "pol": [*grant.claims, level],
            "aud": grant.audience,
            "ns": grant.namespace,
            "cid": grant.client_id,
            "scope": grant.scope,
            "sub": grant.subject,
        }
        return self._sign(payload)

    def mark_revoked(self, token_id: str, expires_at: float) -> None:
        """Refuse every token carrying `token_id` (its own or an ancestor's) from now on, here;
        other instances read the revocation from the store."""
        self._revoked[token_id] = expires_at

    def _sign(self, payload: dict[str, Any]) -> str:
        assert self._signing is not None, "load() first"
        kid, private = self._signing
        token = jwt.encode(payload, private, algorithm="EdDSA", headers={"kid": kid})
        if len(token) > MAX_CREDENTIAL:
            raise ValidationFailed(
                f"the token would be {len(token)} characters, over the {MAX_CREDENTIAL} a credential may "
                "have; use fewer or shorter constraints (or fewer levels of narrowing)"
            )
        return token

    async def list(self, caller: Principal) -> list[ServiceTokenRecord]:
        """The live tokens under the caller: all its key minted, or a token's descendants."""
        records = await self._store.service_tokens(caller.key_id, datetime.now(UTC))
        return [r for r in records if self._under(caller, r)]  # the store leaves out revoked ones

    async def revoke(self, caller: Principal, token_id: str) -> None:
        """Revoke a token (and so every token minted from it). An admin API key may revoke any
        live token; a service token itself and those minted from it. 404 otherwise."""
        record = await self._store.service_token(token_id) if len(token_id) <= 64 else None
        if record is None or record.revoked_at is not None or record.expires_at <= datetime.now(UTC):
            raise NotFound(f"token {token_id[:64]!r} not found")
        if caller.kind != "api_key" and record.id != caller.id and caller.id not in record.ancestors:
            raise NotFound(f"token {token_id[:64]!r} not found")
        await self._store.revoke_service_token(token_id, datetime.now(UTC))
        self._revoked[token_id] = record.expires_at.timestamp()

    @staticmethod
    def _under(caller: Principal, record: ServiceTokenRecord) -> bool:
        """Listed for the caller: everything its API key minted, or what a token minted below it."""
        return caller.kind == "api_key" or caller.id in record.ancestors


def _patterns(principal: Principal) -> int:
    return sum(len(c.rpc or ()) for policy in principal.policies for c in policy)


def _principal(claims: dict[str, Any]) -> Principal:
    """The caller a verified token stands for. Raises ValueError/TypeError when malformed."""
    levels = claims["pol"]
    ancestors = claims.get("anc", [])
    access = "aud" in claims  # an OAuth access token: one more level, and its grant as ancestor
    if (
        not isinstance(levels, list)
        or not 1 <= len(levels) <= MAX_DEPTH + access
        or not isinstance(ancestors, list)
        # A service token's levels are its ancestors' and its own. An access token's are its
        # login's (a service token chain, or one level of a federated login) and its grant's.
        or not (1 <= len(ancestors) <= len(levels) if access else len(ancestors) == len(levels) - 1)
        or not all(isinstance(a, str) for a in ancestors)
        or not isinstance(claims["key"], str)
        or not isinstance(claims["jti"], str)
    ):
        raise ValueError("malformed token claims")
    policies = tuple(compile_policy(level) for level in levels)
    if access:
        return _access_principal(claims, policies, ancestors)
    if not claims["key"]:
        raise ValueError("a service token names the API key it was minted under")
    return Principal(
        kind="service_token",
        id=claims["jti"],
        name=claims["jti"],
        key_id=claims["key"],
        policies=policies,
        token_ids=(*ancestors, claims["jti"]),
        expires_at=float(claims["exp"]),
        claims=tuple(levels),
    )


def _access_principal(claims: dict[str, Any], policies: tuple[Any, ...], ancestors: list[str]) -> Principal:
    """The caller an OAuth access token stands for (kind "oauth")."""
    for name in ("aud", "ns", "cid", "scope", "sub"):
        if not isinstance(claims.get(name), str):
            raise ValueError("malformed access token claims")
    if not ancestors or not ancestors[-1].startswith("grt_"):
        raise ValueError("an access token's last ancestor is its grant")
    return Principal(
        kind="oauth",
        id=claims["jti"],
        name=claims["sub"],
        key_id=claims["key"],
        policies=policies,
        token_ids=(*ancestors, claims["jti"]),
        expires_at=float(claims["exp"]),
        claims=tuple(claims["pol"]),
        audience=claims["aud"],
        namespace=claims["ns"],
        client_id=claims["cid"],
        scope=claims["scope"],
    )


@dataclass(frozen=True)
class AccessGrant:
    """What an OAuth access token is issued from: a consented grant and the login behind it."""

    grant_id: str
    key_id: str  # the API key the login's chain began with; "" for a federated login
    token_ids: tuple[str, ...]  # the service token pasted at login, with its ancestors
    claims: tuple[Any, ...]  # the login's chain of policies
    level: list[dict[str, Any]]  # the consented narrowing (namespace, operations)
    login_expires_at: float
    audience: str
    namespace: str
    client_id: str
    scope: str
    subject: str
