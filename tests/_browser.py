"""A real headless Chromium, driven with Playwright, for tests that need a browser (OAuth login, consent).

``chromium_executable()`` returns Debian's ``/usr/bin/chromium``, installing the ``chromium`` package
with apt-get first when it is missing (as root; an exclusive lock on the git-ignored
``tests/.browser.lock`` makes parallel first uses safe). Playwright's own browser downloads are never
used. Without a browser, or when the install fails, the tests that need one fail with the reason: a
skipped test would pass in CI while testing nothing.

Fixtures
    ``browser`` is the session's Chromium (a Playwright ``Browser``, started on first use). ``page`` is
    a ``Page`` in a fresh browser context (its own cookies and storage), closed at teardown. Every wait
    is bounded by ``DEFAULT_TIMEOUT_MS``. Chromium runs without a proxy, with its background services,
    updates and sync off, so it only talks to the servers a test points it at.

Tests that use them are plain (sync) tests. Playwright's sync API keeps its event loop registered as
the thread's running loop while it is in use, and ``asyncio.run``/``anyio.run`` (and the anyio pytest
plugin) refuse to start under a running loop; so the loop is registered only while a test that uses
the browser runs (``_browser_loop``), and async tests before and after it run as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from socketserver import BaseServer
from typing import NoReturn

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
APT_PACKAGE = "chromium"
TESTS_DIR = Path(__file__).resolve().parent
LOCK = TESTS_DIR / ".browser.lock"
INSTALL_TIMEOUT = 600.0  # apt-get update and install together
DEFAULT_TIMEOUT_MS = 15_000

# Playwright passes its own switches (a temporary profile, no background networking, updates or
# field trials); these say the same again where it matters, plus: the new headless mode, no sandbox
# (tests run as root in containers), no GPU, no QUIC, no proxy. Chromium only talks to the servers a
# test points it at. (No --disable-features here: it would replace Playwright's list.)
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--metrics-recording-only",
]


def _unavailable(reason: str) -> NoReturn:
    """Fail the calling test: what it needs is missing, so it can't test anything (never a skip)."""
    pytest.fail(reason, pytrace=False)


def _usable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """An exclusive lock across processes (pytest-xdist workers, parallel runs)."""
    with open(LOCK, "w") as handle:
        import fcntl  # apt-get only exists where fcntl does

        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _apt_get(apt: str, args: list[str], deadline: float) -> None:
    """Run ``apt-get args`` within what is left of the install's time; fail the test when it fails."""
    what = f"`apt-get {' '.join(args)}`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    left = max(deadline - time.monotonic(), 1.0)
    # Wait for a dpkg lock someone else holds (e.g. unattended-upgrades) instead of failing at once.
    argv = [apt, "-o", f"DPkg::Lock::Timeout={int(left)}", *args]
    try:
        proc = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=left,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        _unavailable(
            f"{what} did not finish within the {INSTALL_TIMEOUT:.0f}s the Chromium install may take "
            f"(is the Debian mirror reachable?):\n{_tail(out)}"
        )
    except OSError as exc:
        _unavailable(f"could not run apt-get: {exc}")
    if proc.returncode != 0:
        _unavailable(f"{what} failed with exit code {proc.returncode}:\n{_tail(proc.stdout)}")


# Why Chromium could not be had, once an install was tried in this process: later callers fail with
# the same reason instead of running apt-get again.
_install_failure: str | None = None


