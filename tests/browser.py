"""Headless Debian Chromium driven by Playwright (its own browser download is never used)."""
from __future__ import annotations

import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Debian's Chromium comes with the deploy packages (.ci/install-deploy-deps.sh), so browser tests belong
# to the `deploy` set: left out of the default run (a fresh machine has no browser), run by `-m deploy`
# and by CI, where a missing browser is a failure, never a skip.
requires_browser = pytest.mark.deploy


@contextmanager
def browser_session(width: int = 1400, height: int = 1800):
    """Yields `open_page(url)`: each call opens the app in a new page of one headless Chromium."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is required (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def open_page(url: str):
            page = browser.new_page(viewport={"width": width, "height": height})
            # The status line polls every second, so the network is never idle: wait for the form instead.
            page.goto(url, wait_until="load", timeout=60000)
            page.locator("#text-input textarea").wait_for(timeout=60000)
            return page

        try:
            yield open_page
        finally:
            browser.close()


@contextmanager
def browser_page(url: str, width: int = 1400, height: int = 1800):
    with browser_session(width, height) as open_page:
        yield open_page(url)
