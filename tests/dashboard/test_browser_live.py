"""Live run pages follow the API's event stream (relayed by the dashboard), in a real browser.

The dashboard polls only once a minute here (DORA_DASH_POLL_MS=60000), so a
page that shows new telemetry within seconds got it from the stream. The run
is a worker's telemetry with known numbers (``simulate.py``) posted to the
real API; the expected heatmaps are that table, not the dashboard's output.
With no stream slot (DORA_DASH_MAX_STREAMS=0) the same page polls.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port, wait_until
from tests.dashboard import simulate
from tests.dashboard.conftest import start_server, stop_server
from tests.dashboard.simulate import SimulatedRun
from tests.dashboard.test_browser import browser as browser  # the same headless Chromium
from tests.dashboard.test_browser import heatmap_z, text_of

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _dashboard(api_url: str, tmp_path_factory: Any, **env_vars: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "DORA_API_URL": api_url,
        "DORA_DASH_HOST": "127.0.0.1",
        "DORA_DASH_PORT": str(port),
        **env_vars,
    }
    env.pop("DORA_API_TOKEN", None)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("dash-live") / "dash.log"
    proc = start_server(["-m", "dashboard.app"], env, f"{url}/", log)
    yield url
    stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def slow_poll_dash(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _dashboard(api_url, tmp_path_factory, DORA_DASH_POLL_MS="60000")


@pytest.fixture(scope="module")
def no_stream_dash(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _dashboard(
        api_url, tmp_path_factory, DORA_DASH_POLL_MS="500", DORA_DASH_MAX_STREAMS="0"
    )


def _shows(driver: Any, step: int) -> bool:
    z = heatmap_z(driver)
    return z is not None and json.loads(z) == simulate.live_matrix(step)


def test_a_live_run_page_updates_from_the_stream_without_polling(
    api_url: str, slow_poll_dash: str, browser: Any
) -> None:
    sim = SimulatedRun(api_url, name="streamed")
    sim.post([0, 5])
    browser.get(f"{slow_poll_dash}/runs/{sim.id}")
    wait_until(
        "the page to follow the stream", lambda: text_of(browser, "#run-live-follow") == "stream"
    )
    wait_until("the heatmap at step 5", lambda: _shows(browser, 5), 20)

    posted = time.monotonic()
    sim.post([10])
    wait_until("the heatmap at step 10", lambda: _shows(browser, 10), 10)
    # a poll would come a minute after the page opened; the notice took seconds
    assert time.monotonic() - posted < 10
    assert "10 / 40" in text_of(browser, "#run-status")

    # Notices closer together than DORA_DASH_POLL_MS are merged into one later refresh,
    # so the stream never asks the API more often than polling would ...
    sim.post([15, 20])
    time.sleep(3)
    assert _shows(browser, 10)
    # ... except the run's final status, which is drawn at once.
    sim.post([25, 30, 35, 40], finish=True)
    wait_until(
        "the finished status", lambda: text_of(browser, "#run-status .badge") == "completed", 10
    )
    wait_until("the final heatmap", lambda: _shows(browser, 40), 10)
    # the stream ended with the run: the page no longer follows it
    assert text_of(browser, "#run-live-follow") == "ended"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_without_a_stream_slot_the_page_polls(
    api_url: str, no_stream_dash: str, browser: Any
) -> None:
    sim = SimulatedRun(api_url, name="polled")
    sim.post([0, 5])
    browser.get(f"{no_stream_dash}/runs/{sim.id}")
    wait_until("the refused stream", lambda: text_of(browser, "#run-live-follow") == "poll")
    sim.post([10, 15])
    wait_until("the heatmap at step 15 by polling", lambda: _shows(browser, 15), 10)


@pytest.fixture(scope="module")
def one_slot_dash(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _dashboard(api_url, tmp_path_factory, DORA_DASH_MAX_STREAMS="1")


def test_a_page_left_or_closed_gives_its_stream_slot_back(
    api_url: str, one_slot_dash: str, browser: Any
) -> None:
    """One relay slot: it must come free when a page moves elsewhere (Dash swaps pages in
    place, so the script closes its stream) and when a tab is closed (the relay's next
    heartbeat write fails), or every later page would be stuck polling."""
    from selenium.webdriver.common.by import By

    first, second, third = (SimulatedRun(api_url, name=f"slot {i}") for i in range(3))
    for sim in (first, second, third):
        sim.post([0, 5])

    def follows(run_id: int) -> bool:
        return text_of(browser, "#run-live-follow") == "stream" and (
            browser.execute_script("return location.pathname") == f"/runs/{run_id}"
        )

    home = browser.current_window_handle
    browser.get(f"{one_slot_dash}/runs/{first.id}")
    wait_until("the first page on the stream", lambda: follows(first.id), 20)
    browser.find_element(By.CSS_SELECTOR, ".crumb a").click()  # to the runs list, in place
    wait_until("the runs list", lambda: browser.find_elements(By.ID, "runs-table"), 20)

    browser.switch_to.new_window("tab")
    browser.get(f"{one_slot_dash}/runs/{second.id}")
    wait_until("the second page on the stream", lambda: follows(second.id), 30)
    browser.close()  # the tab goes; its relay notices at its next heartbeat

    browser.switch_to.window(home)
    browser.switch_to.new_window("tab")
    browser.get(f"{one_slot_dash}/runs/{third.id}")
    wait_until("the third page on the stream", lambda: follows(third.id), 30)
    browser.close()
    browser.switch_to.window(home)
