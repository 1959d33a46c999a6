"""The web dashboard's browser tests: a ``telematics up --demo`` stack and Debian's Chromium
driven by Playwright for Python (its own browser download is not used)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.up import Up

CHROMIUM = Path("/usr/bin/chromium")
#: screenshots of the tests (gitignored); the README shows two of them (docs/img/)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
AXE = Path(__file__).resolve().parents[1] / "data" / "axe" / "axe.min.js"


def fleet_password(up: Up) -> str:
    """The demo fleet manager's password, printed once by ``telematics up --demo``."""
    found = re.search(r"Demo fleet manager created.*?\n\s+password\s+(\S+)", up.text(), re.S)
    assert found is not None, up.text()
    return found.group(1)


def session(up: Up, email: str, password: str) -> httpx.Client:
    """An HTTP client logged in the way the dashboard is (session and CSRF cookies)."""
    client = httpx.Client(base_url=up.api)
    deadline = time.monotonic() + 120
    while True:  # 10 password attempts a minute from one address (see submit_login)
        r = client.post("/v1/auth/session", json={"email": email, "password": password})
        if r.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(float(r.headers.get("retry-after", "6")))
    if r.status_code != 200:
        client.close()
        pytest.fail(f"logging in as {email}: {r.status_code} {r.text}")
    return client


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (the system one), closed afterwards."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: scripts/setup.sh test installs it (apt chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """Console errors and CSP violations of a page (a strict CSP must break nothing)."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _message(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)


def submit_login(page: Any, email: str, password: str) -> None:
    """Fill the login page in and wait for the page it leads to. The demo allows 10
    password attempts a minute from one address, and the browser tests all come from
    127.0.0.1: a refusal for that ("Too many password attempts") waits and tries again,
    for up to two minutes (any other refusal fails at once)."""
    deadline = time.monotonic() + 120
    while True:
        page.fill("#email", email)
        page.fill("#password", password)
        page.click("#submit")
        page.wait_for_selector("body[data-ready='1'], #notice:not([hidden])")
        if page.locator("body[data-ready='1']").count():
            return
        said = page.locator("#notice").inner_text()
        if "Too many password attempts" not in said or time.monotonic() > deadline:
            pytest.fail(f"logging in as {email}: {said}")
        page.evaluate("() => { document.getElementById('notice').hidden = true; }")
        time.sleep(6)


def log_in(
    browser: Any, up: Up, email: str, password: str, *, scheme: str = "light"
) -> tuple[Any, Any, Console]:
    """A new browser context logged in through the login page: (context, page, console);
    ``scheme``: the colour scheme the "system" asks for (the dashboard follows it)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme=scheme)
    page = context.new_page()
    console = Console(page)
    page.goto(f"{up.api}/")
    page.wait_for_url(re.compile(r"/login"))
    submit_login(page, email, password)
    # a login refused for the demo's rate limit (waited out above) leaves the browser's
    # "Failed to load resource: ... 429" in the console: that one is expected, and only it
    console.errors[:] = [e for e in console.errors if "status of 429" not in e]
    return context, page, console


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