def chromium_executable() -> str:
    """The path of Debian's Chromium, installed with apt-get first when it is missing.

    Fails the calling test when it is missing and can't be installed here (not root, no apt-get) or
    when the install fails.
    """
    global _install_failure
    if _usable(CHROMIUM):
        return str(CHROMIUM)
    if _install_failure is not None:
        _unavailable(_install_failure)
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid"):
        _unavailable(f"the browser tests need Chromium at {CHROMIUM}; it is missing and there is no apt-get")
    if os.geteuid() != 0:
        _unavailable(
            f"the browser tests need Chromium at {CHROMIUM}; it is missing and installing it needs root "
            f"(`apt-get install {APT_PACKAGE}`)"
        )
    with _install_lock():
        if not _usable(CHROMIUM):  # another process may have installed it while this one waited
            try:
                deadline = time.monotonic() + INSTALL_TIMEOUT
                _apt_get(apt, ["update", "-qq"], deadline)
                install = ["install", "-y", "-qq", "--no-install-recommends", APT_PACKAGE]
                _apt_get(apt, install, deadline)
                if not _usable(CHROMIUM):
                    _unavailable(f"`apt-get install {APT_PACKAGE}` succeeded but {CHROMIUM} is not there")
            except pytest.fail.Exception as exc:
                _install_failure = str(exc.msg)
                raise
    return str(CHROMIUM)


def launch(playwright: Playwright) -> Browser:
    """Chromium, headless, with a fresh temporary profile (Playwright makes and removes it)."""
    return playwright.chromium.launch(
        executable_path=chromium_executable(),
        args=CHROMIUM_ARGS,
        headless=True,
        chromium_sandbox=False,
        timeout=60_000,
    )


# --- the install, before the tests -------------------------------------------------------------


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install Chromium before the first test runs when a collected test uses the browser.

    Outside a test, pytest-timeout's per-test limit can't cut the install short (apt-get killed halfway
    would leave dpkg in a broken state). A failure is kept: every test that uses the browser fails with it.
    """
    if session.config.option.collectonly or _usable(CHROMIUM):
        return
    if not any("browser" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"{CHROMIUM} is missing: installing Debian's {APT_PACKAGE} for the browser tests")
    started = time.monotonic()
    try:
        chromium_executable()
    except pytest.fail.Exception as exc:
        outcome = f"no Chromium, the browser tests will fail: {str(exc.msg).splitlines()[0]}"
    else:
        outcome = f"installed {APT_PACKAGE} in {time.monotonic() - started:.0f}s"
    if reporter is not None:
        reporter.write_line(outcome)


# --- fixtures -----------------------------------------------------------------------------------


class _Session:
    """The session's Playwright driver and Chromium, and the event loop they run on."""

    def __init__(self) -> None:
        chromium_executable()  # installs it, or fails the test, before the driver starts
        self.playwright = sync_playwright().start()
        self.loop = asyncio.get_running_loop()  # Playwright's, registered by start()
        try:
            self.browser = launch(self.playwright)
        except BaseException:
            self.playwright.stop()
            raise

    def activate(self) -> None:
        # What Playwright's sync API itself does after each call (wait_for_future in
        # playwright/_impl/_greenlets.py): the loop counts as running while its driver is alive.
        asyncio._set_running_loop(self.loop)

    def park(self) -> None:
        asyncio._set_running_loop(None)

    def close(self) -> None:
        self.activate()
        try:
            self.browser.close()
        finally:
            self.playwright.stop()  # closes the loop and unregisters it


@pytest.fixture(scope="session")
def _browser_session() -> Iterator[_Session]:
    session = _Session()
    session.park()
    yield session
    session.close()


@pytest.fixture(scope="session")
def browser(_browser_session: _Session) -> Browser:
    """The session's headless Chromium (Playwright ``Browser``); fails the test if there is none."""
    return _browser_session.browser


@pytest.fixture(autouse=True)
def _browser_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Register Playwright's event loop for the duration of a test that uses the browser, and only then."""
    if "browser" not in request.fixturenames:
        yield
        return
    session: _Session = request.getfixturevalue("_browser_session")
    session.activate()
    try:
        yield
    finally:
        session.park()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies or storage from other tests), closed at teardown."""
    context = browser.new_context()
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.set_default_navigation_timeout(DEFAULT_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextlib.contextmanager
def serving(server: BaseServer) -> Iterator[None]:
    """Serve `server` (a local page for the browser to visit) in a thread, stopped on exit."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
