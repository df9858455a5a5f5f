"""The OAuth client of the MCP authorization spec, as plain functions over one HTTP client.

Discovery follows the spec's order: the `resource_metadata` of the upstream's challenge, then the
RFC 9728 well-known URLs (path-inserted, then root); then RFC 8414 and OpenID Connect metadata for
the first authorization server, whose `issuer` must equal the one it was found under. The URL
builders and the challenge parsing are the `mcp` SDK's (`mcp.client.auth.utils`); documents are
parsed here as plain JSON so issuers are compared exactly as served (pydantic's URL type would add
a trailing slash). The HTTP client handed in is pinned by the SSRF policy; this module adds the
scheme rule, size limits and the checks of each document.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx2
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    issuers_match,
    union_scopes,
)

from proxy.upstream.credentials import Challenge

MAX_DOCUMENT_BYTES = 256 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class OAuthProblem(Exception):
    """Authorizing with the upstream cannot go on; the message says why (no secrets in it)."""


class InvalidGrant(OAuthProblem):
    """The authorization server refused the grant (a refresh token revoked, expired or reused)."""


@dataclass(frozen=True)
class ServerAuth:
    """What discovery found about one upstream's authorization (public, stored in the clear)."""

    resource: str
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str | None = None
    revocation_endpoint: str | None = None
    scope: str | None = None  # what we ask for
    iss_supported: bool = False
    cimd_supported: bool = False
    auth_methods: tuple[str, ...] = ("client_secret_basic",)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "auth_methods": list(self.auth_methods)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerAuth:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["auth_methods"] = tuple(known.get("auth_methods") or ())
        return cls(**known)


@dataclass(frozen=True)
class ClientRegistration:
    """Who the gateway is at one authorization server. `client_secret` is a secret."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    auth_method: str = "none"  # none | client_secret_basic | client_secret_post
    source: str = "registered"  # configured | metadata_document | registered

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientRegistration:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def check_endpoint(url: str, allow_http: bool) -> str:
    """An OAuth URL from an upstream's documents: absolute https (http only where loopback and
    private upstreams are allowed, for development), without credentials or a fragment."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise OAuthProblem(f"the upstream's OAuth metadata has an invalid URL {url[:200]!r}") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment or parts.username:
        raise OAuthProblem(f"the upstream's OAuth metadata has an invalid URL {url[:200]!r}")
    if parts.scheme == "http" and not allow_http:
        raise OAuthProblem(f"the upstream's OAuth endpoint {url[:200]!r} is not https")
    return url


async def get_json(http: httpx2.AsyncClient, url: str) -> tuple[int, Any]:
    """GET a JSON document (status, parsed body or None), reading at most MAX_DOCUMENT_BYTES."""
    async with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
        body = await _read_limited(response)
        if response.status_code != 200:
            return response.status_code, None
    try:
        return 200, json.loads(body)
    except ValueError:
        return 200, None


async def _post(http: httpx2.AsyncClient, url: str, **request: Any) -> tuple[int, Any]:
    """POST, and the status with the JSON answer (None when it is not JSON), size-limited."""
    async with http.stream("POST", url, **request) as response:
        raw = await _read_limited(response)
    try:
        return response.status_code, json.loads(raw)
    except ValueError:
        return response.status_code, None


