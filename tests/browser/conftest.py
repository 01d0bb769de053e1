"""Browser tests: Playwright's Python package driving Debian's headless Chromium (browser
downloads are impossible here) against pytest-django's live server on an ephemeral port.

Each module sets `pytestmark = pytest.mark.browser`: select them with `-m browser`, leave them
out with `-m "not browser"`; `make test` and CI run them. Screenshots of each main page land in
artifacts/screenshots/ (gitignored).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
AXE_RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module. Playwright's sync API keeps an asyncio loop running on
    this thread while it lives, so the module's tests may use the ORM with Django's async-safety
    check off; it is back on, and the loop gone, when the module ends."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Browser tests need Chromium: `apt-get install chromium` (.ci/run installs it).")
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()


@pytest.fixture(autouse=True)
def _plain_http_cookies(settings: Any) -> None:
    # The live server speaks plain HTTP; production cookies are Secure-only.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


class ConsolePage:
    """A browser tab on the console: `screenshot(name)` saves the page for people to look at,
    `assert_no_errors()` fails on any browser console error (a CSP violation, a missing file, a
    script error), `assert_accessible()` runs axe-core on the page."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", lambda dialog: dialog.accept())  # confirm() before destructive actions

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base_url + path)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def assert_no_errors(self) -> None:
        assert self.errors == [], self.errors

    def assert_accessible(self) -> None:
        """axe-core finds no WCAG 2.1 A/AA or best-practice violation on the page as it is now."""
        self.page.evaluate(AXE.read_text())  # via DevTools, so the page's CSP stays in force
        violations = self.page.evaluate(
            """async (tags) => (await axe.run(document, {runOnly: {type: "tag", values: tags}}))
                .violations.map(v => `${v.id} (${v.impact}): ${v.help} at `
                                     + v.nodes.map(n => n.target).join(", "))""",
            AXE_RULES,
        )
        assert violations == [], violations


@pytest.fixture
def console_page(browser: Any, live_server: Any) -> Iterator[ConsolePage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    context.set_default_timeout(10_000)
    page = ConsolePage(context.new_page(), live_server.url)
    yield page
    context.close()


@pytest.fixture
def sign_in_as(console_page: ConsolePage, live_server: Any) -> Any:
    """Put a signed-in session for `user` in the browser (the sign-in form has its own test)."""

    def sign_in(user: Any) -> ConsolePage:
        client = Client()
        client.force_login(user)
        from django.conf import settings

        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        console_page.page.context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
        )
        return console_page

    return sign_in


@pytest.fixture
def live_console_asgi(transactional_db: Any, _daphne_reactor: None) -> Iterator[Any]:
    """The whole platform on daphne, as `live_server_asgi` (upstream/testing.py) serves it (Django,
    Channels, the relay's WebSocket), plus the static files pytest-django's live server serves
    (no collectstatic in tests): for journeys that need a relayed session and the console's
    scripts in the same browser test."""
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
    from django.db import connections

    from realtime_platform.asgi import application
    from tokens.asgi import shutdown_db_threads
    from upstream.testing import LiveServer, ServerThread

    server = ServerThread(ASGIStaticFilesHandler(application)).start()
    try:
        yield LiveServer(host=server.host, port=server.port)
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            connections.close_all()
        shutdown_db_threads()


@pytest.fixture
def asgi_console_as(browser: Any, live_console_asgi: Any) -> Iterator[Any]:
    """`sign_in_as`, on `live_console_asgi`: a signed-in browser tab on the ASGI server."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, base_url=live_console_asgi.http_url
    )
    context.set_default_timeout(10_000)

    def sign_in(user: Any) -> ConsolePage:
        from django.conf import settings

        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_console_asgi.http_url}]
        )
        return ConsolePage(context.new_page(), live_console_asgi.http_url)

    yield sign_in
    context.close()
