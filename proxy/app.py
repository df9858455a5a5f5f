"""The gateway as one Starlette app: every route in one table, parts built in the lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from proxy import __version__, wirejson
from proxy._sdk import live_sessions
from proxy.api import connections, keys, namespaces, tokens, tools
from proxy.api._http import (
    error_response,
    gateway,
    json_response,
    json_rpc_errors,
    parse_json,
    principal,
    read_asgi_body,
    read_body,
)
from proxy.auth.cors import CorsMiddleware
from proxy.auth.keys import ApiKeys
from proxy.auth.middleware import PRINCIPAL_KEY, Authenticate, Authentication, is_mcp_path, send_error
from proxy.auth.policy import Principal, require, require_mcp
from proxy.auth.tokens import ServiceTokens
from proxy.directory import Directory
from proxy.errors import ConfigError, JunctionError, MethodNotAllowed, NotFound
from proxy.gateway.callers import LogLevels
from proxy.gateway.catalog import Catalog
from proxy.gateway.endpoint import NAMESPACE_KEY, RPC_KEY, build_namespace_server, build_session_manager
from proxy.gateway.events import NamespaceEvents
from proxy.gateway.fastpath import ToolCallFastPath
from proxy.gateway.mrtr import HeldCalls
from proxy.gateway.offerings import Offerings
from proxy.gateway.passthrough import Passthrough
from proxy.gateway.passthrough import error_response as rpc_error_response
from proxy.gateway.relay import Relay
from proxy.httpserver import GatewayHttpProtocol
from proxy.oauth_server import AuthorizationServer
from proxy.oauth_server import endpoints as oauth
from proxy.redact import LOG_REDACTION
from proxy.settings import Settings
from proxy.state import Gateway
from proxy.store import Store, open_store
from proxy.upstream import ConnectionPool
from proxy.upstream_auth import UpstreamAuth
from proxy.vault import Vault
from proxy.web import setup as upstream_setup

log = logging.getLogger("junction")


# --- small endpoints -------------------------------------------------------------------------
async def health(request: Request) -> Response:
    return json_response({"status": "ok", "version": __version__, "timestamp": datetime.now(UTC).isoformat()})


async def servers(request: Request) -> Response:
    require(principal(request), "read", "servers")
    # No registry yet; the empty catalog keeps `smithery auth login`'s key check working.
    page_size = request.query_params.get("pageSize", "10")
    size = int(page_size) if page_size.isdigit() and int(page_size) > 0 else 10
    return json_response(
        {"servers": [], "pagination": {"currentPage": 1, "pageSize": size, "totalPages": 0, "totalCount": 0}}
    )


# --- MCP surfaces ----------------------------------------------------------------------------
class NamespaceMCP:
    """`/mcp/{namespace}`: the SDK session manager, with the caller and namespace in the scope."""

    def __init__(self) -> None:
        self._users: dict[str, AuthenticatedUser] = {}

    def _user(self, caller: Principal) -> AuthenticatedUser:
        # The SDK binds legacy sessions to this identity; build it once per credential. An OAuth
        # client's is its grant: a session outlives the hourly refresh of its access token.
        identity = caller.token_ids[-2] if caller.kind == "oauth" else caller.id
        user = self._users.get(identity)
        if user is None:
            if len(self._users) > 10_000:
                self._users.clear()
            user = AuthenticatedUser(AccessToken(token=identity, client_id=identity, scopes=[]))
            self._users[identity] = user
        return user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw: Gateway = scope["app"].state.gateway
        caller = scope[PRINCIPAL_KEY]
        namespace = scope["path_params"].get("namespace") or _home(caller)
        if namespace is None:
            exc = NotFound(
                "/mcp serves the namespace chosen when signing in with OAuth; "
                "with an API key or service token, use /mcp/{namespace}"
            )
            await send_error(scope, send, exc)
            return
        try:
            if not caller.admin:  # first: a namespace out of reach is not even looked up
                require_mcp(caller, None, namespace)
            await gw.directory.namespace(namespace)
        except JunctionError as exc:
            await send_error(scope, send, exc)  # JSON-RPC, with the REST code in `data.error`
            return
        scope[NAMESPACE_KEY] = namespace
        scope["user"] = self._user(caller)
        if scope["method"] == "POST":
            try:
                body = await read_asgi_body(scope, receive, gw.settings.max_body_bytes)
                if not caller.admin:  # the method decides the operation; rpcReqMatch sees it all
                    message = _message(body)
                    require_mcp(caller, message, namespace)
                    scope[RPC_KEY] = message
            except JunctionError as exc:
                await rpc_error_response(None, exc)(scope, receive, send)
                return
            try:
                handled = await gw.fast_path.handle(scope, body, receive, send, namespace, caller)
            except Exception:  # this route skips the exception middleware: answer, never crash
                log.exception("fast path failed on POST /mcp/%s", namespace)
                error = JunctionError("the gateway hit an unexpected error")
                await rpc_error_response(None, error)(scope, receive, send)
                return
            if handled:
                return
            try:
                parse_json(body)  # the SDK would take NaN, Infinity and lone surrogates
            except JunctionError as exc:
                await rpc_error_response(None, exc)(scope, receive, send)
                return
            send = gw.fast_path.watch_initialize(body, send)
            receive = _replay(body, receive)
        await gw.session_manager.handle_request(scope, receive, json_rpc_errors(send))


def _home(caller: Principal) -> str | None:
    """The namespace `/mcp` serves: the one chosen at OAuth consent, or the only one a service
    token may use."""
    if caller.namespace is not None:
        return caller.namespace
    bound = caller.namespace_bound()
    return next(iter(bound)) if bound is not None and len(bound) == 1 else None


def _message(body: bytes) -> dict[str, Any] | None:
    """The JSON-RPC message in a body, for the policy (None when it is not one: the JSON-RPC layer
    answers that; the policy then sees a request with no method)."""
    try:
        value = wirejson.loads_strict(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def connection_mcp(request: Request) -> Response:
    """`/mcp/{ns}/{id}` and `/connect/{ns}/{id}/mcp`: one connection, relayed or translated."""
    gw = gateway(request)
    namespace = request.path_params["namespace"]
    try:
        record = await gw.directory.connection(namespace, request.path_params["connection"])
        body = await read_body(request, gw.settings.max_body_bytes) if request.method == "POST" else b""
        caller = principal(request)
        if not caller.admin:
            require_mcp(caller, _message(body), namespace, record.metadata or {}, record.connection_id)
    except JunctionError as exc:
        return rpc_error_response(None, exc)
    return await gw.passthrough.handle(request, body, gw.directory.upstream_for(record), caller)


# --- errors ----------------------------------------------------------------------------------
async def on_junction_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JunctionError)
    return error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: JunctionError
    if exc.status_code == 404:
        error = NotFound(f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    else:
        return json_response({"error": "http_error", "message": str(exc.detail)}, exc.status_code)
    # An MCP client reads JSON-RPC, even about a path that does not exist.
    return rpc_error_response(None, error) if is_mcp_path(request.url.path) else error_response(error)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return json_response({"error": "internal_error", "message": "the gateway hit an unexpected error"}, 500)


NAMESPACE_MCP = NamespaceMCP()


# --- the route table -------------------------------------------------------------------------
def route(path: str, endpoint: Any, methods: list[str], *, public: bool = False) -> Route:
    """A route that authenticates its caller first, unless marked `public`."""
    middleware = None if public else [Middleware(Authenticate)]
    return Route(path, endpoint, methods=methods, middleware=middleware)


def _connect_routes(prefix: str) -> list[Route]:
    p = prefix
    return [
        route(f"{p}/{{namespace}}", connections.list_connections, ["GET"]),
        route(f"{p}/{{namespace}}", connections.create_connection, ["POST"]),
        route(f"{p}/{{namespace}}/.tools", tools.namespace_tools, ["GET"]),
        route(f"{p}/{{namespace}}/{{connection}}", connections.get_connection, ["GET"]),
        route(f"{p}/{{namespace}}/{{connection}}", connections.put_connection, ["PUT"]),
        route(f"{p}/{{namespace}}/{{connection}}", connections.delete_connection, ["DELETE"]),
        route(f"{p}/{{namespace}}/{{connection}}/.tools", tools.list_tools, ["GET"]),
        route(f"{p}/{{namespace}}/{{connection}}/.tools/{{tool_path:path}}", tools.get_tool, ["GET"]),
        route(f"{p}/{{namespace}}/{{connection}}/.tools/{{tool_path:path}}", tools.call_tool, ["POST"]),
    ]


ROUTES: list[Route] = [
    route("/health", health, ["GET"], public=True),
    # OAuth: discovery, and the authorization server at the root paths Claude builds for itself.
    route(
        "/.well-known/oauth-protected-resource{resource:path}",
        oauth.protected_resource_metadata,
        ["GET"],
        public=True,
    ),
    route(
        "/.well-known/oauth-authorization-server{rest:path}",
        oauth.authorization_server_metadata,
        ["GET"],
        public=True,
    ),
    route(
        "/.well-known/openid-configuration{rest:path}",
        oauth.authorization_server_metadata,
        ["GET"],
        public=True,
    ),
    route("/authorize", oauth.authorize, ["GET"], public=True),
    route("/authorize/login", oauth.login, ["POST"], public=True),
    route("/authorize/oidc", oauth.login_oidc, ["POST"], public=True),
    route("/authorize/consent", oauth.consent, ["POST"], public=True),
    route(oauth.OIDC_CALLBACK, oauth.oidc_callback, ["GET"], public=True),
    route("/token", oauth.token, ["POST"], public=True),
    route("/revoke", oauth.revoke, ["POST"], public=True),
    route("/register", oauth.register, ["POST"], public=True),
    # The gateway as the OAuth client of upstreams, and the pages a connection's setupUrl opens.
    route(upstream_setup.CALLBACK_PATH, upstream_setup.callback, ["GET"], public=True),
    route(upstream_setup.CLIENT_METADATA_PATH, upstream_setup.client_metadata, ["GET"], public=True),
    route("/setup/{namespace}/{connection}", upstream_setup.setup, ["GET", "POST"], public=True),
    route("/oauth/grants", oauth.list_grants, ["GET"]),
    route("/oauth/grants/{grant_id}", oauth.revoke_grant, ["DELETE"]),
    route("/servers", servers, ["GET"]),
    route("/namespaces", namespaces.list_namespaces, ["GET"]),
    route("/namespaces", namespaces.create_namespace, ["POST"]),
    route("/namespaces/{name}", namespaces.get_namespace, ["GET"]),
    route("/namespaces/{name}", namespaces.put_namespace, ["PUT"]),
    route("/namespaces/{name}", namespaces.delete_namespace, ["DELETE"]),
    route("/keys", keys.list_keys, ["GET"]),
    route("/keys", keys.create_key, ["POST"]),
    route("/keys/{key_id}", keys.revoke_key, ["DELETE"]),
    route("/tokens", tokens.list_tokens, ["GET"]),
    route("/tokens", tokens.create_token, ["POST"]),
    route("/tokens/signing-key", tokens.rotate_signing_key, ["POST"]),
    route("/tokens/{token_id}", tokens.revoke_token, ["DELETE"]),
    route("/mcp/{namespace}/{connection}", connection_mcp, ["GET", "POST", "DELETE"]),
    route("/mcp/{namespace}", NAMESPACE_MCP, ["GET", "POST", "DELETE"]),
    route("/mcp", NAMESPACE_MCP, ["GET", "POST", "DELETE"]),
    route("/connect/{namespace}/{connection}/mcp", connection_mcp, ["GET", "POST", "DELETE"]),
    *_connect_routes("/connect"),
    *_connect_routes(""),
]


# --- lifespan and entry points ---------------------------------------------------------------
@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # uvicorn has set up its handlers by now: scrub credentials from every log line they write.
    LOG_REDACTION.install("uvicorn", "uvicorn.access")
    if not settings.data_path.exists():
        # The data directory holds the master key, the admin key and the database: owner only.
        settings.data_path.mkdir(parents=True, mode=0o700)
    with _one_line_startup_errors():
        store = await open_store(settings.effective_database_url)
    try:
        with _one_line_startup_errors():
            vault = Vault.from_settings(settings.master_key, settings.data_path)
            await _check_master_key(store, vault, settings)
        api_keys = ApiKeys(store, settings.admin_key)
        first_key = await api_keys.bootstrap(settings.data_path)
        if first_key is not None:
            path = settings.data_path / "admin.key"
            print(
                f"\nCreated the admin API key (shown once; also saved to {path} with mode 0600):\n\n"
                f"    {first_key}\n",
                file=sys.stderr,
                flush=True,
            )
        service_tokens = ServiceTokens(
            store,
            vault,
            api_keys,
            issuer=settings.effective_public_url,
            sync_interval=settings.token_sync_interval,
        )
        await service_tokens.load()
        upstream_auth = UpstreamAuth(settings, store, vault)
        async with anyio.create_task_group() as tg:
            pool = ConnectionPool(
                tg,
                allow_private=settings.allow_private_upstreams,
                tools_ttl=settings.tools_cache_ttl,
                idle_timeout=settings.session_idle_timeout,
                backoff_max=settings.reconnect_backoff_max,
                max_connections=settings.upstream_max_connections,
                max_result_bytes=settings.max_result_bytes,
                max_tool_pages=settings.max_tool_pages,
                failure_ttl=settings.listing_failure_ttl,
                credentials_for=lambda key, config: upstream_auth.credentials(
                    key,
                    config.url,
                    config.headers,
                    catalog_server=config.catalog_server,
                    incarnation=config.incarnation,
                ),
            )
            directory = Directory(store, vault, pool, settings, upstream_auth)
            catalog = Catalog(directory, settings.fanout_timeout)
            offerings = Offerings(directory, catalog, settings.fanout_timeout)
            events = NamespaceEvents(tg)
            directory.subscribe(events.connection_changed)

            def announced(key: tuple[str, str], method: str, params: dict[str, Any]) -> None:
                offerings.announced(key, method)
                events.upstream(key, method, params)

            pool.on_upstream_event(announced)
            held = HeldCalls(tg, vault)
            levels = LogLevels()  # logging/setLevel of each legacy session, for both paths
            sessions: list[Any] = []  # the session manager, once built (it needs the server)

            def session_alive(session_id: str) -> bool:
                return bool(sessions) and session_id in live_sessions(sessions[0])

            server = build_namespace_server(
                directory, catalog, settings, offerings, events, held, levels, session_alive
            )
            manager = build_session_manager(server, settings)
            sessions.append(manager)
            authentication = Authentication(service_tokens, api_keys)
            oauth_server = AuthorizationServer(settings, store, vault, service_tokens, authentication)
            await oauth_server.prune()
            app.state.gateway = Gateway(
                settings=settings,
                store=store,
                vault=vault,
                keys=api_keys,
                tokens=service_tokens,
                authentication=authentication,
                oauth=oauth_server,
                upstream_auth=upstream_auth,
                pool=pool,
                directory=directory,
                catalog=catalog,
                passthrough=Passthrough(Relay(settings, directory, tg)),
                session_manager=manager,
                fast_path=ToolCallFastPath(manager, catalog, directory, settings, levels=levels, held=held),
            )
            tg.start_soon(pool.run_reaper, min(60.0, settings.session_idle_timeout))
            tg.start_soon(api_keys.run_flusher)
            tg.start_soon(service_tokens.run_sync)
            tg.start_soon(oauth_server.run_pruner)
            tg.start_soon(upstream_auth.run_refresher, tg)
            # Everything built so far lives as long as the process: keep the collector off it.
            gc.collect()
            gc.freeze()
            try:
                async with manager.run():
                    yield
            finally:
                await pool.aclose()
                await oauth_server.aclose()
                await upstream_auth.aclose()
                with anyio.CancelScope(shield=True):
                    await api_keys.close()
                tg.cancel_scope.cancel()
    finally:
        await store.close()


@contextlib.contextmanager
def _one_line_startup_errors() -> Iterator[None]:
    """A setting that stops the start is one line on stderr, not uvicorn's traceback of it."""
    try:
        yield
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        # uvicorn logs the lifespan's traceback and "startup failed" at ERROR; we said it already.
        logging.getLogger("uvicorn.error").addFilter(lambda record: record.levelno < logging.ERROR)
        raise


