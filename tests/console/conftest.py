"""One live server and one browser per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.console.browser import WebDriver, open_browser


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = open_browser()
    try:
        yield driver
    finally:
        driver.quit()
