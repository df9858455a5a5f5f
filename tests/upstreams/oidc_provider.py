"""A real OpenID Connect provider for the gateway's tests: the authorization code flow with PKCE.

    python -m tests.upstreams.oidc_provider --port PORT --client-id ID --client-secret SECRET \\
        [--redirect-uri URI ...] [--key-file PATH]

run from the repository root; it serves on 127.0.0.1:PORT until SIGTERM. The issuer is exactly
``http://127.0.0.1:PORT``. One client is registered: ``--client-id`` with ``--client-secret`` and the
``--redirect-uri`` values (compared exactly; none given means every authorization request is refused).
The RSA signing key is generated at start; with ``--key-file`` it is read from that file (a private
JWK) when it exists and written there otherwise, so a restart keeps the key.

- ``GET /.well-known/openid-configuration``: the discovery document.
- ``GET /jwks``: the public key, ``kid`` = its RFC 7638 thumbprint.
- ``GET /authorize``: an unknown client or redirect URI gets a 400 HTML page (never a redirect);
  other errors (``response_type`` not ``code``, no ``openid`` scope, a PKCE method other than
  ``S256``) are redirected as RFC 6749 errors. Otherwise a login page without JavaScript: a form
  posting to ``/authorize`` with the request as hidden inputs, a text input ``username`` and the
  buttons ``sign-in`` and ``cancel`` (``error=access_denied``).
- ``POST /authorize``: signs in as ``username`` (``[A-Za-z0-9._-]{1,64}``, no password) and redirects
  (302) to ``redirect_uri?code=...&state=...``. The code is single-use and lives 60 s.
- ``POST /token``: ``grant_type=authorization_code``, client_secret_basic or client_secret_post, the
  ``redirect_uri`` of the authorization request, and ``code_verifier`` when a challenge was given.
  Answers ``access_token`` (1 h), ``id_token`` (RS256, 5 min), ``token_type``, ``expires_in``, ``scope``;
  errors are RFC 6749 JSON (400, ``invalid_client`` 401). A reused code also revokes its access token.
- ``GET``/``POST /userinfo`` with the access token as Bearer: ``sub``, ``email``, ``name``.

User ``alice`` is ``sub`` ``user-alice``, ``email`` ``alice@example.test`` (verified), ``name`` ``alice``.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import html
import json
import re
import secrets
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

with warnings.catch_warnings():  # authlib.jose warns that it is deprecated in favour of joserfc
    from authlib.deprecate import AuthlibDeprecationWarning  # (importing it turns the warnings on)

    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.jose import JsonWebKey, JsonWebToken
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

CODE_TTL = 60
ID_TOKEN_TTL = 300
ACCESS_TOKEN_TTL = 3600
USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce")
PKCE_PARAMS = ("code_challenge", "code_challenge_method")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class Grant:
    """What a code or an access token stands for."""

    username: str
    scope: str
    expires_at: float
    redirect_uri: str = ""
    nonce: str = ""
    code_challenge: str = ""


def _single(values: Any) -> dict[str, str]:
    """Query or form parameters as a dict; RFC 6749 allows no parameter twice."""
    if len(set(values.keys())) != len(values.multi_items()):
        raise ValueError("a parameter is repeated")
    return {key: str(value) for key, value in values.items()}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"<!doctype html><html><head><title>{html.escape(title)}</title></head><body>{body}</body></html>"
    return HTMLResponse(doc, status_code=status, headers=NO_STORE)


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    headers = dict(NO_STORE) | ({"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else {})
    return JSONResponse({"error": error, "error_description": description}, status, headers=headers)


def _load_key(key_file: Path | None) -> Any:
    if key_file is not None and key_file.exists():
        return JsonWebKey.import_key(json.loads(key_file.read_text()))
    key = JsonWebKey.generate_key("RSA", 2048, is_private=True)
    if key_file is not None:
        key_file.touch(mode=0o600)
        key_file.write_text(json.dumps(key.as_dict(is_private=True)))
    return key


class Provider:
    def __init__(
        self, issuer: str, client_id: str, client_secret: str, redirect_uris: Sequence[str], key: Any
    ) -> None:
        self.issuer, self.client_id, self.client_secret = issuer, client_id, client_secret
        self.redirect_uris = frozenset(redirect_uris)
        self.key, self.kid = key, key.thumbprint()
        self.codes: dict[str, Grant] = {}
        self.used_codes: dict[str, str] = {}  # code -> the access token it was exchanged for
        self.access_tokens: dict[str, Grant] = {}

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery, methods=["GET"]),
                Route("/jwks", self.jwks, methods=["GET"]),
                Route("/authorize", self.authorize, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["POST"]),
                Route("/userinfo", self.userinfo, methods=["GET", "POST"]),
            ]
        )

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "userinfo_endpoint": self.issuer + "/userinfo",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "email", "profile"],
                "claims_supported": [
                    *("iss", "sub", "aud", "iat", "exp", "auth_time", "nonce"),
                    *("email", "email_verified", "name"),
                ],
            }
        )

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(
            {"keys": [self.key.as_dict(is_private=False) | {"kid": self.kid, "use": "sig", "alg": "RS256"}]}
        )

    async def authorize(self, request: Request) -> Response:
        try:
            params = _single(request.query_params if request.method == "GET" else await request.form())
        except ValueError as exc:
            return _page("Invalid request", f"<p>{exc}</p>", 400)
        if params.get("client_id") != self.client_id:
            return _page("Invalid request", "<p>Unknown client.</p>", 400)
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in self.redirect_uris:
            return _page("Invalid request", "<p>The redirect URI is not registered.</p>", 400)

        def back(**answer: str) -> Response:
            state = {"state": params["state"]} if "state" in params else {}
            sep = "&" if "?" in redirect_uri else "?"
            return RedirectResponse(redirect_uri + sep + urlencode(answer | state), 302, headers=NO_STORE)

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type")
        scope = params.get("scope", "")
        if "openid" not in scope.split():
            return back(error="invalid_scope", error_description="scope must include openid")
        challenge = params.get("code_challenge", "")
        if (challenge or "code_challenge_method" in params) and (
            params.get("code_challenge_method") != "S256" or not VERIFIER.fullmatch(challenge)
        ):
            return back(error="invalid_request", error_description="PKCE needs an S256 code_challenge")
        if request.method == "GET":
            return self._login_page(params)
        if "cancel" in params:
            return back(error="access_denied", error_description="the user cancelled")
        username = params.get("username", "")
        if not USERNAME.fullmatch(username):
            return self._login_page(params, "A username is 1 to 64 of A-Z a-z 0-9 . _ -", 400)
        code = secrets.token_urlsafe(32)
        nonce = params.get("nonce", "")
        expires_at = time.time() + CODE_TTL
        self.codes[code] = Grant(username, scope, expires_at, redirect_uri, nonce, challenge)
        return back(code=code)

    def _login_page(self, params: Mapping[str, str], problem: str = "", status: int = 200) -> Response:
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(params[name])}">'
            for name in AUTHORIZE_PARAMS + PKCE_PARAMS
            if name in params
        )
        body = (
            (f'<p role="alert">{html.escape(problem)}</p>' if problem else "")
            + f'<h1>Sign in to {html.escape(self.issuer)}</h1><form method="post" action="/authorize">'
            + hidden
            + '<label for="username">Username</label> <input type="text" id="username" name="username"'
            + f' value="{html.escape(params.get("username", ""))}" autofocus>'
            + '<button type="submit" id="sign-in">Sign in</button>'
            + '<button type="submit" id="cancel" name="cancel" value="1">Cancel</button></form>'
        )
        return _page("Sign in", body, status)

    def _client_id(self, request: Request, form: dict[str, str]) -> str | None:
        """The authenticated client's id (client_secret_basic or client_secret_post), or None."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and "client_secret" not in form:
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except ValueError:
                return None
            raw_id, _, raw_secret = decoded.partition(":")  # each form-encoded (RFC 6749 2.3.1)
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        elif not scheme and "client_secret" in form:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        else:
            return None
        ok = hmac.compare_digest(client_id.encode(), self.client_id.encode())
        ok &= hmac.compare_digest(secret.encode(), self.client_secret.encode())
        return client_id if ok else None

    async def token(self, request: Request) -> Response:
        try:
            form = _single(await request.form())
        except ValueError as exc:
            return _oauth_error("invalid_request", str(exc))
        if self._client_id(request, form) is None:
            return _oauth_error("invalid_client", "client authentication failed", 401)
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "only authorization_code")
        code = form.get("code", "")
        grant = self.codes.pop(code, None)
        if grant is None:
            if code in self.used_codes:
                self.access_tokens.pop(self.used_codes[code], None)
            return _oauth_error("invalid_grant", "unknown, used or expired code")
        if grant.expires_at < time.time():
            return _oauth_error("invalid_grant", "the code has expired")
        if form.get("redirect_uri") != grant.redirect_uri:
            return _oauth_error("invalid_grant", "redirect_uri differs from the authorization request")
        verifier = form.get("code_verifier")
        if grant.code_challenge or verifier is not None:
            if not (grant.code_challenge and verifier and VERIFIER.fullmatch(verifier)):
                return _oauth_error("invalid_grant", "code_verifier and code_challenge must go together")
            if not hmac.compare_digest(create_s256_code_challenge(verifier), grant.code_challenge):
                return _oauth_error("invalid_grant", "PKCE verification failed")
        now = int(time.time())
        access_token = secrets.token_urlsafe(32)
        self.used_codes[code] = access_token
        self.access_tokens[access_token] = Grant(grant.username, grant.scope, now + ACCESS_TOKEN_TTL)
        claims = self._user(grant.username) | {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + ID_TOKEN_TTL,
            "auth_time": now,
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        header = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        id_token = JsonWebToken(["RS256"]).encode(header, claims, self.key).decode()
        answer = {"access_token": access_token, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_TTL}
        return JSONResponse(answer | {"id_token": id_token, "scope": grant.scope}, headers=NO_STORE)

    async def userinfo(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        grant = self.access_tokens.get(token) if scheme.lower() == "bearer" else None
        if grant is None or grant.expires_at < time.time():
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        user = self._user(grant.username)
        return JSONResponse({key: user[key] for key in ("sub", "email", "name")}, headers=NO_STORE)

    @staticmethod
    def _user(username: str) -> dict[str, Any]:
        email = f"{username}@example.test"
        return {"sub": "user-" + username, "email": email, "email_verified": True, "name": username}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.upstreams.oidc_provider", description="Run a test OpenID Connect provider."
    )
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append", default=[], help="repeat for several")
    parser.add_argument("--key-file", type=Path, default=None, help="a private JWK kept across restarts")
    args = parser.parse_args(argv)
    issuer = f"http://127.0.0.1:{args.port}"
    key = _load_key(args.key_file)
    provider = Provider(issuer, args.client_id, args.client_secret, args.redirect_uri, key)
    config = uvicorn.Config(provider.app(), host="127.0.0.1", port=args.port, log_level="warning")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
