"""The official `mcp` SDK client, given only a namespace URL, logs in through the gateway's own
authorization server (discovery, registration, PKCE, consent, token), then lists and calls tools,
and refreshes its token when it expires."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import pytest
from _oauth import Person, query
from conftest import Gateway, Upstream
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

LIMIT = 60.0
REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect itself


class MemoryStorage:
    """The SDK's TokenStorage, in memory; the test looks inside it."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Login:
    """The browser step of the SDK's flow: a person who signs in with `credential` and allows."""

    def __init__(self, gateway: Gateway, credential: str):
        self.person = Person(gateway.url)
        self.credential = credential
        self.authorize_urls: list[str] = []
        self._redirect: str | None = None

    async def redirect_handler(self, url: str) -> None:
        self.authorize_urls.append(url)
        self._redirect = await anyio.to_thread.run_sync(self.person.authorize, url, self.credential)

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self._redirect is not None
        params = query(self._redirect)
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))


def provider(url: str, storage: MemoryStorage, login: Login, **kwargs: Any) -> OAuthClientProvider:
    metadata = OAuthClientMetadata(
        client_name="sdk test client",
        redirect_uris=[REDIRECT],  # type: ignore[list-item]
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )
    return OAuthClientProvider(
        url,
        metadata,
        storage,
        redirect_handler=login.redirect_handler,
        callback_handler=login.callback_handler,
        **kwargs,
    )


async def use(url: str, auth: httpx2.Auth) -> tuple[list[str], Any]:
    async with httpx2.AsyncClient(auth=auth, timeout=LIMIT) as http:
        with anyio.fail_after(LIMIT):
            async with Client(streamable_http_client(url, http_client=http)) as client:
                names = sorted(t.name for t in (await client.list_tools()).tools)
                result = await client.call_tool("main__echo", {"text": "hi"})
                return names, result


@pytest.fixture
def namespace(gateway: Gateway, modern_upstream: Upstream) -> str:
    with gateway.client() as admin:
        assert admin.put("/namespaces/team").status_code in (200, 201)
        assert admin.put("/team/main", json={"mcpUrl": modern_upstream.url}).status_code == 201
    return "team"


def test_sdk_client_logs_in_with_dcr_lists_calls_and_refreshes(gateway: Gateway, namespace: str) -> None:
    url = gateway.mcp_url(namespace)
    storage = MemoryStorage()
    login = Login(gateway, gateway.admin_key)
    auth = provider(url, storage, login)
    names, result = anyio.run(use, url, auth)
    assert "main__echo" in names
    assert result.is_error is False and "hi" in str(result.content)
    # It registered (RFC 7591), consented once, and holds our tokens, bound to this namespace's URL.
    assert storage.client is not None and storage.client.client_id.startswith("jc_")
    assert len(login.authorize_urls) == 1
    assert query(login.authorize_urls[0])["resource"] == url
    assert storage.tokens is not None and storage.tokens.refresh_token
    first_access = storage.tokens.access_token
    # An hour later the access token has expired (the SDK's own clock says so): it refreshes it,
    # with no second login, and goes on.
    auth.context.token_expiry_time = time.time() - 1
    names, _ = anyio.run(use, url, auth)
    assert "main__echo" in names
    assert len(login.authorize_urls) == 1
    assert storage.tokens.access_token != first_access
