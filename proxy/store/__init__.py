"""Durable state: namespaces, connections, API keys, service tokens. SQLite by default."""

from proxy.store._models import (
    ApiKeyRecord,
    ConnectionRecord,
    NamespaceRecord,
    ServiceTokenRecord,
    SigningKeyRecord,
)
from proxy.store._sql import SqlStore, Store, open_store

__all__ = [
    "ApiKeyRecord",
    "ConnectionRecord",
    "NamespaceRecord",
    "ServiceTokenRecord",
    "SigningKeyRecord",
    "SqlStore",
    "Store",
    "open_store",
]
