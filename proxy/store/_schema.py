"""Table definitions and numbered migrations."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
)

namespaces = sa.Table(
    "namespaces",
    metadata,
    sa.Column("name", sa.String(39), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("tool_names", sa.String(16), nullable=False, server_default="auto"),
)

connections = sa.Table(
    "connections",
    metadata,
    sa.Column(
        "namespace", sa.String(39), sa.ForeignKey("namespaces.name", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("connection_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("mcp_url", sa.Text, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=True),
    sa.Column("headers_ciphertext", sa.Text, nullable=True),
    sa.Column("header_names", sa.JSON, nullable=False),
    sa.Column("status", sa.JSON, nullable=False),
    sa.Column("server_info", sa.JSON, nullable=True),
    sa.Column("timeouts", sa.JSON, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
)

# Each migration is a list of tables created at that version; later versions add ALTERs here.
MIGRATIONS: list[list[sa.Table]] = [
    [namespaces, connections, api_keys],
]
