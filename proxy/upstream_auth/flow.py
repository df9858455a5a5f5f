"""A connection's user authorizing the gateway at the upstream's authorization server.

`start` makes the authorization request (PKCE S256, a random `state` stored single-use for ten
minutes, `resource`, the scope discovery chose) and binds it to the user's browser; `finish` is
the callback: the state is spent, the browser, issuer and `iss` (RFC 9207) checked, the code
exchanged, and the tokens stored for `UpstreamAuth` to use and refresh.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import anyio

from proxy.pkce import s256
from proxy.store._upstream import UpstreamStateRecord
from proxy.upstream_auth import oauth_client as oauth
from proxy.upstream_auth.credentials import Key
from proxy.upstream_auth.oauth_client import ServerAuth
from proxy.upstream_auth.service import REFRESH_DEADLINE, SetupFailed, UpstreamAuth, reason
from proxy.vault import VaultError

log = logging.getLogger("junction.upstream_auth")

STATE_TTL = timedelta(minutes=10)
_STATE = "oauth-state"


async def pending(auth: UpstreamAuth, key: Key) -> ServerAuth:
    """What the connection's user is about to authorize (shown before they are sent there)."""
    record = await auth.rows.auth(key)
    if record is None or not record.discovered or record.tokens_sealed:
        raise SetupFailed("This connection does not need authorization now.")
    return ServerAuth.from_json(record.discovered)


async def start(auth: UpstreamAuth, key: Key, browser: str) -> str:
    """The upstream's authorization URL for this connection's user (PKCE S256, state,
    resource, scope). `browser` is a secret of the user's browser (a cookie): only that
    browser can finish this authorization."""
    record = await auth.rows.auth(key)
    if record is None or not record.discovered or record.tokens_sealed:
        raise SetupFailed("This connection does not need authorization now.")
    server = ServerAuth.from_json(record.discovered)
    try:
        client = await auth.client_for(server, record.discovered.get("catalog"))
    except Exception as exc:
        log.warning("upstream %s/%s: registering failed: %s", *key, type(exc).__name__)
        raise SetupFailed(
            f"The gateway could not register with the upstream's authorization server ({reason(exc)})."
        ) from exc
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(32)
    sealed = auth.vault.seal(
        {
            "verifier": verifier,
            "issuer": server.issuer,
            "client_id": client.client_id,
            "browser": _hash(browser),
        },
        namespace=key[0],
        connection_id=key[1],
        field=_STATE,
    )
    expires = datetime.now(UTC) + STATE_TTL
    await auth.rows.add_state(_hash(state), UpstreamStateRecord(key[0], key[1], sealed, expires))
    return oauth.authorization_url(
        server, client, redirect_uri=auth.redirect_uri, state=state, code_challenge=s256(verifier)
    )


async def finish(auth: UpstreamAuth, params: Mapping[str, str], browser: str | None) -> Key:
    """The callback: check `state` (single use, unexpired, begun in this browser) and `iss`,
    exchange the code, store the tokens. The connection's key; `SetupFailed` says what failed."""
    state = params.get("state")
    if not state:
        raise SetupFailed("The authorization server sent no state; start again from the setup link.")
    taken = await auth.rows.take_state(_hash(state), datetime.now(UTC))
    if taken is None:
        raise SetupFailed(
            "This authorization was already completed or has expired; start again from the setup link."
        )
    key = (taken.namespace, taken.connection_id)
    try:
        data = auth.vault.open(taken.sealed, namespace=key[0], connection_id=key[1], field=_STATE)
    except VaultError as exc:
        raise SetupFailed("This authorization cannot be read any more; start again.") from exc
    if not browser or not hmac.compare_digest(_hash(browser), data.get("browser", "")):
        raise SetupFailed(
            "This authorization was started in another browser; open the setup link in this one."
        )
    record = await auth.rows.auth(key)
    if record is None or not record.discovered:
        raise SetupFailed("This connection no longer exists or no longer needs authorization.")
    server = ServerAuth.from_json(record.discovered)
    if server.issuer != data["issuer"]:
        raise SetupFailed("The connection's authorization server changed meanwhile; start again.")
    iss = params.get("iss")
    if (iss is not None and iss != server.issuer) or (iss is None and server.iss_supported):
        # RFC 9207: a response that may come from another server is not shown or used.
        raise SetupFailed("The authorization response did not come from the expected server (iss).")
    if params.get("error"):
        error = "".join(c for c in params["error"] if c.isalnum() or c == "_")[:64]
        raise SetupFailed(f"The authorization server did not authorize the gateway ({error}).")
    code = params.get("code")
    if not code:
        raise SetupFailed("The authorization server sent no code; start again from the setup link.")
    try:
        client = await auth.client_for(server, record.discovered.get("catalog"))
        if client.client_id != data["client_id"]:
            raise SetupFailed("The gateway's registration changed meanwhile; start again.")
        with anyio.fail_after(REFRESH_DEADLINE):
            answer = await oauth.exchange_code(
                auth.http,
                server,
                client,
                code=code,
                verifier=data["verifier"],
                redirect_uri=auth.redirect_uri,
            )
    except SetupFailed:
        raise
    except Exception as exc:
        log.warning("upstream %s/%s: exchanging the code failed: %s", *key, reason(exc))
        raise SetupFailed(f"Exchanging the authorization code failed ({reason(exc)}).") from exc
    tokens = auth.tokens_from(answer, None)
    async with auth.lock(key):
        for _ in range(3):  # another writer may move the row on; ours is the newest authorization
            current = await auth.rows.auth(key)
            if current is None:
                raise SetupFailed("This connection was deleted meanwhile.")
            if await auth.save(key, current.version, tokens):
                break
        await auth.adopt_stored(key)
    log.info("upstream %s/%s authorized by its user", *key)
    return key


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
