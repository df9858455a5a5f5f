"""One authorization in progress, carried between the login and consent pages sealed by the vault.

No row is written until the person consents: each page carries the request (and, once logged in,
who logged in) as an AES-GCM sealed blob that expires after ten minutes. The blob holds a random
`csrf` value that must equal a cookie set on the first page: a form posted from another site
carries the blob (it is in the page) but not the cookie (SameSite=Lax, HttpOnly), so it fails.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from proxy.errors import OAuthError
from proxy.vault import Vault, VaultError

FLOW_SECONDS: Final = 600
CSRF_COOKIE: Final = "junction_oauth"
_FIELD: Final = "authorize-flow"


@dataclass(frozen=True)
class Login:
    """Who logged in: the chain their grant will narrow (`claims`, one policy per level)."""

    subject: str  # shown on the consent page and in grant listings
    key_id: str  # the API key the chain began with; "" for a federated login
    token_ids: tuple[str, ...] = ()
    claims: tuple[Any, ...] = ()
    expires_at: float = float("inf")


@dataclass(frozen=True)
class Flow:
    """An authorization request the gateway accepted (client and redirect URI checked)."""

    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    resource: str
    namespace: str | None  # named by the resource; None: chosen on the consent page
    scope: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires: float = field(default_factory=lambda: time.time() + FLOW_SECONDS)
    login: Login | None = None
    # A federated login's round trip: the provider's nonce and our PKCE verifier.
    nonce: str | None = None
    verifier: str | None = None

    def logged_in(self, login: Login) -> Flow:
        return replace(self, login=login, nonce=None, verifier=None)


def seal(vault: Vault, flow: Flow) -> str:
    data = asdict(flow)
    if flow.login is not None:
        expires = flow.login.expires_at  # JSON has no infinity: a login that never expires is null
        data["login"]["expires_at"] = expires if math.isfinite(expires) else None
    return vault.seal({"flow": json.dumps(data)}, namespace="", connection_id="oauth", field=_FIELD)


def unseal(vault: Vault, blob: str | None, cookie: str | None) -> Flow:
    """The flow in a page's blob, checked against the browser's cookie; raise when it is not
    ours, has expired, or came without the cookie it was bound to."""
    if not blob or len(blob) > 64 * 1024:
        raise OAuthError("invalid_request", "this sign-in page is incomplete; start again from the app")
    try:
        data = json.loads(vault.open(blob, namespace="", connection_id="oauth", field=_FIELD)["flow"])
    except (VaultError, KeyError, ValueError) as exc:
        raise OAuthError(
            "invalid_request", "this sign-in page is not valid; start again from the app"
        ) from exc
    login = data.pop("login")
    if login is not None:
        login = Login(
            subject=login["subject"],
            key_id=login["key_id"],
            token_ids=tuple(login["token_ids"]),
            claims=tuple(login["claims"]),
            expires_at=login["expires_at"] if login["expires_at"] is not None else math.inf,
        )
    flow = Flow(**data, login=login)
    if time.time() > flow.expires:
        raise OAuthError("invalid_request", "this sign-in page has expired; start again from the app")
    if not cookie or not hmac.compare_digest(cookie.encode(), flow.csrf.encode()):
        raise OAuthError(
            "invalid_request",
            "this form did not come from this browser's sign-in (cookie missing); start again from the app",
        )
    return flow
