"""The console against a server with authentication on: it asks for a token, refuses a
wrong one clearly and asks again, keeps a good one in the session only, and streams the
live feed with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

import kilndb
from kilndb.server import Server
from kilndb.server.auth import AuthConfig, create_token
from tests.console.browser import WebDriver, screenshot, wait_for

SECRET = "console-test-secret-" + "x" * 32


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("console-auth") / "data"
    with Server(data=data, port=0, http_port=0, auth=AuthConfig(secret=SECRET)) as running:
        yield running


def login_error(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "login-error").text)


def sign_in(browser: WebDriver, token: str) -> None:
    field = wait_for(lambda: (f := browser.find_element(By.ID, "token")).is_displayed() and f)
    field.send_keys(token, Keys.ENTER)


def test_a_wrong_token_is_refused_and_a_good_one_opens_every_view(
    browser: WebDriver, server: Server
) -> None:
    browser.get(server.http_url + "/")
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), what="the token form")
    assert browser.find_element(By.ID, "view-overview").is_displayed() is False
    # A token signed with another secret.
    sign_in(browser, create_token("another-secret-" + "y" * 32, ["kiln::*", "kiln::admin"]))
    refused = wait_for(lambda: login_error(browser), what="the refusal")
    assert refused.startswith("The server refused this token")
    assert browser.find_element(By.ID, "login").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('kiln.token')") is not None
    screenshot(browser, "login-refused")

    # Garbage is refused the same way, with the server's reason, and the form asks again.
    sign_in(browser, "not-a-token")
    again = wait_for(
        lambda: (text := login_error(browser)) != refused and text, what="the second refusal"
    )
    assert again.startswith("The server refused this token")
    assert browser.find_element(By.ID, "token").get_attribute("value") == ""

    good = create_token(SECRET, ["kiln::*", "kiln::admin"])
    sign_in(browser, good)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#databases td"), what="overview")
    assert not browser.find_element(By.ID, "login").is_displayed()
    # Kept for this tab's session only, never in localStorage or a cookie.
    assert browser.execute_script("return sessionStorage.getItem('kiln.token')") == good
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.get_cookies() == []

    # The live feed streams with the token (EventSource sends it as ?token=).
    browser.find_element(By.ID, "nav-feed").click()
    wait_for(lambda: "Live from" in browser.find_element(By.ID, "feed-state").text, what="feed")
    with kilndb.connect(server.url, token=good) as db:
        db.store("tasks").write("secured", 1)
    wait_for(
        lambda: any(
            "tasks / secured" in row.text
            for row in browser.find_elements(By.CSS_SELECTOR, "#feed-table tbody tr")
        ),
        what="the fact in the authenticated feed",
    )

    # Forgetting the token asks for one again.
    browser.find_element(By.ID, "forget-token").click()
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed())
    assert browser.execute_script("return sessionStorage.getItem('kiln.token')") is None

    # A token that only reads the database: the overview says what is missing, the
    # browser works.
    sign_in(browser, create_token(SECRET, ["kiln::default:read"]))
    browser.find_element(By.ID, "nav-overview").click()
    wait_for(lambda: "kiln::admin" in browser.find_element(By.ID, "notice").text, what="notice")
    browser.get(server.http_url + "/#browse/default/tasks/secured")
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#history td"), what="the key's history"
    )
    assert browser.find_element(By.ID, "database").get_attribute("value") == "default"
