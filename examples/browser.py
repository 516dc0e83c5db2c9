"""Debian's Chromium, headless, driven by Playwright (from PyPI): the console's
browser tests and the demo's screenshot. Playwright's own browser download is
never used (`executable_path` names the system's), and the profile is a fresh
empty directory, so nothing of a user's browser is read or written.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

CHROMIUM = "/usr/bin/chromium"
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
NOT_INSTALLED = "chromium is not installed: run `make tools` (apt-get install chromium)"


class BrowserMissing(RuntimeError):
    """Debian's chromium is not installed."""


@contextlib.contextmanager
def chromium(timeout: float = 30.0, viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A Playwright browser context of a headless Chromium with an empty
    profile; `timeout` (seconds) bounds each wait of the pages opened in it."""
    if shutil.which("chromium") is None:
        raise BrowserMissing(NOT_INSTALLED)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver, tempfile.TemporaryDirectory() as profile:
        context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=viewport or {"width": 1280, "height": 720},
        )
        context.set_default_timeout(timeout * 1000)
        try:
            yield context
        finally:
            context.close()
