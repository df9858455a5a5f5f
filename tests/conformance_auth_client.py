"""The "client under test" of `@modelcontextprotocol/conformance` client auth scenarios.

The conformance CLI starts a mock MCP server (and authorization server) per scenario and runs
``python -m tests.conformance_auth_client <server-url>`` with ``MCP_CONFORMANCE_SCENARIO`` set and,
for pre-registration scenarios, ``MCP_CONFORMANCE_CONTEXT`` (JSON with ``client_id`` and
``client_secret``). This shim connects the way the gateway's pool does (the SDK's `Client` in
``mode="auto"`` over the gateway's own HTTP client, credentials through its one `CredentialsAuth`
hook) and, where the gateway would hand its user a setup link, plays the user: on a 401 (or a 403
``insufficient_scope``) it runs OUR upstream OAuth client (`proxy.upstream_auth.oauth_client`):
`discover`, registration chosen as `UpstreamAuth.client_for` does, `authorization_url` with PKCE S256
and a random state, a GET of it without following the redirect (the mock server approves at
once), the callback checks of `proxy.upstream_auth.flow.finish` (state, RFC 9207 `iss`), and `exchange_code`.
What it does over MCP: connect (initialize), list the tools, call the first one; a scenario may
refuse any of these (step-up scenarios let `initialize` through and refuse later calls).

Exit code 0 when all of that worked, 1 otherwise (the reason on stderr, which the CLI keeps).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx2
import mcp.types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from proxy import __version__
from proxy.pkce import s256
from proxy.upstream._clients import WireState, streamable_http_client_for, tls_context
from proxy.upstream._pinned import pinned_transport
from proxy.upstream.credentials import Challenge, CredentialsAuth
from proxy.upstream_auth import oauth_client as oauth
from proxy.upstream_auth.oauth_client import ClientRegistration, OAuthProblem, ServerAuth

# Where the gateway's callback would be (public URL + /oauth/callback); nothing listens there: the
# authorization server's redirect is read from its Location header.
REDIRECT_URI = "http://localhost:3000/oauth/callback"
# The client ID metadata document URL the conformance scenarios expect a CIMD client to use (the
# gateway's is its public URL + /oauth/client-metadata.json; like this one, it is https).
CLIENT_METADATA_URL = "https://conformance-test.local/client-metadata.json"
MAX_AUTHORIZATIONS = 3  # the first one and at most two more (step-up): never an endless loop


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[shim {time.monotonic() - _T0:5.2f}s] {message}", file=sys.stderr, flush=True)


class Authorizer:
    """The `Credentials` of the one upstream connection (see `proxy.upstream.credentials`)."""

    def __init__(self, http: httpx2.AsyncClient, url: str, context: dict[str, Any]):
        self.http = http
        self.url = url
        self.context = context
        self.version = 0
        self.problem = None
        self.failure: str | None = None
        self.token: str | None = None
        self.server: ServerAuth | None = None
        self.registrations: dict[str, ClientRegistration] = {}  # per issuer, as the gateway stores them
        self.authorizations = 0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def prepare(self) -> None:
        return None

    async def rejected(self, version: int, challenge: Challenge) -> bool:
        """The upstream refused headers of `version`: authorize (again) and say whether to retry."""
        if version != self.version:
            return True
        log(f"HTTP {challenge.status}: {challenge}")
        if self.authorizations >= MAX_AUTHORIZATIONS:
            self.failure = f"still refused after {self.authorizations} authorizations; giving up"
            log(self.failure)
            return False
        self.authorizations += 1
        try:
            await self.authorize(challenge)
        except (OAuthProblem, httpx2.HTTPError, OSError) as exc:
            self.failure = f"authorizing failed: {type(exc).__name__}: {exc}"
            log(self.failure)
            return False
        return True

    async def authorize(self, challenge: Challenge) -> None:
        # Like UpstreamAuth._require: the previous discovery counts only for a step-up (scope union).
        previous = self.server if challenge.insufficient_scope else None
        server = await oauth.discover(self.http, self.url, challenge, allow_http=True, previous=previous)
        log(f"discovered {server.to_json()}")
        self.server = server
        client = await self.client_for(server)
        log(f"client {client.client_id!r} ({client.source}, {client.auth_method})")

        # UpstreamAuth.start
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(32)
        url = oauth.authorization_url(
            server, client, redirect_uri=REDIRECT_URI, state=state, code_challenge=s256(verifier)
        )
        log(f"GET {url}")

        # The user's browser: the mock authorization server approves at once and redirects.
        response = await self.http.get(url)
        location = response.headers.get("location", "")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise OAuthProblem(f"the authorization endpoint answered HTTP {response.status_code}")
        target = urlsplit(location)
        if f"{target.scheme}://{target.netloc}{target.path}" != REDIRECT_URI:
            raise OAuthProblem(f"redirected to {location[:200]!r}, not to our callback")
        params = dict(parse_qsl(target.query))

        # proxy.upstream_auth.flow.finish
        if not secrets.compare_digest(params.get("state", ""), state):
            raise OAuthProblem("the callback's state is not the one we sent")
        iss = params.get("iss")
        if (iss is not None and iss != server.issuer) or (iss is None and server.iss_supported):
            raise OAuthProblem(f"the callback's iss {iss!r} is not the issuer {server.issuer!r}")
        if params.get("error"):
            raise OAuthProblem(f"the authorization server refused: {params['error'][:64]}")
        if not params.get("code"):
            raise OAuthProblem("the callback has no code")
        answer = await oauth.exchange_code(
            self.http, server, client, code=params["code"], verifier=verifier, redirect_uri=REDIRECT_URI
        )
        log(f"token issued (scope {answer.get('scope')!r})")
        self.token = answer["access_token"]
        self.version += 1

    async def client_for(self, server: ServerAuth) -> ClientRegistration:
        """UpstreamAuth.client_for: a configured app (here: the scenario's pre-registered client),
        a registration stored for the issuer, our client metadata document, else DCR."""
        if self.context.get("client_id"):
            secret = self.context.get("client_secret")
            return ClientRegistration(
                client_id=str(self.context["client_id"]),
                client_secret=secret,
                auth_method="client_secret_basic" if secret else "none",
                source="configured",
            )
        stored = self.registrations.get(server.issuer)
        if stored is not None:
            return stored
        if server.cimd_supported and CLIENT_METADATA_URL.startswith("https://"):
            return ClientRegistration(client_id=CLIENT_METADATA_URL, source="metadata_document")
        client = await oauth.register(self.http, server, REDIRECT_URI, "mcp-junction", None)
        self.registrations[server.issuer] = client
        return client


async def run(url: str) -> None:
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    log(f"scenario {os.environ.get('MCP_CONFORMANCE_SCENARIO')!r}, server {url}")
    # The OAuth client of UpstreamAuth (loopback allowed, as with allow_private_upstreams).
    oauth_http = httpx2.AsyncClient(
        transport=pinned_transport(True, verify=tls_context()),
        timeout=httpx2.Timeout(10.0),
        follow_redirects=False,
        trust_env=False,
    )
    config = SimpleNamespace(connect_timeout=10.0, call_timeout=20.0, list_timeout=20.0)
    async with oauth_http:
        credentials = Authorizer(oauth_http, url, context)
        http = streamable_http_client_for(
            config, CredentialsAuth(credentials), WireState(), allow_private=True, max_connections=8
        )
        async with (
            http,
            Client(
                streamable_http_client(url, http_client=http),
                mode="auto",
                cache=None,
                client_info=types.Implementation(name="mcp-junction", version=__version__),
                read_timeout_seconds=config.call_timeout,
            ) as client,
        ):
            log(f"connected, protocol {client.protocol_version}")
            tools = (await client.list_tools()).tools
            log(f"tools {[t.name for t in tools]}")
            if tools:
                result = await client.call_tool(tools[0].name, {})
                if result.is_error:
                    raise RuntimeError(f"tool {tools[0].name} failed: {result.content}")
                log(f"called {tools[0].name}")


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, for a readable reason."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m tests.conformance_auth_client <server-url>", file=sys.stderr)
        return 2
    try:
        anyio.run(run, sys.argv[-1])
    except Exception as exc:
        for leaf in _leaves(exc):
            log(f"failed: {type(leaf).__name__}: {leaf}")
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
