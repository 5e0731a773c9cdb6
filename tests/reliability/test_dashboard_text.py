"""Error lines and log lines that contain HTML/JS show as text in a real browser.

tests/dashboard covers run names. Here the hostile text takes the path a
real one would: a job whose dataset file has an HTML file name and HTML
column headers. The real worker (started by the real launcher) refuses it
in its preflight, so the run's error line and the worker's last log lines
quote both; the dashboard shows them on the runs list and in the run page's
failure box. Nothing may run or render as markup.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import free_port, start_server, stop_server, wait_until
from tests.dashboard.test_browser import browser, no_script_ran, text_of  # noqa: F401
from tests.reliability.helpers import worker_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVIL_NAME = "<script>window.__xss=1</script>run <b>bold</b>"
EVIL_FILE = '<img src=x onerror="window.__xss=2">.csv'
EVIL_HEADER = '<img src=x onerror="window.__xss=3">,<i>label</i>'


def test_error_and_log_lines_with_html_show_as_text(
    api_factory,
    tmp_path,
    browser: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    api = api_factory()
    datasets = api.data_dir / "datasets"
    datasets.mkdir()
    (datasets / EVIL_FILE).write_text(f"{EVIL_HEADER}\nsome text,1\n")
    job = {"name": EVIL_NAME, "model": "minilm", "dataset": EVIL_FILE, "max_steps": 2}
    created = httpx.post(f"{api.url}/api/jobs", json=job, timeout=30)
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    run = wait_until(
        "the worker to refuse the dataset",
        lambda: (
            (r := httpx.get(f"{api.url}/api/runs/{run_id}").json())["exit_code"] is not None and r
        ),
        timeout=120,
    )
    assert run["status"] == "failed" and run["exit_code"] == 2
    assert EVIL_FILE in run["error"] and '<img src=x onerror="window.__xss=3">' in run["error"]
    log = httpx.get(f"{api.url}/api/jobs/{run_id}/log").json()["lines"]
    assert any(EVIL_FILE in line for line in log)

    port = free_port()
    dash_env = worker_env(
        DORA_API_URL=api.url, DORA_DASH_HOST="127.0.0.1", DORA_DASH_PORT=str(port)
    )
    dash = start_server(
        ["-m", "dashboard.app"], dash_env, f"http://127.0.0.1:{port}/", tmp_path / "dash.log"
    )
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait_until("the run in the list", lambda: EVIL_NAME in text_of(browser, "body"))
        no_script_ran(browser)

        browser.get(f"http://127.0.0.1:{port}/runs/{run_id}")
        wait_until("the run's name", lambda: text_of(browser, "#run-name") == EVIL_NAME)
        box = wait_until(
            "the failure box with the log",
            lambda: "Last log lines" in (t := text_of(browser, "#run-failure")) and t,
        )
        assert run["error"] in box  # the whole line, markup and all, as text
        assert EVIL_HEADER.split(",")[0] in text_of(browser, "#run-failure pre")
        no_script_ran(browser)
        made = browser.execute_script(
            "return document.querySelectorAll('#run-failure img, #run-failure i,"
            ' #run-name b, #run-name script, img[src="x"]\').length'
        )
        assert made == 0  # no element was made from the text
    finally:
        stop_server(dash)
    assert "Traceback" not in (tmp_path / "dash.log").read_text()
