"""Names users choose: namespaces and connection ids, validated and generated."""

from __future__ import annotations

import re
import secrets

from proxy.errors import ValidationFailed

NAMESPACE_RE = re.compile(r"^[a-z0-9-]{3,39}$")
CONNECTION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Path words of the gateway's own routes (and of the API we are compatible with).
RESERVED_NAMESPACES = frozenset(
    {
        "namespaces", "tokens", "connect", "mcp", "health", "servers", "oauth", "setup", "keys",
        "skills", "organizations", "api", "uplink", "well-known", "admin", "static", "docs",
        "openapi", "login", "logout", "auth", "authorize", "token", "register", "callback", "revoke",
    }
)  # fmt: skip

_ADJECTIVES = (
    "amber", "bold", "brave", "calm", "clever", "cosmic", "crisp", "eager", "fuzzy", "gentle", "happy",
    "jolly", "keen", "lively", "lucky", "mellow", "nimble", "quiet", "rapid", "sunny", "swift", "tidy",
)  # fmt: skip
_ANIMALS = (
    "badger", "beaver", "crane", "dolphin", "falcon", "ferret", "gecko", "heron", "koala", "lynx",
    "marten", "otter", "panda", "puffin", "raven", "seal", "tapir", "walrus", "wombat", "yak",
)  # fmt: skip


def validate_namespace(name: object) -> str:
    if not isinstance(name, str) or not NAMESPACE_RE.match(name):
        raise ValidationFailed("namespace names are 3-39 characters of a-z, 0-9 and '-'")
    if name in RESERVED_NAMESPACES:
        raise ValidationFailed(f"{name!r} is a reserved word and cannot be a namespace name")
    return name


def validate_connection_id(value: object) -> str:
    if not isinstance(value, str) or not CONNECTION_ID_RE.match(value):
        raise ValidationFailed("connectionId must match ^[A-Za-z0-9_-]{1,64}$")
    return value


def generate_connection_id() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.token_urlsafe(3)[:4]}".replace(
        "_", "x"
    )


def generate_namespace() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{secrets.token_hex(2)}"