async def _read_limited(response: httpx2.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise OAuthProblem(f"an OAuth document of the upstream is larger than {MAX_DOCUMENT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _same_resource(resource: str, mcp_url: str) -> bool:
    """RFC 9728 §3.3: the metadata is about this server: same origin, and the resource is the
    MCP URL or a path above it."""
    r, u = urlsplit(resource), urlsplit(mcp_url)
    if (r.scheme, r.netloc.lower()) != (u.scheme, u.netloc.lower()):
        return False
    path = r.path.rstrip("/")
    return u.path == r.path or u.path.rstrip("/") == path or u.path.startswith(path + "/")


async def discover(
    http: httpx2.AsyncClient,
    mcp_url: str,
    challenge: Challenge,
    *,
    allow_http: bool,
    previous: ServerAuth | None = None,
) -> ServerAuth:
    """Find the upstream's authorization server and what to ask it for."""
    resource_url = mcp_url.split("?", 1)[0].split("#", 1)[0]
    prm: dict[str, Any] | None = None
    hinted = challenge.resource_metadata
    if hinted:
        check_endpoint(hinted, allow_http)
    for url in build_protected_resource_metadata_discovery_urls(hinted, resource_url):
        status, doc = await get_json(http, url)
        if status == 200 and isinstance(doc, dict) and doc.get("authorization_servers"):
            prm = doc
            break
    if prm is not None:
        resource = prm.get("resource")
        if not isinstance(resource, str) or not _same_resource(resource, resource_url):
            raise OAuthProblem(
                f"the upstream's protected resource metadata is about {str(resource)[:200]!r}, "
                f"not {resource_url!r}"
            )
        servers = prm["authorization_servers"]
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise OAuthProblem("the upstream's protected resource metadata lists no authorization server")
        issuer: str | None = servers[0]
        check_endpoint(servers[0], allow_http)
    else:
        # 2025-03-26 servers: no resource metadata, the authorization server at the same origin.
        resource, issuer = resource_url, None
    metadata = await _server_metadata(http, issuer, resource_url)
    expected = issuer or "{0.scheme}://{0.netloc}".format(urlsplit(resource_url))
    served = metadata.get("issuer")
    if not isinstance(served, str) or not issuers_match(served, expected):
        raise OAuthProblem(
            f"the authorization server's metadata names issuer {str(served)[:200]!r}, not {expected!r}"
        )
    methods = metadata.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise OAuthProblem("the upstream's authorization server does not support PKCE with S256")
    scope = challenge.scope
    if scope is None:
        scopes = prm.get("scopes_supported") if prm else None
        scope = " ".join(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else None
    if previous is not None and previous.issuer == served:
        scope = union_scopes(previous.scope, scope)
    offered = metadata.get("scopes_supported")
    if (
        scope
        and isinstance(offered, list)
        and "offline_access" in offered
        and "offline_access" not in scope.split()
    ):
        scope = f"{scope} offline_access"  # SEP-2207: ask for a refresh token where it must be asked for
    endpoints: dict[str, str | None] = {}
    for name in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint"):
        value = metadata.get(name)
        if value is None and name in ("registration_endpoint", "revocation_endpoint"):
            endpoints[name] = None
            continue
        if not isinstance(value, str):
            raise OAuthProblem(f"the upstream's authorization server metadata has no {name}")
        endpoints[name] = check_endpoint(value, allow_http)
    auth_methods = metadata.get("token_endpoint_auth_methods_supported")
    if not isinstance(auth_methods, list) or not auth_methods:
        auth_methods = ["client_secret_basic"]
    return ServerAuth(
        resource=resource,
        issuer=served,
        scope=scope or None,
        iss_supported=metadata.get("authorization_response_iss_parameter_supported") is True,
        cimd_supported=metadata.get("client_id_metadata_document_supported") is True,
        auth_methods=tuple(m for m in auth_methods if isinstance(m, str)),
        **endpoints,  # type: ignore[arg-type]
    )


async def _server_metadata(http: httpx2.AsyncClient, issuer: str | None, resource_url: str) -> dict[str, Any]:
    for url in build_oauth_authorization_server_metadata_discovery_urls(issuer, resource_url):
        status, doc = await get_json(http, url)
        if status == 200 and isinstance(doc, dict):
            return doc
        if status >= 500:
            break
    where = issuer or resource_url
    raise OAuthProblem(f"no OAuth authorization server metadata found for {where[:200]!r}")


async def register(
    http: httpx2.AsyncClient, auth: ServerAuth, redirect_uri: str, client_name: str, client_uri: str | None
) -> ClientRegistration:
    """RFC 7591 dynamic registration as a web application; a public client when the server
    allows it (no secret to keep), else the first method the server lists that we speak."""
    if not auth.registration_endpoint:
        raise OAuthProblem(
            f"the authorization server {auth.issuer} offers no client registration; configure an OAuth "
            "app for it (upstream_oauth_clients in config.toml)"
        )
    method = next(
        (m for m in ("none", "client_secret_basic", "client_secret_post") if m in auth.auth_methods),
        "client_secret_basic",
    )
    body: dict[str, Any] = {
        "client_name": client_name,
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
        "application_type": "web",
    }
    if client_uri:
        body["client_uri"] = client_uri
    if auth.scope:
        body["scope"] = auth.scope
    status, answer = await _post(http, auth.registration_endpoint, json=body)
    if (
        status not in (200, 201)
        or not isinstance(answer, dict)
        or not isinstance(answer.get("client_id"), str)
    ):
        raise OAuthProblem(
            f"the authorization server {auth.issuer} refused to register the gateway (HTTP {status})"
        )
    secret = answer.get("client_secret")
    granted = answer.get("token_endpoint_auth_method") or (method if secret or method == "none" else "none")
    return ClientRegistration(
        client_id=answer["client_id"],
        client_secret=secret if isinstance(secret, str) else None,
        auth_method=granted if isinstance(granted, str) else method,
        source="registered",
    )


def authorization_url(
    auth: ServerAuth, client: ClientRegistration, *, redirect_uri: str, state: str, code_challenge: str
) -> str:
    """The authorization request (PKCE S256, `state`, RFC 8707 `resource`, the chosen scope)."""
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        "resource": auth.resource,
    }
    if auth.scope:
        params["scope"] = auth.scope
    separator = "&" if urlsplit(auth.authorization_endpoint).query else "?"
    return f"{auth.authorization_endpoint}{separator}{urlencode(params)}"


def _client_auth(client: ClientRegistration, form: dict[str, str]) -> dict[str, str]:
    """Authenticate at the token endpoint the way the client was registered; the headers."""
    form["client_id"] = client.client_id
    if client.client_secret and client.auth_method == "client_secret_post":
        form["client_secret"] = client.client_secret
    elif client.client_secret and client.auth_method != "none":
        pair = f"{quote(client.client_id, safe='')}:{quote(client.client_secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {}


async def _token_request(
    http: httpx2.AsyncClient, auth: ServerAuth, client: ClientRegistration, form: dict[str, str]
) -> dict[str, Any]:
    headers = {"Accept": "application/json", **_client_auth(client, form)}
    status, answer = await _post(http, auth.token_endpoint, data=form, headers=headers)
    if status == 200 and isinstance(answer, dict) and isinstance(answer.get("access_token"), str):
        if not _B64TOKEN.fullmatch(answer["access_token"]):
            # It goes into a header line as it is: RFC 6750's characters only.
            raise OAuthProblem(
                "the authorization server issued an access token that is not a valid bearer token"
            )
        token_type = str(answer.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise OAuthProblem(f"the authorization server issued a {token_type[:40]!r} token, not Bearer")
        return answer
    error = answer.get("error") if isinstance(answer, dict) else None
    if error == "invalid_grant":
        raise InvalidGrant("the authorization server refused the grant (invalid_grant)")
    raise OAuthProblem(
        f"the authorization server's token endpoint answered HTTP {status}"
        + (f" ({str(error)[:80]})" if isinstance(error, str) else "")
    )


async def exchange_code(
    http: httpx2.AsyncClient,
    auth: ServerAuth,
    client: ClientRegistration,
    *,
    code: str,
    verifier: str,
    redirect_uri: str,
) -> dict[str, Any]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": redirect_uri,
        "resource": auth.resource,
    }
    return await _token_request(http, auth, client, form)


async def refresh(
    http: httpx2.AsyncClient, auth: ServerAuth, client: ClientRegistration, refresh_token: str
) -> dict[str, Any]:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "resource": auth.resource}
    return await _token_request(http, auth, client, form)


async def revoke(
    http: httpx2.AsyncClient, auth: ServerAuth, client: ClientRegistration, token: str, hint: str
) -> bool:
    """RFC 7009; True when the server accepted it."""
    if not auth.revocation_endpoint:
        return False
    form = {"token": token, "token_type_hint": hint}
    headers = _client_auth(client, form)
    status, _ = await _post(http, auth.revocation_endpoint, data=form, headers=headers)
    return status == 200
