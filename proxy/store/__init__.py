"""Durable state: namespaces, connections, API keys. SQLite by default."""

from proxy.store._models import ApiKeyRecord, ConnectionRecord, NamespaceRecord
from proxy.store._sql import SqlStore, Store, open_store

__all__ = ["ApiKeyRecord", "ConnectionRecord", "NamespaceRecord", "SqlStore", "Store", "open_store"]
