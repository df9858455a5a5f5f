"""The browser fixtures drive a real Chromium: a form posted to a local server, and framing refused by CSP."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import anyio
import pytest
from _browser import serving
from playwright.sync_api import Browser, Page

FORM = b"""<!doctype html>
<html><head><title>Form</title></head><body>
<form method="post" action="/submit">
  <input type="text" name="word" id="word">
  <button type="submit" id="send">Send</button>
</form>
</body></html>"""

PARENT = b"""<!doctype html>
<html><head><title>Parent</title></head><body>
<iframe name="open" src="/framed-open"></iframe>
<iframe name="denied" src="/framed-denied"></iframe>
</body></html>"""

FRAMED = b"<!doctype html><html><body><p id='inside'>framed content</p></body></html>"


class Site(ThreadingHTTPServer):
    """A tiny site on 127.0.0.1 that records what it was sent."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posted: list[dict[str, list[str]]] = []
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Site

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/form":
            self._send(FORM)
        elif self.path == "/parent":
            self._send(PARENT)
        elif self.path == "/framed-open":
            self._send(FRAMED)
        elif self.path == "/framed-denied":
            self._send(FRAMED, {"Content-Security-Policy": "frame-ancestors 'none'"})
        else:
            self._send(b"not found", status=404)

    def do_POST(self) -> None:
        self.server.paths.append(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        self.server.posted.append(form)
        word = html.escape(form.get("word", [""])[0])
        self._send(f"<!doctype html><html><body><p id='answer'>received {word}</p></body></html>".encode())

    def _send(self, body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    with serving(server):
        yield server


def test_chromium_fills_and_posts_a_form(page: Page, site: Site) -> None:
    page.goto(site.url + "/form")
    page.fill("#word", "hello junction")
    with page.expect_navigation():
        page.click("#send")

    assert site.posted == [{"word": ["hello junction"]}]
    assert page.url == site.url + "/submit"
    assert page.locator("#answer").inner_text() == "received hello junction"


@pytest.mark.anyio
async def test_async_tests_still_run_between_browser_tests() -> None:
    # The session's browser is running, yet its event loop isn't registered outside browser tests.
    await anyio.sleep(0.01)


def test_plain_asyncio_still_runs_between_browser_tests() -> None:
    assert asyncio.run(asyncio.sleep(0, result="ran")) == "ran"


def test_frame_ancestors_none_is_not_framed(page: Page, site: Site) -> None:
    page.goto(site.url + "/parent")

    allowed = page.frame(name="open")
    assert allowed is not None
    allowed.wait_for_selector("#inside")
    assert allowed.inner_text("#inside") == "framed content"

    # The server sent the page, and the browser refused to show it in the frame.
    assert "/framed-denied" in site.paths
    denied = page.frame(name="denied")
    assert denied is not None
    assert denied.url != site.url + "/framed-denied"
    assert "framed content" not in denied.content()
    assert page.frame_locator("iframe[name=denied]").locator("#inside").count() == 0


def test_each_page_has_a_fresh_context(browser: Browser, page: Page, site: Site) -> None:
    page.goto(site.url + "/form")
    page.context.add_cookies([{"name": "seen", "value": "1", "url": site.url}])
    assert [c["name"] for c in page.context.cookies()] == ["seen"]
    with browser.new_context() as other:
        assert other.cookies() == []
