"""Discovery documents: protected resource metadata (RFC 9728) for every MCP endpoint, and the
authorization server's metadata (RFC 8414, also at the OpenID discovery path).

Every URL comes from the configured public URL, never from the request's Host, so the documents
are right behind a TLS terminator. The endpoints sit at the root paths (`/authorize`, `/token`,
`/register`) because Claude builds them from the MCP server's origin whatever the metadata says.
"""

from __future__ import annotations

import re
from typing import Any, Final

from proxy.auth.middleware import SCOPES
from proxy.errors import OAuthError
from proxy.settings import Settings

_NAME: Final = r"[A-Za-z0-9_-]{1,64}"
# The MCP endpoints a token may be asked for, as paths below the public URL; the group is the
# namespace (none: `/mcp` itself or the whole gateway, the namespace is chosen at consent).
_RESOURCE_PATHS: Final = (
    re.compile(r"(?:/mcp)?"),
    re.compile(rf"/mcp/({_NAME})(?:/{_NAME})?"),
    re.compile(rf"/connect/({_NAME})/{_NAME}/mcp"),
)


def protected_resource(settings: Settings, path: str) -> dict[str, Any]:
    """The metadata of the resource at `path` ("" or "/" for the gateway as a whole)."""
    base = settings.effective_public_url
    return {
        "resource": base + (path if path not in ("", "/") else ""),
        "authorization_servers": [base],
        "scopes_supported": list(SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-junction",
    }


def authorization_server(settings: Settings) -> dict[str, Any]:
    issuer = settings.effective_public_url
    auth_methods = ["none", "client_secret_post", "client_secret_basic"]
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/authorize",
        "token_endpoint": issuer + "/token",
        "registration_endpoint": issuer + "/register",
        "revocation_endpoint": issuer + "/revoke",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "client_id_metadata_document_supported": True,
        "authorization_response_iss_parameter_supported": True,
    }


def resource_namespace(settings: Settings, resource: str | None) -> str | None:
    """The namespace a requested resource (RFC 8707) names, or None when it names none (`/mcp`,
    the gateway's root). Raise invalid_target for anything that is not one of our endpoints."""
    if not resource:
        raise OAuthError(
            "invalid_target", "the resource parameter (RFC 8707) is required: the MCP endpoint URL"
        )
    base = settings.effective_public_url
    if not resource.startswith(base):
        raise OAuthError("invalid_target", f"{resource[:200]!r} is not an MCP endpoint of this gateway")
    path = resource[len(base) :]
    for pattern in _RESOURCE_PATHS:
        match = pattern.fullmatch(path)
        if match is not None:
            return match.group(1) if match.groups() else None
    raise OAuthError("invalid_target", f"{resource[:200]!r} is not an MCP endpoint of this gateway")
