"""Headless Debian Chromium driven by Playwright (its own browser download is never used)."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# In CI the browser is installed by .ci/run, so a missing one is a failure there, not a skip.
requires_browser = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                      reason="chromium not installed (apt-get install chromium)")


@contextmanager
def browser_page(url: str, width: int = 1400, height: int = 1800):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is required (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="networkidle", timeout=60000)
            yield page
        finally:
            browser.close()
