"""The `oidc` login method: people sign in with an external OpenID Connect provider.

The gateway is an ordinary confidential OIDC client of the provider named in the configuration
(code flow, PKCE S256, a nonce, `client_secret_basic`). The identity claim of the verified ID
token (`oidc_identity_claim`, default `sub`) becomes a `metadata.userId` constraint: each person
sees only the connections made for them, in the namespaces `oidc_namespaces` allows (all if empty).
The provider is configured by the operator, so its URLs are trusted (no SSRF screening).
"""

from __future__ import annotations

import time
from typing import Any, Final
from urllib.parse import urlencode

import httpx2
import jwt

from proxy.errors import OAuthError
from proxy.oauth_server.flow import Login
from proxy.pkce import s256
from proxy.settings import Settings

_ALGORITHMS: Final = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
_METADATA_SECONDS: Final = 3600.0


class OidcLogin:
    """Starts and finishes a sign-in with the configured provider."""

    def __init__(self, settings: Settings, http: httpx2.AsyncClient):
        self._settings = settings
        self._http = http
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._keys: jwt.PyJWKSet | None = None

    @property
    def name(self) -> str:
        return self._settings.oidc_name

    async def authorization_url(self, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        """Where to send the person: the provider's sign-in, with our nonce and PKCE challenge."""
        metadata = await self._discover()
        challenge = s256(verifier)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._settings.oidc_client_id,
                "redirect_uri": redirect_uri,
                "scope": self._settings.oidc_scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        endpoint = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def finish(self, code: str, redirect_uri: str, nonce: str, verifier: str) -> Login:
        """Exchange the provider's code, verify its ID token, and say who signed in."""
        metadata = await self._discover()
        settings = self._settings
        try:
            response = await self._http.post(
                metadata["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": verifier,
                },
                auth=(settings.oidc_client_id, settings.oidc_client_secret),
                headers={"accept": "application/json"},
            )
            answer = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise OAuthError("server_error", "the sign-in provider could not be reached") from exc
        if response.status_code != 200 or not isinstance(answer, dict) or "id_token" not in answer:
            raise OAuthError("access_denied", "the sign-in provider did not confirm the sign-in")
        claims = await self._verify(str(answer["id_token"]), metadata["issuer"])
        if claims.get("nonce") != nonce:
            raise OAuthError("access_denied", "the sign-in provider's answer was not for this sign-in")
        if settings.oidc_identity_claim == "email" and claims.get("email_verified") is not True:
            # Anyone can put any address on an account at many providers: only a verified one
            # may stand for a person here.
            raise OAuthError("access_denied", "the sign-in provider has not verified this email address")
        identity = claims.get(settings.oidc_identity_claim)
        if not isinstance(identity, str) or not identity:
            raise OAuthError(
                "access_denied", f"the sign-in provider gave no {settings.oidc_identity_claim!r} claim"
            )
        expires = int(time.time()) + settings.oauth_grant_ttl
        level: dict[str, Any] = {
            "resources": ["connections"],
            "metadata": [{"userId": identity}],
            "exp": expires,
        }
        if settings.oidc_namespaces:
            level["namespaces"] = list(settings.oidc_namespaces)
        return Login(subject=identity, key_id="", claims=([level],), expires_at=float(expires))

    async def _discover(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() - self._metadata[0] < _METADATA_SECONDS:
            return self._metadata[1]
        # The issuer as configured is what the provider must call itself (some end in a slash);
        # the discovery document sits below it either way.
        issuer = self._settings.oidc_issuer
        try:
            response = await self._http.get(issuer.rstrip("/") + "/.well-known/openid-configuration")
            metadata = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise OAuthError("server_error", "the sign-in provider could not be reached") from exc
        if (
            not isinstance(metadata, dict)
            or metadata.get("issuer") != issuer
            or not all(
                isinstance(metadata.get(k), str)
                for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")
            )
        ):
            raise OAuthError("server_error", "the sign-in provider's discovery document is not usable")
        self._metadata = (time.monotonic(), metadata)
        self._keys = None
        return metadata

    async def _verify(self, id_token: str, issuer: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
            key = await self._key(kid)
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=_ALGORITHMS,
                audience=self._settings.oidc_client_id,
                issuer=issuer,
                leeway=30,  # the provider's clock and ours may differ by some seconds
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            raise OAuthError("access_denied", "the sign-in provider's ID token did not verify") from exc
        audience = claims["aud"]
        if (
            isinstance(audience, list)
            and len(audience) > 1
            and claims.get("azp") != self._settings.oidc_client_id
        ):
            # OIDC Core §3.1.3.7: a token for several parties must say it was issued to us.
            raise OAuthError("access_denied", "the sign-in provider's ID token was issued to another party")
        return claims

    async def _key(self, kid: Any) -> Any:
        for attempt in range(2):  # a key we do not know yet: the provider may have rotated
            if self._keys is None or attempt:
                metadata = await self._discover()
                try:
                    response = await self._http.get(metadata["jwks_uri"])
                    self._keys = jwt.PyJWKSet.from_dict(response.json())
                except (httpx2.HTTPError, ValueError, jwt.PyJWTError) as exc:
                    raise OAuthError("server_error", "the sign-in provider's keys could not be read") from exc
            signing = [k for k in self._keys.keys if k.public_key_use in (None, "sig")]
            if kid is None and len(signing) == 1:  # no kid: only an unambiguous key will do
                return signing[0].key
            for jwk in signing:
                if kid is not None and jwk.key_id == kid:
                    return jwk.key
        raise KeyError(kid)
