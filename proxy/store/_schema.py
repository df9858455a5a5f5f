"""Table definitions and numbered migrations."""

from __future__ import annotations

from typing import Any

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
    sa.Column("tool_budget", sa.Integer, nullable=True),  # added in migration 5
    sa.Column("curated_tools", sa.JSON, nullable=True),  # added in migration 5
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
    sa.Column("setup", sa.JSON, nullable=True),  # added in migration 4
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

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(32), primary_key=True),
    # The Ed25519 private key, sealed by the vault (bound to this kid); the public key in the clear.
    sa.Column("private_sealed", sa.Text, nullable=False),
    sa.Column("public_pem", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
)

service_tokens = sa.Table(
    "service_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key_id", sa.String(64), nullable=False, index=True),
    sa.Column("parent_id", sa.String(32), nullable=True),
    sa.Column("ancestors", sa.JSON, nullable=False),  # ids of every token above it, root first
    sa.Column("policy", sa.JSON, nullable=False),  # this level's constraints (claims)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True, index=True),
)

# The gateway as an OAuth authorization server (proxy/oauth_server/). Secrets are stored as hashes.
oauth_clients = sa.Table(
    "oauth_clients",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("metadata", sa.JSON, nullable=False),  # the registered client metadata (RFC 7591)
    sa.Column("secret_hash", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

oauth_grants = sa.Table(
    "oauth_grants",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("client_id", sa.String(2048), nullable=False),
    sa.Column("client_name", sa.String(255), nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("namespace", sa.String(39), nullable=False),
    sa.Column("scope", sa.String(255), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False, index=True),
    sa.Column("login", sa.JSON, nullable=False),  # who consented, and the chain their grant narrows
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True, index=True),
)

oauth_codes = sa.Table(
    "oauth_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("grant_id", sa.String(32), nullable=False),
    sa.Column("code_challenge", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
)

oauth_refresh_tokens = sa.Table(
    "oauth_refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("grant_id", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
)

# The gateway as the OAuth client of upstreams (proxy/upstream_auth/). Tokens and client secrets
# are sealed by the vault; what schedules refreshes (times, versions, leases) is in the clear.
upstream_clients = sa.Table(
    "upstream_clients",
    metadata,
    # One registration per authorization server and callback URL, reused by every connection.
    sa.Column("issuer", sa.String(2048), primary_key=True),
    sa.Column("redirect_uri", sa.String(2048), primary_key=True),
    sa.Column("sealed", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

upstream_auth = sa.Table(
    "upstream_auth",
    metadata,
    sa.Column("namespace", sa.String(39), primary_key=True),
    sa.Column("connection_id", sa.String(64), primary_key=True),
    sa.Column("discovered", sa.JSON, nullable=False),  # issuer, endpoints, resource, scope (public)
    sa.Column("tokens_sealed", sa.Text, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),  # +1 on every change of the tokens
    sa.Column("expires_at", sa.Float, nullable=True),  # epoch seconds, of the access token
    sa.Column("refresh_at", sa.Float, nullable=True, index=True),  # when to refresh (with jitter)
    sa.Column("lease_owner", sa.String(32), nullable=True),  # who is refreshing now
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

upstream_states = sa.Table(
    "upstream_states",
    metadata,
    sa.Column("state_hash", sa.String(64), primary_key=True),
    sa.Column("namespace", sa.String(39), nullable=False),
    sa.Column("connection_id", sa.String(64), nullable=False),
    sa.Column("sealed", sa.Text, nullable=False),  # the PKCE verifier and what the callback checks
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

# Each migration is a list of tables created, and of columns added, at that version.
MIGRATIONS: list[list[sa.Table | sa.Column[Any]]] = [
    [namespaces, connections, api_keys],
    [signing_keys, service_tokens],
    [oauth_clients, oauth_grants, oauth_codes, oauth_refresh_tokens],
    [
        # How the connection is configured: catalog server, config schema, the app's return URL.
        sa.Column("setup", sa.JSON, nullable=True),
        upstream_clients,
        upstream_auth,
        upstream_states,
    ],
    [
        # Tool budgets: how many tools `tools/list` shows, and which always (proxy/gateway/budget.py).
        sa.Column("tool_budget", sa.Integer, nullable=True),
        sa.Column("curated_tools", sa.JSON, nullable=True),
    ],
]
ADDED_TO = {
    "setup": connections,
    "tool_budget": namespaces,
    "curated_tools": namespaces,
}  # the table each added column belongs to
