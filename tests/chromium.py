"""Headless Chromium through Debian's chromium + chromium-driver: the one set-up the browser
tests and scripts/screenshots.py drive the dashboard with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def missing_browser() -> str | None:
    """Why no browser can start here (which Debian package is missing), or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} not found: install Debian's {package} (make test does, as root)"
    return None


def headless_chromium(
    profile: Path, width: int = 1440, *extra_args: str, console_logs: bool = False
) -> Any:
    """A Selenium driver on a fresh profile folder, window ``width`` x 900, no sandbox
    (root in containers), no background traffic; ``console_logs`` keeps the page's console
    for ``driver.get_log('browser')``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},900",
        *extra_args,
    ):
        options.add_argument(arg)
    if console_logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver
