"""The dashboard's login in a real browser: headless Chromium against a real dashboard.

The dashboard runs as `python -m dashboard.app` with DORA_DASH_AUTH=1 and one
user, in front of the real API (tests/dashboard/conftest.py). Chromium is sent
to the login page, is refused a wrong password with a message, gets the runs
page with the right one, is sent back to the login when its session cookie
is deleted (also from an open page, through assets/session.js) or forged, and
signs out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from flask.sessions import SecureCookieSessionInterface

from dashboard import auth
from tests.conftest import free_port, wait_until
from tests.dashboard.conftest import start_server, stop_server
from tests.dashboard.test_browser import browser as browser  # the same headless Chromium
from tests.dashboard.test_browser import text_of

pytestmark = pytest.mark.browser

PASSWORD = "a long pass phrase"


@pytest.fixture(scope="module")
def login_dash(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The dashboard with a login and one user, alice; its URL, cookie name and her hash."""
    port = free_port()
    stored = auth.hash_password(PASSWORD)
    env = {
        **os.environ,
        "DORA_API_URL": api_url,
        "DORA_DASH_HOST": "127.0.0.1",
        "DORA_DASH_PORT": str(port),
        "DORA_DASH_AUTH": "1",
        "DORA_DASH_USERS": f"alice:{stored}",
    }
    for name in ("DORA_API_TOKEN", "DORA_DASH_USERS_FILE", "DORA_DASH_SECRET"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("dash-login") / "dash.log"
    proc = start_server(["-m", "dashboard.app"], env, f"{url}/login", log)
    yield {"url": url, "cookie": f"dora_dash_session_{port}", "hash": stored}
    stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _here(driver: Any) -> str:
    return driver.execute_script("return location.pathname + location.search")


def _sign_in(driver: Any, password: str) -> None:
    from selenium.webdriver.common.by import By

    wait_until("the login form", lambda: driver.find_elements(By.ID, "login-submit"))
    user = driver.find_element(By.ID, "login-user")
    user.clear()
    user.send_keys("alice")
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


def _at_login(driver: Any) -> str:
    return wait_until(
        "the login page", lambda: _here(driver).startswith("/login") and _here(driver)
    )


def _runs_page(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    wait_until(
        "the runs page",
        lambda: _here(driver) == "/" and driver.find_elements(By.ID, "runs-table"),
    )


def _forged(payload: dict) -> str:
    """A session cookie with the right content, signed with a key that is not the dashboard's."""
    forger = flask.Flask("forger")
    forger.secret_key = "not the dashboard's key, whatever it is"
    serializer = SecureCookieSessionInterface().get_signing_serializer(forger)
    assert serializer is not None
    return serializer.dumps(payload)


def test_sign_in_refusal_stale_and_forged_sessions_and_sign_out(
    login_dash: dict, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    driver, url, name = browser, login_dash["url"], login_dash["cookie"]

    # a page sends you to the login; a wrong password is refused, saying so
    driver.get(f"{url}/")
    assert _at_login(driver) == "/login"
    _sign_in(driver, "not the password")
    assert wait_until("the refusal", lambda: text_of(driver, "#login-error")) == auth.FAILED
    assert _here(driver) == "/login" and driver.get_cookie(name) is None

    # the right one opens the runs page, with an HttpOnly, SameSite=Lax session cookie
    _sign_in(driver, PASSWORD)
    _runs_page(driver)
    cookie = driver.get_cookie(name)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert name not in driver.execute_script("return document.cookie")

    # the cookie gone, the open page's next callback (a 401) leads to the login and back
    driver.delete_cookie(name)
    driver.find_element(By.LINK_TEXT, "Compare").click()
    assert _at_login(driver) == "/login?next=%2Fcompare"
    _sign_in(driver, PASSWORD)
    wait_until(
        "the compare page after signing in again",
        lambda: _here(driver) == "/compare" and driver.find_elements(By.ID, "compare-content"),
    )

    # a forged cookie (right content, wrong key) is no session
    forged = {"user": "alice", "v": auth.fingerprint(login_dash["hash"]), "_permanent": True}
    driver.delete_cookie(name)
    driver.add_cookie({"name": name, "value": _forged(forged), "path": "/"})
    driver.get(f"{url}/runs/1")
    assert _at_login(driver) == "/login?next=/runs/1"

    # sign out from the top bar: the session is over
    driver.get(f"{url}/login")
    _sign_in(driver, PASSWORD)
    _runs_page(driver)
    driver.find_element(By.ID, "sign-out").click()
    assert _at_login(driver) == "/login?out=1"
    assert text_of(driver, "#login-note") == auth.SIGNED_OUT
    assert driver.get_cookie(name) is None
    driver.get(f"{url}/compare")
    assert _at_login(driver) == "/login?next=/compare"
