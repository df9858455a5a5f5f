"""Typed settings, read once from `config.toml` and `JUNCTION_*` environment variables."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What MCP clients accept (issue 10), matched on the name a client gives itself in `initialize`:
# Cursor warns above ~40 tools and drops a tool whose server name plus tool name pass 60 characters
# (we assume the user names the server in 12 or fewer); Windsurf takes 100 tools over all servers
# together (half of that for us); VS Code 128 per request. `proxy/gateway/budget.py` applies them.
DEFAULT_TOOL_BUDGETS: tuple[dict[str, Any], ...] = (
    {"client": "cursor*", "budget": 40, "name_length": 60, "server_name_length": 12},
    {"client": "*windsurf*", "budget": 50},
    {"client": "visual studio code*", "budget": 128},
)
TOOL_BUDGET_KEYS = frozenset({"client", "budget", "name_length", "server_name_length"})
MIN_TOOL_BUDGET = 3  # two meta-tools and at least one tool
MIN_NAME_LENGTH = 24  # a shortened name keeps a few characters and `_` + an 8-character hash


@dataclass(frozen=True)
class Settings:
    """Every setting of the gateway; `config.example.toml` documents each one."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    database_url: str = ""
    public_url: str = ""
    admin_key: str = field(default="", repr=False)
    master_key: str = field(default="", repr=False)
    allow_private_upstreams: bool = False
    # Connections with `transport: "stdio"` run programs on this host (admin API keys only).
    allow_stdio_upstreams: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    allowed_origins: tuple[str, ...] = ()
    connect_timeout: float = 15.0
    list_timeout: float = 20.0
    call_timeout: float = 600.0
    fanout_timeout: float = 5.0
    session_idle_timeout: float = 900.0
    tools_cache_ttl: float = 300.0
    reconnect_backoff_max: float = 5.0
    upstream_max_connections: int = 100
    max_result_bytes: int = 32 * 1024 * 1024
    max_tool_pages: int = 1000
    listing_failure_ttl: float = 5.0
    max_legacy_sessions: int = 10_000
    stream_keepalive: float = 15.0
    token_sync_interval: float = 2.0
    tool_names: str = "auto"
    tool_budgets: tuple[dict[str, Any], ...] = DEFAULT_TOOL_BUDGETS
    log_level: str = "info"
    access_log: bool = False
    allow_undecryptable_rows: bool = False
    # The gateway as an OAuth authorization server (proxy/oauth_server/).
    oauth_login: tuple[str, ...] = ("key",)
    oauth_access_token_ttl: int = 3600
    oauth_grant_ttl: int = 30 * 86400
    oauth_clients: tuple[dict[str, Any], ...] = ()
    allow_private_client_metadata: bool = False
    oauth_ca_file: str = ""
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_identity_claim: str = "sub"
    oidc_scopes: str = "openid email profile"
    oidc_namespaces: tuple[str, ...] = ()
    oidc_name: str = "single sign-on"
    # The gateway as the OAuth client of upstreams, and servers' configuration (proxy/upstream_auth/).
    servers: tuple[dict[str, Any], ...] = ()
    upstream_oauth_clients: tuple[dict[str, Any], ...] = ()
    setup_link_ttl: int = 7 * 86400
    upstream_refresh_poll: float = 5.0

    def __post_init__(self) -> None:
        if self.tool_names not in ("auto", "dotted", "safe", "bare"):
            raise ConfigError("tool_names must be one of auto, dotted, safe, bare")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if self.max_header_bytes < 1024:
            raise ConfigError("max_header_bytes must be at least 1024")
        for origin in self.allowed_origins:
            if origin != "*" and normalize_origin(origin) is None:
                raise ConfigError(
                    f"allowed_origins: {origin[:100]!r} is not an origin like https://app.example.com (or *)"
                )
        for name in (
            "connect_timeout",
            "list_timeout",
            "call_timeout",
            "fanout_timeout",
            "session_idle_timeout",
            "stream_keepalive",
            "token_sync_interval",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        self._check_oauth()
        self._check_upstreams()
        self._check_tool_budgets()

    def _check_tool_budgets(self) -> None:
        for rule in self.tool_budgets:
            unknown = set(rule) - TOOL_BUDGET_KEYS
            if unknown:
                raise ConfigError(f"tool_budgets: unknown keys {', '.join(sorted(unknown))}")
            client = rule.get("client")
            if not isinstance(client, str) or not 1 <= len(client) <= 200:
                raise ConfigError('each of tool_budgets needs a client pattern like "cursor*"')
            budget, length = rule.get("budget"), rule.get("name_length")
            reserve = rule.get("server_name_length", 0)
            if budget is not None and (type(budget) is not int or budget < MIN_TOOL_BUDGET):
                raise ConfigError(f"tool_budgets: the budget of {client!r} must be an integer >= 3")
            if length is not None and (type(length) is not int or not MIN_NAME_LENGTH <= length <= 128):
                raise ConfigError(f"tool_budgets: the name_length of {client!r} must be 24 to 128")
            if type(reserve) is not int or not 0 <= reserve <= (length or 128) - MIN_NAME_LENGTH:
                raise ConfigError(
                    f"tool_budgets: the server_name_length of {client!r} must leave 24 characters"
                )

    def _check_upstreams(self) -> None:
        names: set[str] = set()
        for server in self.servers:
            name, url = server.get("name"), server.get("url")
            if (
                not isinstance(name, str)
                or not re.fullmatch(r"[A-Za-z0-9@/._-]{1,128}", name)
                or "://" in name
            ):
                raise ConfigError("each of servers needs a name of letters, digits and @/._- (no URL)")
            if name in names:
                raise ConfigError(f"servers: {name!r} is listed twice")
            names.add(name)
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"servers: {name!r} needs an http(s) url")
            unknown = set(server) - {
                "name", "url", "description", "config_schema", "oauth_client_id", "oauth_client_secret",
                "oauth_auth_method",
            }  # fmt: skip
            if unknown:
                raise ConfigError(f"servers: {name!r} has unknown keys {', '.join(sorted(unknown))}")
            schema = server.get("config_schema")
            if isinstance(schema, str):
                try:
                    server["config_schema"] = json.loads(schema)
                except ValueError as exc:
                    raise ConfigError(f"servers: the config_schema of {name!r} is not JSON") from exc
        for client in self.upstream_oauth_clients:
            if not isinstance(client.get("issuer"), str) or not isinstance(client.get("client_id"), str):
                raise ConfigError("each of upstream_oauth_clients needs an issuer and a client_id")
        if self.setup_link_ttl < 300:
            raise ConfigError("setup_link_ttl must be at least 300 seconds")
        if self.upstream_refresh_poll <= 0:
            raise ConfigError("upstream_refresh_poll must be positive")

    def server(self, name: str) -> dict[str, Any] | None:
        """The catalog entry `name` (`servers` in config.toml), or None."""
        return next((s for s in self.servers if s.get("name") == name), None)

    def _check_oauth(self) -> None:
        unknown = set(self.oauth_login) - {"key", "oidc"}
        if unknown or not self.oauth_login:
            raise ConfigError('oauth_login must list one or more of "key" and "oidc"')
        if "oidc" in self.oauth_login and not (self.oidc_issuer and self.oidc_client_id):
            raise ConfigError(
                'oauth_login "oidc" needs oidc_issuer and oidc_client_id (and usually a secret)'
            )
        if not 60 <= self.oauth_access_token_ttl <= 86400:
            raise ConfigError("oauth_access_token_ttl must be between 60 and 86400 seconds")
        if not 300 <= self.oauth_grant_ttl <= 365 * 86400:
            raise ConfigError("oauth_grant_ttl must be between 300 seconds and 365 days")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.oidc_identity_claim):
            raise ConfigError("oidc_identity_claim must be a claim name like sub or email")
        for client in self.oauth_clients:
            redirects = client.get("redirect_uris")
            if (
                not isinstance(client.get("client_id"), str)
                or not client["client_id"]
                or not isinstance(redirects, list)
                or not redirects
                or not all(isinstance(r, str) for r in redirects)
            ):
                raise ConfigError("each of oauth_clients needs a client_id and a list of redirect_uris")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_path / 'junction.db').resolve()}"

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @cached_property
    def origin_allowlist(self) -> frozenset[str]:
        """Normalized allowed `Origin` values: `allowed_origins` and the public URL's origin ("*": any)."""
        url = urlsplit(self.effective_public_url)
        public = normalize_origin(f"{url.scheme}://{url.netloc}")  # the public URL may have a path
        listed = {o if o == "*" else normalize_origin(o) for o in self.allowed_origins}
        return frozenset(o for o in (*listed, public) if o is not None)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        config_file: str | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings: defaults, then the TOML file, then `JUNCTION_*` env, then explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_file or env.get("JUNCTION_CONFIG")
        if path is None and Path("config.toml").is_file():
            path = "config.toml"
        known = {f.name: f for f in fields(cls)}
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except FileNotFoundError as exc:
                raise ConfigError(f"config file {path} not found") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
            for key, value in data.items():
                if key not in known:
                    raise ConfigError(f"unknown setting {key!r} in {path}")
                values[key] = _coerce(key, known[key].type, value)
        for name, f in known.items():
            raw = env.get(f"JUNCTION_{name.upper()}")
            if raw is not None:
                values[name] = _coerce(f"JUNCTION_{name.upper()}", f.type, raw)
        for key, value in overrides.items():
            if value is not None:
                values[key] = _coerce(key, known[key].type, value)
        return cls(**values)


def normalize_origin(value: str) -> str | None:
    """`scheme://host[:port]` as browsers send it in `Origin` (lower case, no default port), or None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if (
        not _SCHEME.fullmatch(scheme)
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{scheme}://{host}:{port}"


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    type_name = str(type_name)
    if type_name == "tuple[dict[str, Any], ...]":
        # A TOML array of tables, or JSON text (the environment).
        try:
            items = json.loads(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ConfigError(f"setting {name} must be a list of tables (JSON in the environment)") from exc
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ConfigError(f"setting {name} must be a list of tables (JSON in the environment)")
        return tuple(items)
    if type_name == "tuple[str, ...]":
        # A TOML list, or a comma-separated string (the environment).
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(
                f"setting {name} must be a list of strings (comma-separated in the environment)"
            )
        return tuple(i.strip() for i in items if i.strip())
    try:
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if type_name == "int":
            return int(value)
        if type_name == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name} has an invalid value for type {type_name}") from exc
