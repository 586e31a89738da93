"""Headless Chromium driven by Selenium for the console's tests, and the helpers they
share: waiting on the page, reading its console log, writing screenshots."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["ARTIFACTS", "WebDriver", "console_errors", "open_browser", "screenshot", "wait_for"]

ROOT = Path(__file__).resolve().parents[2]
#: Where screenshots go: ``$KILN_CONSOLE_ARTIFACTS``, else ``test-artifacts/console/``.
ARTIFACTS = Path(os.environ.get("KILN_CONSOLE_ARTIFACTS", ROOT / "test-artifacts" / "console"))

T = TypeVar("T")


def open_browser() -> WebDriver:
    """Headless Chromium at 1280x800 with its console log kept; fails (never skips) when
    Chromium or its driver is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the console tests need headless Chromium and chromedriver on PATH: run"
            " scripts/install-chromium.sh (make tools does), or install Debian's chromium"
            " and chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root, in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def wait_for(condition: Callable[[], T | bool | None], timeout: float = 5.0, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result  # type: ignore[return-value]  # truthy: not False, not None
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def console_errors(browser: WebDriver) -> list[str]:
    """The page's console messages at level SEVERE since the last call."""
    log: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in log if entry["level"] == "SEVERE"]


def screenshot(browser: WebDriver, name: str) -> Path:
    """Save the window as ``ARTIFACTS/name.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert browser.save_screenshot(str(path)), path
    return path
