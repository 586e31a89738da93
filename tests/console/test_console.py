"""The web console in headless Chromium against a live server: every view, the live
feed fed by the CLI, the fact browser's history and time travel, a phone's width and
the keyboard. Screenshots of each view go to ``test-artifacts/console/``."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from functools import partial

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

import kilndb
from kilndb.server import Server
from tests.console.browser import WebDriver, console_errors, screenshot, wait_for
from tests.processes import KILN


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("console") / "data"
    with Server(data=data, port=0, http_port=0) as running:
        with kilndb.connect(running.url) as db:
            db.store("tasks").write("t1", {"title": "Hello"})
        with kilndb.connect(running.url, database="billing") as db:
            db.store("invoices").write("i1", {"total": 12})
            db.store("customers").write("c1", {"name": "Ann"})
        yield running


def put(server: Server, store: str, key: str, value: object) -> None:
    """``kiln --url URL put STORE KEY JSON``, a process of its own."""
    subprocess.run(
        [str(KILN), "--url", server.url, "put", store, key, json.dumps(value)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def write(server: Server, store: str, key: str, value: object) -> None:
    """The same write through the Python client (quicker than starting a process)."""
    with kilndb.connect(server.url) as db:
        db.store(store).write(key, value)


def visible(browser: WebDriver, element_id: str) -> WebElement | None:
    element = browser.find_element(By.ID, element_id)
    return element if element.is_displayed() else None


def rows(browser: WebDriver, table: str) -> list[str]:
    return [row.text for row in browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def open_view(browser: WebDriver, server: Server, hash_: str) -> None:
    """Load the console afresh (not a hash change of the page shown) at ``#hash_``."""
    browser.get("about:blank")
    browser.get(f"{server.http_url}/#{hash_}")
    view = hash_.split("/", maxsplit=1)[0]
    wait_for(lambda: visible(browser, f"view-{view}"), what=f"the {view} view")


def test_the_overview_lists_databases_and_members_without_console_errors(
    browser: WebDriver, server: Server
) -> None:
    browser.get(server.http_url + "/")
    assert browser.title == "KilnDB console"
    databases = wait_for(
        lambda: (found := rows(browser, "databases")) and len(found) == 2 and found,
        what="two databases listed",
    )
    assert databases[0].startswith("billing") and databases[1].startswith("default")
    assert "this server" in databases[1]
    (member,) = rows(browser, "members")
    assert "standalone" in member and server.url in member
    assert "Uptime" in browser.find_element(By.ID, "server-summary").text
    screenshot(browser, "overview")
    # The page under its strict Content-Security-Policy: no error, no blocked resource.
    browser.get(server.http_url + "/console")
    wait_for(lambda: rows(browser, "databases"), what="the databases again")
    assert console_errors(browser) == []


def test_the_browser_lists_the_stores_and_keys_of_a_database(
    browser: WebDriver, server: Server
) -> None:
    open_view(browser, server, "browse/billing")
    stores = wait_for(
        lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#stores button")],
        what="stores",
    )
    assert stores == ["customers", "invoices"]
    assert browser.find_element(By.ID, "database").get_attribute("value") == "billing"
    browser.find_element(By.XPATH, "//ul[@id='stores']//button[text()='invoices']").click()
    key = wait_for(
        lambda: browser.find_elements(By.XPATH, "//ul[@id='keys']//button[text()='i1']"),
        what="the key i1",
    )
    key[0].click()
    wait_for(lambda: rows(browser, "history"), what="the history of i1")
    assert '{"total":12}' in rows(browser, "history")[0]
    assert console_errors(browser) == []


def test_a_fact_written_with_the_cli_appears_in_the_live_feed(
    browser: WebDriver, server: Server
) -> None:
    open_view(browser, server, "feed")
    wait_for(
        lambda: "Live from" in browser.find_element(By.ID, "feed-state").text,
        what="the stream to open",
    )
    put(server, "tasks", "cli-1", {"n": 1})
    written = time.monotonic()
    wait_for(
        lambda: any("tasks / cli-1" in row for row in rows(browser, "feed-table")),
        timeout=1.0,
        what="the CLI's fact in the feed within a second",
    )
    assert time.monotonic() - written < 1.0
    write(server, "tasks", "cli-1", {"n": 2})
    wait_for(lambda: len(rows(browser, "feed-table")) == 2, what="the second fact")
    screenshot(browser, "feed")

    # Paused, the stream is closed; resumed, it goes on from the last position shown.
    browser.find_element(By.ID, "feed-pause").click()
    wait_for(lambda: "Paused after position" in browser.find_element(By.ID, "feed-state").text)
    assert browser.find_element(By.ID, "feed-pause").get_attribute("aria-pressed") == "true"
    write(server, "tasks", "while-paused", 0)
    assert len(rows(browser, "feed-table")) == 2
    browser.find_element(By.ID, "feed-pause").click()
    wait_for(
        lambda: any("tasks / while-paused" in row for row in rows(browser, "feed-table")),
        what="the fact written while paused, after resuming",
    )

    # The store filter: only the stores named are shown.
    browser.find_element(By.ID, "feed-clear").click()
    stores = browser.find_element(By.ID, "feed-stores")
    stores.send_keys("other", Keys.ENTER)
    wait_for(lambda: "in other." in browser.find_element(By.ID, "feed-state").text)
    write(server, "tasks", "filtered-out", 0)
    write(server, "other", "kept", 0)
    wait_for(lambda: rows(browser, "feed-table"), what="the fact of store other")
    (row,) = rows(browser, "feed-table")
    assert "other / kept" in row
    stores.clear()
    stores.send_keys(Keys.ENTER)
    assert console_errors(browser) == []


