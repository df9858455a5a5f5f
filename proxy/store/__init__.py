"""Durable state: namespaces, connections, API keys, service tokens. SQLite by default."""

from proxy.store._models import (
    ApiKeyRecord,
    AuthCodeRecord,
    ConnectionRecord,
    NamespaceRecord,
    OAuthClientRecord,
    OAuthGrantRecord,
    ServiceTokenRecord,
    SigningKeyRecord,
)
from proxy.store._oauth import OAuthStore
from proxy.store._sql import SqlStore, Store, open_store

__all__ = [
    "ApiKeyRecord",
    "AuthCodeRecord",
    "ConnectionRecord",
    "NamespaceRecord",
    "OAuthClientRecord",
    "OAuthGrantRecord",
    "OAuthStore",
    "ServiceTokenRecord",
    "SigningKeyRecord",
    "SqlStore",
    "Store",
    "open_store",
]
