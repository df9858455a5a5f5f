"""OAuth clients of the gateway's authorization server, from three sources:

- client ID metadata documents (CIMD, preferred by the 2025-11-25 spec and ChatGPT): the client id
  is an HTTPS URL; we fetch the JSON it serves (SSRF-checked, 64 KiB and 5 s at most, cached for
  five minutes) and it must name itself (`client_id` equal to the URL);
- dynamic registration (RFC 7591, what Claude, Cursor, Inspector and mcp-remote use today): the
  metadata is stored, the secret (for confidential clients) only as a hash;
- clients listed in the configuration (`oauth_clients`).

Redirect URIs are matched exactly. A registered one must be HTTPS, plain HTTP on a loopback host
(desktop apps, RFC 8252), or an app's own scheme (`cursor://...`); never a script or data URL.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import anyio
import httpx2

from proxy import wirejson
from proxy.errors import OAuthError, UpstreamRefused
from proxy.settings import Settings
from proxy.store import OAuthClientRecord, OAuthStore
from proxy.upstream._pinned import pinned_transport

AuthMethod = Literal["none", "client_secret_post", "client_secret_basic"]
AUTH_METHODS: Final = ("none", "client_secret_post", "client_secret_basic")
MAX_DOCUMENT: Final = 64 * 1024
FETCH_TIMEOUT: Final = 5.0
CACHE_SECONDS: Final = 300.0
FAILURE_CACHE_SECONDS: Final = 60.0
_CACHE_SIZE: Final = 1000
_FORBIDDEN_SCHEMES: Final = frozenset(
    {"javascript", "data", "file", "vbscript", "about", "blob", "filesystem"}
)
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Client:
    """A client the authorization server knows, whatever its source."""

    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    auth_method: AuthMethod
    source: Literal["metadata_document", "registered", "configured"]
    secret_hash: str | None = None
    client_uri: str | None = None

    def check_redirect(self, redirect_uri: str | None) -> str:
        """The redirect URI to use: the one given, when registered exactly (or the only one).
        On a loopback IP over http any port is accepted (RFC 8252 §7.3: a desktop app listens
        on whatever port is free); nothing else of the URI may differ."""
        if redirect_uri is None and len(self.redirect_uris) == 1:
            return self.redirect_uris[0]
        if redirect_uri in self.redirect_uris:
            return redirect_uri
        if redirect_uri is not None and any(_same_but_port(redirect_uri, r) for r in self.redirect_uris):
            return redirect_uri
        raise OAuthError("invalid_request", "redirect_uri is not one this client registered")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_redirect_uri(uri: Any) -> str:
    """Validate one redirect URI a client registers; raise invalid_redirect_uri."""
    if not isinstance(uri, str) or not 1 <= len(uri) <= 2000:
        raise OAuthError(
            "invalid_redirect_uri", "each redirect URI must be a string of at most 2000 characters"
        )
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise OAuthError("invalid_redirect_uri", f"redirect URI {uri[:100]!r} is not a URL") from exc
    scheme = parts.scheme.lower()
    if not scheme or parts.fragment or scheme in _FORBIDDEN_SCHEMES or parts.username or parts.password:
        raise OAuthError("invalid_redirect_uri", f"redirect URI {uri[:100]!r} is not allowed")
    if scheme == "http" and (parts.hostname or "") not in _LOOPBACK_NAMES:
        raise OAuthError(
            "invalid_redirect_uri", f"redirect URI {uri[:100]!r}: plain http is only for loopback hosts"
        )
    if scheme in ("http", "https") and not parts.hostname:
        raise OAuthError("invalid_redirect_uri", f"redirect URI {uri[:100]!r} has no host")
    return uri


class Clients:
    """Looks clients up (fetching metadata documents), registers new ones, authenticates them."""

    def __init__(self, store: OAuthStore, settings: Settings):
        self._store = store
        self._allow_private = settings.allow_private_client_metadata
        self._configured = {c.client_id: c for c in map(_configured, settings.oauth_clients)}
        self._documents: dict[str, tuple[float, Client | OAuthError]] = {}  # url -> (until, answer)
        verify = ssl.create_default_context()
        if settings.oauth_ca_file:
            verify.load_verify_locations(settings.oauth_ca_file)
        self._http = httpx2.AsyncClient(
            transport=pinned_transport(self._allow_private, verify=verify),
            timeout=FETCH_TIMEOUT,
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, client_id: str | None) -> Client:
        """The client with this id; raise invalid_client when there is none."""
        if not client_id or len(client_id) > 2000:
            raise OAuthError("invalid_client", "client_id is missing or too long", status=401)
        if client_id in self._configured:
            return self._configured[client_id]
        if client_id.startswith(("https://", "http://")):
            return await self._document(client_id)
        record = await self._store.client(client_id)
        if record is None:
            raise OAuthError("invalid_client", f"unknown client {client_id[:64]!r}", status=401)
        meta = record.metadata
        return Client(
            client_id=record.client_id,
            name=meta.get("client_name") or record.client_id,
            redirect_uris=tuple(meta["redirect_uris"]),
            auth_method=meta["token_endpoint_auth_method"],
            source="registered",
            secret_hash=record.secret_hash,
            client_uri=meta.get("client_uri"),
        )

    # --- dynamic registration ---------------------------------------------------------------
    async def register(self, body: Any) -> dict[str, Any]:
        """RFC 7591: store the client's metadata and answer its id (and secret, once)."""
        if not isinstance(body, dict):
            raise OAuthError("invalid_client_metadata", "the registration request must be a JSON object")
        redirects = body.get("redirect_uris")
        if not isinstance(redirects, list) or not 1 <= len(redirects) <= 20:
            raise OAuthError("invalid_redirect_uri", "redirect_uris must be a list of 1-20 URIs")
        method = body.get("token_endpoint_auth_method", "client_secret_basic")
        if method not in AUTH_METHODS:
            raise OAuthError(
                "invalid_client_metadata",
                f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}",
            )
        grant_types = body.get("grant_types", ["authorization_code"])
        if not isinstance(grant_types, list) or not set(grant_types) <= {
            "authorization_code",
            "refresh_token",
        }:
            raise OAuthError(
                "invalid_client_metadata", "grant_types may hold authorization_code and refresh_token only"
            )
        response_types = body.get("response_types", ["code"])
        if response_types != ["code"]:
            raise OAuthError("invalid_client_metadata", 'response_types must be ["code"]')
        application_type = body.get("application_type", "web")
        if application_type not in ("web", "native"):
            raise OAuthError("invalid_client_metadata", 'application_type must be "web" or "native"')
        metadata: dict[str, Any] = {
            "redirect_uris": [check_redirect_uri(u) for u in redirects],
            "token_endpoint_auth_method": method,
            "grant_types": grant_types,
            "response_types": ["code"],
            "application_type": application_type,
        }
        for name in ("client_name", "client_uri", "logo_uri", "scope", "software_id", "software_version"):
            value = body.get(name)
            if value is not None:
                if not isinstance(value, str) or len(value) > 255:
                    raise OAuthError(
                        "invalid_client_metadata", f"{name} must be a string of at most 255 characters"
                    )
                metadata[name] = value
        client_id = "jc_" + secrets.token_urlsafe(16)
        secret = "jcs_" + secrets.token_urlsafe(32) if method != "none" else None
        now = datetime.now(UTC)
        await self._store.add_client(
            OAuthClientRecord(
                client_id=client_id,
                metadata=metadata,
                created_at=now,
                secret_hash=hash_secret(secret) if secret else None,
            )
        )
        answer = {"client_id": client_id, "client_id_issued_at": int(now.timestamp()), **metadata}
        if secret is not None:
            answer["client_secret"] = secret
            answer["client_secret_expires_at"] = 0
        return answer

    # --- client authentication at the token and revocation endpoints ------------------------
    @staticmethod
    def authenticate(client: Client, secret: str | None, method: AuthMethod) -> None:
        """Check the client's credentials as it registered to send them (constant time)."""
        if client.auth_method == "none":
            if secret:  # a public client has no secret to send; one that sends one is confused
                raise OAuthError("invalid_client", "this client is public and has no secret", status=401)
            return
        if client.secret_hash is None or secret is None:
            raise OAuthError("invalid_client", "client authentication is required", status=401)
        if not hmac.compare_digest(hash_secret(secret), client.secret_hash):
            raise OAuthError("invalid_client", "client authentication failed", status=401)
        # Either way of sending a secret is accepted: clients often pick one regardless of registration.
        del method

    # --- client ID metadata documents -------------------------------------------------------
    async def _document(self, url: str) -> Client:
        cached = self._documents.get(url)
        if cached is not None and time.monotonic() < cached[0]:
            if isinstance(cached[1], OAuthError):
                raise cached[1]
            return cached[1]
        answer: Client | OAuthError
        try:
            answer = await self._fetch(url)
        except OAuthError as exc:
            answer = exc
        if len(self._documents) >= _CACHE_SIZE:
            self._documents.clear()
        # A failure is remembered too (for less long): an unauthenticated request naming a slow
        # or broken URL costs one fetch per minute, not one per request.
        ttl = FAILURE_CACHE_SECONDS if isinstance(answer, OAuthError) else CACHE_SECONDS
        self._documents[url] = (time.monotonic() + ttl, answer)
        if isinstance(answer, OAuthError):
            raise answer
        return answer

    async def _fetch(self, url: str) -> Client:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise OAuthError("invalid_client", "the client id is not a valid URL", status=401) from exc
        loopback = _is_loopback(parts.hostname or "")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback and self._allow_private):
            raise OAuthError("invalid_client", "a client ID metadata document URL must be https", status=401)
        if parts.path in ("", "/") or parts.fragment or parts.username or parts.password:
            raise OAuthError("invalid_client", "a client ID metadata document URL needs a path", status=401)
        try:
            with anyio.fail_after(FETCH_TIMEOUT):
                async with self._http.stream("GET", url, headers={"accept": "application/json"}) as response:
                    if response.status_code != 200:
                        raise OAuthError(
                            "invalid_client",
                            f"the client's metadata document answered HTTP {response.status_code}",
                            status=401,
                        )
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT:
                            raise OAuthError(
                                "invalid_client", "the client's metadata document is over 64 KiB", status=401
                            )
        except UpstreamRefused as exc:
            raise OAuthError(
                "invalid_client",
                f"the client's metadata document is at an address this gateway does not fetch from "
                f"({(parts.hostname or '')[:100]}); loopback and private addresses are allowed only with "
                "allow_private_client_metadata (JUNCTION_ALLOW_PRIVATE_CLIENT_METADATA=1)",
                status=401,
            ) from exc
        except (httpx2.HTTPError, httpx2.InvalidURL, TimeoutError, OSError, ValueError) as exc:
            raise OAuthError(
                "invalid_client", "the client's metadata document could not be fetched", status=401
            ) from exc
        try:
            document = wirejson.loads_strict(bytes(body))
        except ValueError as exc:
            raise OAuthError(
                "invalid_client", "the client's metadata document is not JSON", status=401
            ) from exc
        if not isinstance(document, dict) or document.get("client_id") != url:
            raise OAuthError(
                "invalid_client", "the client's metadata document must name itself as client_id", status=401
            )
        redirects = document.get("redirect_uris")
        if not isinstance(redirects, list) or not 1 <= len(redirects) <= 20:
            raise OAuthError(
                "invalid_client", "the client's metadata document lists no redirect_uris", status=401
            )
        method = document.get("token_endpoint_auth_method", "none")
        if method != "none":
            raise OAuthError(
                "invalid_client",
                "a client identified by a metadata document must be public (token_endpoint_auth_method none)",
                status=401,
            )
        try:
            uris = tuple(check_redirect_uri(u) for u in redirects)
        except OAuthError as exc:
            raise OAuthError("invalid_client", exc.message, status=401) from exc
        name = document.get("client_name")
        client_uri = document.get("client_uri")
        return Client(
            client_id=url,
            name=name[:255] if isinstance(name, str) and name else parts.hostname or url,
            redirect_uris=uris,
            auth_method="none",
            source="metadata_document",
            client_uri=client_uri if isinstance(client_uri, str) else None,
        )


def _configured(entry: dict[str, Any]) -> Client:
    secret = entry.get("client_secret")
    return Client(
        client_id=entry["client_id"],
        name=entry.get("client_name") or entry["client_id"],
        redirect_uris=tuple(check_redirect_uri(u) for u in entry["redirect_uris"]),
        auth_method=entry.get("token_endpoint_auth_method", "client_secret_basic" if secret else "none"),
        source="configured",
        secret_hash=hash_secret(secret) if secret else None,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _same_but_port(given: str, registered: str) -> bool:
    """Whether two http URIs on a loopback IP literal differ in their port alone."""
    try:
        a, b = urlsplit(given), urlsplit(registered)
        if a.scheme != "http" or b.scheme != "http" or a.hostname != b.hostname:
            return False
        ipaddress.ip_address(a.hostname or "")  # an IP literal: "localhost" may resolve elsewhere
        a.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return _is_loopback(a.hostname or "") and (a.path, a.query, a.fragment) == (b.path, b.query, b.fragment)
