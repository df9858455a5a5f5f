"""A connection's setup pages in a real browser (headless Chromium, JavaScript off): the form for
missing settings, and the OAuth hand-off to an upstream's authorization server and back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests._browser import DEFAULT_TIMEOUT_MS


@pytest.fixture
def plain_page(browser: Browser) -> Iterator[Page]:
    """A page with JavaScript turned off: the setup pages must work without it."""
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_the_settings_form_works_in_a_browser_without_javascript(
    gateway, config_upstream, plain_page
) -> None:  # type: ignore[no-untyped-def]
    with gateway.client() as client:
        client.put("/namespaces/web")
        status = client.put("/web/cfg", json={"mcpUrl": config_upstream.url}).json()["status"]
    page = plain_page
    page.goto(status["setupUrl"])
    assert page.locator("input[name=apiKey]").get_attribute("type") == "password"
    page.fill("input[name=apiKey]", "typed-in-a-browser")
    page.select_option("select[name=region]", "us")
    page.click("#save")
    assert page.locator("#state").inner_text() == "connected", page.content()
    with gateway.client() as client:
        answer = client.post("/web/cfg/.tools/whoami", json={}).json()
    assert json.loads(answer["content"][0]["text"])["apiKey"] == "typed-in-a-browser"


def test_the_oauth_hand_off_works_in_a_browser_without_javascript(
    gateway, start_oauth_upstream, plain_page
) -> None:  # type: ignore[no-untyped-def]
    upstream = start_oauth_upstream()
    with gateway.client() as client:
        client.put("/namespaces/web")
        status = client.put("/web/remote", json={"mcpUrl": upstream.url}).json()["status"]
    assert status["state"] == "auth_required"
    page = plain_page
    page.goto(status["setupUrl"])
    # Before leaving the gateway, the person sees where they are sent and for what.
    assert page.locator("#issuer").inner_text() == upstream.issuer
    assert page.locator("#connection").inner_text() == "remote"
    page.click("#continue")
    assert page.url.startswith(upstream.issuer), page.url  # the upstream's consent page
    page.click("#approve")
    assert page.url.startswith(gateway.url + "/oauth/callback"), page.url
    assert page.locator("#state").inner_text() == "connected", page.content()
    with gateway.client() as client:
        assert client.post("/web/remote/.tools/whoami", json={}).status_code == 200
