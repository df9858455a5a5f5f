"""The test OpenID Connect provider (`tests/upstreams/oidc_provider.py`) itself, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import jwt
import pytest
from conftest import OidcProvider

pytestmark = pytest.mark.timeout(60)

REDIRECT_URI = "http://127.0.0.1:9/auth/oidc/callback"  # never contacted: redirects are read, not followed


class FormReader(HTMLParser):
    """The login page's form: its attributes and every input's (type, name, id, value)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.buttons: list[dict[str, str | None]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {"form": self.forms, "input": self.inputs, "button": self.buttons}.get(tag)
        if found is not None:
            found.append(dict(attrs))
        self.scripts += tag == "script"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def client() -> httpx2.Client:
    return httpx2.Client(timeout=10.0, trust_env=False, follow_redirects=False)


def authorize_params(provider: OidcProvider, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile",
        "state": "state-" + secrets.token_urlsafe(8),
        "nonce": "nonce-" + secrets.token_urlsafe(8),
    }
    return params | extra


def sign_in(http: httpx2.Client, provider: OidcProvider, username: str, **params: str) -> dict[str, str]:
    """GET the login page, submit its form as ``username``; the redirect's query parameters."""
    page = http.get(provider.url + "/authorize", params=params)
    assert page.status_code == 200, page.text
    form = FormReader()
    form.feed(page.text)
    assert form.forms == [{"method": "post", "action": "/authorize"}]
    assert form.scripts == 0
    assert {"type": "text", "id": "username", "name": "username", "value": ""}.items() <= form.inputs[
        -1
    ].items()
    assert any(button.get("id") == "sign-in" for button in form.buttons)
    fields = {str(i["name"]): str(i["value"]) for i in form.inputs if i.get("type") == "hidden"}
    assert fields == params  # the request travels in the form, unchanged
    answer = http.post(provider.url + "/authorize", data=fields | {"username": username})
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(params["redirect_uri"] + "?")
    query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
    assert query["state"] == params["state"]
    return query


def exchange(
    http: httpx2.Client, provider: OidcProvider, code: str, verifier: str | None, **overrides: Any
) -> httpx2.Response:
    """POST /token with client_secret_basic (``auth=None`` and client_secret in the form: post)."""
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    if verifier is not None:
        data["code_verifier"] = verifier
    auth = overrides.pop("auth", (provider.client_id, provider.client_secret))
    data |= overrides
    return http.post(provider.url + "/token", data=data, auth=auth)


def verify_id_token(http: httpx2.Client, provider: OidcProvider, id_token: str) -> dict[str, Any]:
    jwks_uri = http.get(provider.discovery_url).json()["jwks_uri"]
    keys = jwt.PyJWKSet.from_dict(http.get(jwks_uri).json())
    key = keys[jwt.get_unverified_header(id_token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        id_token,
        key=key,
        algorithms=["RS256"],
        audience=provider.client_id,
        issuer=provider.issuer,
        options={"require": ["iss", "sub", "aud", "iat", "exp"]},
    )
    return claims


def test_discovery_answers_the_documented_fields(start_oidc_provider: Callable[..., OidcProvider]) -> None:
    provider = start_oidc_provider(redirect_uris=[REDIRECT_URI])
    with client() as http:
        doc = http.get(provider.discovery_url).json()
        assert provider.issuer == f"http://127.0.0.1:{provider.port}"
        assert doc["issuer"] == provider.issuer
        for field, path in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("jwks_uri", "/jwks"),
            ("userinfo_endpoint", "/userinfo"),
        ]:
            assert doc[field] == provider.issuer + path
        assert doc["response_types_supported"] == ["code"]
        assert doc["subject_types_supported"] == ["public"]
        assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
        assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert doc["scopes_supported"] == ["openid", "email", "profile"]
        assert {"sub", "email", "email_verified", "name", "nonce"} <= set(doc["claims_supported"])
        (key,) = http.get(doc["jwks_uri"]).json()["keys"]
        assert key["kty"] == "RSA" and key["kid"] and "d" not in key


def test_code_flow_with_pkce_yields_a_verifiable_id_token(
    start_oidc_provider: Callable[..., OidcProvider],
) -> None:
    provider = start_oidc_provider(redirect_uris=["http://127.0.0.1:9/other", REDIRECT_URI])
    with client() as http:
        verifier, challenge = pkce_pair()
        params = authorize_params(provider, code_challenge=challenge, code_challenge_method="S256")
        code = sign_in(http, provider, "alice", **params)["code"]
        answer = exchange(http, provider, code, verifier)
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        tokens = answer.json()
        assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
        assert tokens["scope"] == "openid email profile"
        alice = verify_id_token(http, provider, tokens["id_token"])
        assert alice["aud"] == provider.client_id
        assert alice["nonce"] == params["nonce"]
        assert alice["sub"] == "user-alice"
        assert alice["email"] == "alice@example.test" and alice["email_verified"] is True
        assert 0 < alice["exp"] - alice["iat"] <= 300
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        userinfo = http.get(provider.url + "/userinfo", headers=bearer).json()
        assert userinfo == {"sub": "user-alice", "email": "alice@example.test", "name": "alice"}

        # Bob, with client_secret_post and no PKCE: another subject.
        params = authorize_params(provider)
        code = sign_in(http, provider, "bob", **params)["code"]
        secret_post = {"auth": None, "client_id": provider.client_id, "client_secret": provider.client_secret}
        answer = exchange(http, provider, code, None, **secret_post)
        assert answer.status_code == 200, answer.text
        bob = verify_id_token(http, provider, answer.json()["id_token"])
        assert bob["sub"] == "user-bob" != alice["sub"]
        assert bob["nonce"] == params["nonce"]


def test_a_code_is_single_use(start_oidc_provider: Callable[..., OidcProvider]) -> None:
    provider = start_oidc_provider(redirect_uris=[REDIRECT_URI])
    with client() as http:
        verifier, challenge = pkce_pair()
        params = authorize_params(provider, code_challenge=challenge, code_challenge_method="S256")
        code = sign_in(http, provider, "alice", **params)["code"]
        first = exchange(http, provider, code, verifier)
        assert first.status_code == 200, first.text
        again = exchange(http, provider, code, verifier)
        assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
        # The reuse also revokes what the code gave (RFC 6749 section 4.1.2).
        bearer = {"Authorization": f"Bearer {first.json()['access_token']}"}
        assert http.get(provider.url + "/userinfo", headers=bearer).status_code == 401


def test_the_token_endpoint_refuses_what_does_not_match(
    start_oidc_provider: Callable[..., OidcProvider],
) -> None:
    provider = start_oidc_provider(redirect_uris=[REDIRECT_URI, REDIRECT_URI + "/2"])
    with client() as http:

        def new_code() -> tuple[str, str]:
            verifier, challenge = pkce_pair()
            params = authorize_params(provider, code_challenge=challenge, code_challenge_method="S256")
            return sign_in(http, provider, "carol", **params)["code"], verifier

        refusals: list[tuple[dict[str, Any], int, str]] = [
            ({"verifier": pkce_pair()[0]}, 400, "invalid_grant"),  # another verifier
            ({"verifier": None}, 400, "invalid_grant"),  # none at all
            ({"redirect_uri": REDIRECT_URI + "/2"}, 400, "invalid_grant"),  # registered, but not this one's
            ({"auth": (provider.client_id, "wrong-secret")}, 401, "invalid_client"),
            ({"auth": ("someone-else", provider.client_secret)}, 401, "invalid_client"),
            ({"auth": None}, 401, "invalid_client"),
            ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ]
        for change, status, error in refusals:
            code, verifier = new_code()
            answer = exchange(http, provider, code, change.pop("verifier", verifier), **change)
            assert (answer.status_code, answer.json()["error"]) == (status, error), (change, answer.text)
            if status == 401:  # no client, no use of the code: it still works for the real client
                assert exchange(http, provider, code, verifier).status_code == 200


def test_the_authorization_endpoint_refuses_unknown_clients_and_redirect_uris(
    start_oidc_provider: Callable[..., OidcProvider],
) -> None:
    provider = start_oidc_provider(redirect_uris=[REDIRECT_URI])
    with client() as http:
        for bad in [
            {"redirect_uri": "http://127.0.0.1:9/auth/oidc/callback/"},  # not exactly the registered one
            {"redirect_uri": "http://evil.example/callback"},
            {"client_id": "someone-else"},
        ]:
            params = authorize_params(provider, **bad)
            page = http.get(provider.url + "/authorize", params=params)
            assert page.status_code == 400 and "location" not in page.headers
            assert page.headers["content-type"].startswith("text/html")
            answer = http.post(provider.url + "/authorize", data=params | {"username": "alice"})
            assert answer.status_code == 400 and "location" not in answer.headers

        # Errors the client may hear about go back to it.
        answer = http.get(provider.url + "/authorize", params=authorize_params(provider, scope="email"))
        assert answer.status_code == 302
        query = parse_qs(urlsplit(answer.headers["location"]).query)
        assert query["error"] == ["invalid_scope"]
        params = authorize_params(provider)
        answer = http.post(provider.url + "/authorize", data=params | {"cancel": "1", "username": ""})
        assert parse_qs(urlsplit(answer.headers["location"]).query)["error"] == ["access_denied"]
        answer = http.post(provider.url + "/authorize", data=params | {"username": "not a name"})
        assert answer.status_code == 400 and "location" not in answer.headers


def test_new_redirect_uris_keep_the_port_and_the_key(
    start_oidc_provider: Callable[..., OidcProvider],
) -> None:
    provider = start_oidc_provider()
    with client() as http:
        params = authorize_params(provider)
        assert http.get(provider.url + "/authorize", params=params).status_code == 400  # none registered
        before = http.get(provider.url + "/jwks").json()
        issuer = provider.issuer
        provider.set_redirect_uris(REDIRECT_URI)
        assert provider.issuer == issuer
        assert http.get(provider.url + "/jwks").json() == before
        assert "code" in sign_in(http, provider, "dave", **params)