def test_the_feed_leads_to_the_keys_history_and_as_of_shows_an_older_value(
    browser: WebDriver, server: Server
) -> None:
    open_view(browser, server, "feed")
    wait_for(lambda: "Live from" in browser.find_element(By.ID, "feed-state").text)
    put(server, "tasks", "travel", {"v": "old"})
    put(server, "tasks", "travel", {"v": "new"})
    link = wait_for(
        lambda: browser.find_elements(By.LINK_TEXT, "tasks / travel"), what="the feed's link"
    )
    link[0].click()
    wait_for(lambda: visible(browser, "view-browse"), what="the browser")
    history = wait_for(lambda: len(found := rows(browser, "history")) == 2 and found)
    assert '{"v":"new"}' in history[0] and '{"v":"old"}' in history[1]
    # The latest fact's provenance is shown.
    provenance = browser.find_element(By.ID, "provenance").text
    assert "seq\n2" in provenance and "position" in provenance and "causation" in provenance
    assert json.loads(browser.find_element(By.ID, "fact-json").text)["value"] == {"v": "new"}
    assert "travel" in browser.current_url

    # Pick seq 1's time and read as of it: the older value.
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Pick the time of seq 1']").click()
    browser.find_element(By.CSS_SELECTOR, "#asof-form button[type=submit]").click()
    result = wait_for(
        lambda: (text := browser.find_element(By.ID, "asof-result").text) and text,
        what="the as-of read",
    )
    assert "seq 1" in result and '{"v":"old"}' in result
    assert json.loads(browser.find_element(By.ID, "fact-json").text)["value"] == {"v": "old"}
    screenshot(browser, "browser")

    # Before the key existed, it had no value.
    browser.execute_script("document.getElementById('asof').value = '2000-01-01T00:00:00.000'")
    browser.find_element(By.CSS_SELECTOR, "#asof-form button[type=submit]").click()
    wait_for(lambda: "no value" in browser.find_element(By.ID, "asof-result").text)
    assert console_errors(browser) == []


def test_the_charts_draw_the_sampled_history(browser: WebDriver, server: Server) -> None:
    write(server, "tasks", "charted", 1)
    open_view(browser, server, "charts")

    def drawn() -> bool:
        figures = browser.find_elements(By.CSS_SELECTOR, "#chart-list figure")
        lines = browser.find_elements(
            By.CSS_SELECTOR, "figure[data-chart=writes_per_second] polyline"
        )
        return len(figures) == 4 and bool(lines)

    wait_for(drawn, timeout=6.0, what="four charts, writes drawn")
    captions = browser.find_element(By.ID, "chart-list").text
    for title in ("Writes", "Fsyncs", "Request latency", "Replication lag"):
        assert title in captions
    screenshot(browser, "charts")
    assert console_errors(browser) == []


def test_recent_events_are_listed(browser: WebDriver, server: Server) -> None:
    open_view(browser, server, "events")
    events = wait_for(lambda: rows(browser, "recent"), what="recent events")
    assert any("server_started" in row for row in events)
    screenshot(browser, "events")


def test_every_view_fits_a_phone_width(browser: WebDriver, server: Server) -> None:
    browser.set_window_size(390, 844)
    try:
        filled = {
            "overview": "#databases td",
            "feed": "#feed-state",
            "browse/billing/invoices/i1": "#history td",
            "charts": "#chart-list figure",
            "events": "#recent td",
        }
        for view, content in filled.items():
            open_view(browser, server, view)
            wait_for(
                partial(browser.find_elements, By.CSS_SELECTOR, content),
                what=f"content of {view}",
            )
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (view, overflow)
            screenshot(browser, "phone-" + view.split("/")[0])
    finally:
        browser.set_window_size(1280, 800)


def test_the_keyboard_reaches_every_view(browser: WebDriver, server: Server) -> None:
    open_view(browser, server, "overview")
    reached = []
    body = browser.find_element(By.TAG_NAME, "body")
    body.click()
    for _ in range(12):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        focused = browser.switch_to.active_element
        name = focused.get_attribute("id") or ""
        if name.startswith("nav-"):
            outline = focused.value_of_css_property("outline-style")
            assert outline != "none", name  # a visible focus style
            focused.send_keys(Keys.ENTER)
            view = name.removeprefix("nav-")
            wait_for(partial(visible, browser, f"view-{view}"), what=view)
            assert browser.switch_to.active_element.get_attribute("id") == name
            reached.append(view)
    assert reached == ["overview", "feed", "browse", "charts", "events"]
