"""Who is calling (authentication) and what they may do (policy)."""

from proxy.auth.keys import ApiKeys, IssuedKey
from proxy.auth.policy import Principal, allows, require

__all__ = ["ApiKeys", "IssuedKey", "Principal", "allows", "require"]
