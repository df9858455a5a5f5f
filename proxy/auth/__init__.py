"""Who is calling (authentication) and what they may do (policy)."""

from proxy.auth.keys import ApiKeys, IssuedKey
from proxy.auth.middleware import Authenticate, Authentication, Authenticator
from proxy.auth.policy import ANY, Principal, allows, require, require_mcp
from proxy.auth.tokens import ServiceTokens

__all__ = [
    "ANY",
    "ApiKeys",
    "Authenticate",
    "Authentication",
    "Authenticator",
    "IssuedKey",
    "Principal",
    "ServiceTokens",
    "allows",
    "require",
    "require_mcp",
]