async def _check_master_key(store: Store, vault: Vault, settings: Settings) -> None:
    """Refuse to start when the master key cannot open the stored credentials (a wrong or lost
    key), unless told to go on; the rows it cannot open then show as errors."""
    rows = await store.sealed_headers()
    closed = [
        f"{ns}/{cid}"
        for ns, cid, token in rows
        if not vault.opens(token, namespace=ns, connection_id=cid, field="headers")
    ]
    if not closed:
        return
    which = ", ".join(closed[:3]) + (f" and {len(closed) - 3} more" if len(closed) > 3 else "")
    if not settings.allow_undecryptable_rows:
        raise ConfigError(
            f"the master key cannot decrypt the stored headers of {len(closed)} connection(s) ({which}); "
            "start with the key that sealed them (master_key or JUNCTION_MASTER_KEY, newest first, "
            "comma-separated), or set JUNCTION_ALLOW_UNDECRYPTABLE_ROWS=1 to start anyway with "
            "those connections in error"
        )
    log.warning(
        "the master key cannot decrypt the stored headers of %d connection(s) (%s); they are in error "
        "until new headers are PUT",
        len(closed),
        which,
    )


class McpFirst:
    """Sends `POST /mcp/{namespace}` and `POST /mcp` (the namespace chosen at OAuth consent)
    straight to the namespace endpoint (behind the same auth), skipping the router and exception
    middleware: it is the hottest route and handles its own errors. Everything else goes through
    the Starlette app."""

    def __init__(self, app: Starlette, public_url: str):
        self.app = app
        self.endpoint = Authenticate(NAMESPACE_MCP)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/mcp/") and "/" not in path[5:] and len(path) > 5:
                scope["app"] = self.app
                scope["path_params"] = {"namespace": path[5:]}
                await self.endpoint(scope, receive, send)
                return
            if path == "/mcp":
                scope["app"] = self.app
                scope["path_params"] = {}
                await self.endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings) -> CorsMiddleware:
    """The ASGI app for `settings` (its parts start in the lifespan)."""
    app = Starlette(
        routes=ROUTES,
        exception_handlers={
            JunctionError: on_junction_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Outermost: preflights and foreign origins are answered before routing and authentication.
    return CorsMiddleware(McpFirst(app, settings.effective_public_url), settings)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # HTTP client logs carry URLs, and upstream URLs may carry configuration: keep them quiet.
    for name in ("httpx2", "httpcore2", "httpx", "httpcore", "mcp"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Debug logging is ours: the database driver would log every statement (and its parameters).
    for name in ("sqlalchemy", "aiosqlite"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Failed transport probes are expected (we fall back and report the reason on the connection).
    logging.getLogger("mcp.client").setLevel(logging.CRITICAL)


def run(settings: Settings) -> None:
    """Serve the gateway until interrupted (blocking)."""
    configure_logging(settings.log_level)
    # Requests allocate many short-lived objects; collecting the young generation every 700
    # allocations cost 7-10% of the gateway's CPU under load (bench/RESULTS.md).
    gc.set_threshold(10_000, 10, 10)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        lifespan="on",
        # The gateway uses no client addresses, so it trusts no X-Forwarded-* header, and it does
        # not advertise its server software.
        proxy_headers=False,
        server_header=False,
        access_log=settings.access_log,
        # Request heads are bounded (431 past the limit); h11's bound too, should it ever be used.
        http=GatewayHttpProtocol.with_head_limit(settings.max_header_bytes),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ws="none",
    )
    _Server(config, f"mcp-junction {__version__} listening on http://{settings.host}:{settings.port}").run()


class _Server(uvicorn.Server):
    """uvicorn's server, saying "listening" only once the socket is bound and the lifespan ran.

    Printed earlier, the line would be a lie for as long as start-up takes, and a plain lie when the
    port is taken (uvicorn then exits 1); scripts and people wait for it before connecting.
    """

    def __init__(self, config: uvicorn.Config, listening: str) -> None:
        super().__init__(config)
        self._listening = listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._listening, file=sys.stderr, flush=True)
