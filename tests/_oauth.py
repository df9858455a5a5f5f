"""A person at the browser, for OAuth tests that need no real one: follows the gateway's sign-in
and consent pages over plain HTTP, the way a browser would (cookies, forms, redirects)."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import httpx2

_HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


def hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


class Person:
    """One browser: its cookie jar lives as long as the object."""

    def __init__(self, gateway_url: str):
        self.base = gateway_url
        self.http = httpx2.Client(timeout=30.0, follow_redirects=False, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def open(self, authorize_url: str) -> httpx2.Response:
        return self.http.get(authorize_url)

    def sign_in(self, authorize_url: str, credential: str) -> httpx2.Response:
        """Open the authorization URL and sign in with a key; answers the consent page."""
        login = self.open(authorize_url)
        assert login.status_code == 200, login.text
        return self.http.post(
            self.base + "/authorize/login",
            data={"flow": hidden_fields(login.text)["flow"], "credential": credential},
        )

    def decide(
        self, consent: httpx2.Response, decision: str = "approve", namespace: str | None = None
    ) -> str:
        """Answer the consent page; returns where the browser is sent (the client's redirect)."""
        assert consent.status_code == 200, consent.text
        fields = hidden_fields(consent.text)
        form = {"flow": fields["flow"], "decision": decision}
        chosen = namespace or fields.get("namespace")
        if chosen is not None:
            form["namespace"] = chosen
        answer = self.http.post(self.base + "/authorize/consent", data=form)
        assert answer.status_code == 303, answer.text
        return answer.headers["location"]

    def authorize(self, authorize_url: str, credential: str, namespace: str | None = None) -> str:
        """Sign in and allow: the redirect URL carrying `code`, `state` and `iss`."""
        return self.decide(self.sign_in(authorize_url, credential), "approve", namespace)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
