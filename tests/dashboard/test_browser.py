"""The dashboard in a real browser against the real API and real training jobs.

Headless Chromium fills the New-job form for a tiny DoRA job (first with a
bad learning rate, to see the API's 422 next to the field), submits it,
watches the rank heatmap change while the job trains, downloads the adapter,
and opens Compare for it and a LoRA run trained alongside. A run name full
of HTML/JS must show as text everywhere and never run (its own test, on
simulated telemetry).

The README's screenshots come from a realistic run instead:
scripts/screenshots.py (the demo job and a LoRA baseline).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dashboard.api import ApiClient
from dashboard.params import live_adapter_params
from tests.chromium import headless_chromium, missing_browser
from tests.conftest import free_port, wait_until
from tests.dashboard.conftest import start_server, stop_server
from tests.dashboard.simulate import SimulatedRun

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVIL_NAME = '<img src=x onerror="window.__xss=1">tiny <b>dora</b>'
NAME = "tiny dora"
# small enough for well under a minute on two cores, long enough to see
# pruning: T = 24, pruning from step 2.4 to step 19.2, an event at every step.
# Batches of 16 (up to 64 tokens) keep the run near 10 s on one thread, so the page
# polls several times while the job runs (16 x 4 finished in about a second).
TINY = {
    "model": "minilm",
    "dataset": "rt-snippets",
    "max_steps": 24,
    "warmup_frac": 0.1,
    "final_frac": 0.2,
    "batch_size": 16,
    "max_length": 64,
    "max_train_samples": 64,
    "max_dev_samples": 8,
    "eval_every": 12,
    "prune_interval": 1,
    "lr": 0.005,
    "seed": 3,
}
# the LoRA baseline for Compare does not prune: a few steps are enough
TINY_LORA = {**TINY, "method": "lora", "target_rank": 2, "max_steps": 6, "eval_every": 6}
LIVE_STATUSES = {"queued", "running"}


@pytest.fixture(scope="module")
def dash_url(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "DORA_API_URL": api_url,
        "DORA_DASH_HOST": "127.0.0.1",
        "DORA_DASH_PORT": str(port),
        "DORA_DASH_POLL_MS": "500",  # several frames even when the tiny job is quick
    }
    env.pop("DORA_API_TOKEN", None)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("dash") / "dash.log"
    proc = start_server(["-m", "dashboard.app"], env, f"{url}/", log)
    yield url
    stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    driver = headless_chromium(tmp_path_factory.mktemp("chromium"), console_logs=True)
    try:
        yield driver
    finally:
        driver.quit()


def fill(driver: Any, field: str, value: str) -> None:
    """Replace what a form input holds (select-all + type, as a person does)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, f"job-{field}")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(value)


def text_of(driver: Any, selector: str) -> str:
    """Visible text of the first match, read in one step (pages re-render while we look)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", selector
    )


def shown(driver: Any, selector: str) -> bool:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return !!e && getComputedStyle(e).display !== 'none';",
        selector,
    )


def heatmap_z(driver: Any) -> str | None:
    """The rank heatmap's cells as plotly holds them in the page (JSON), if drawn."""
    return driver.execute_script(
        "const gd = document.querySelector('#run-heatmap .js-plotly-plot');"
        "return gd && gd.data && gd.data.length && gd.data[0].type === 'heatmap'"
        " ? JSON.stringify(gd.data[0].z) : null;"
    )


def no_script_ran(driver: Any) -> None:
    assert driver.execute_script("return window.__xss === undefined"), "a run name ran as HTML"
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0


def test_launch_watch_download_and_compare(api_url: str, dash_url: str, browser: Any) -> None:

    api = ApiClient(api_url, token="")
    available = {p["name"] for p in api.presets() if p["available"]}
    if not {"minilm", "rt-snippets"} <= available:
        pytest.skip("the minilm and rt-snippets presets are not installed (make install does)")
    # the API is the session's: other files' simulated runs (no worker to stop) are there too
    before = {run["id"] for run in api.all_runs()}
    # a LoRA baseline trains alongside, through the API, for Compare later
    lora_id = api.submit_job({**TINY_LORA, "name": "tiny lora"})["run_id"]
    try:
        _run_the_scenario(api, dash_url, browser, lora_id)
    finally:
        for run in api.all_runs():
            if run["id"] not in before and run["status"] in LIVE_STATUSES:
                api.cancel_job(run["id"])
        api.close()


def _run_the_scenario(api: ApiClient, dash_url: str, driver: Any, lora_id: int) -> None:
    from selenium.webdriver.common.by import By

    # --- New job form: a 422 shown next to its field, then a good submit ---
    driver.get(f"{dash_url}/?new=1")
    wait_until("the job form", lambda: driver.find_elements(By.ID, "job-submit"))
    fill(driver, "name", NAME)
    fill(driver, "target_rank", "2")
    fill(driver, "max_steps", str(TINY["max_steps"]))
    fill(driver, "batch_size", str(TINY["batch_size"]))
    fill(driver, "seed", str(TINY["seed"]))
    fill(driver, "lr", "-1")
    driver.find_element(By.CSS_SELECTOR, "#job-advanced summary").click()
    for field in (
        "warmup_frac",
        "final_frac",
        "max_length",
        "max_train_samples",
        "max_dev_samples",
        "eval_every",
        "prune_interval",
    ):
        fill(driver, field, str(TINY[field]))
    driver.find_element(By.ID, "job-submit").click()
    message = wait_until("the lr error next to the field", lambda: text_of(driver, "#job-error-lr"))
    assert "greater than 0" in message
    assert re.fullmatch(r"/", driver.execute_script("return location.pathname"))
    fill(driver, "lr", str(TINY["lr"]))
    driver.find_element(By.ID, "job-submit").click()
    path = wait_until(
        "the run page after submit",
        lambda: re.fullmatch(r"/runs/(\d+)", driver.execute_script("return location.pathname")),
    )
    run_id = int(path.group(1))
    # The run's own URL: a leftover ?new=1 kept the rank slider from following the run.
    assert driver.execute_script("return location.search") == ""
    config = api.run(run_id)["config"]
    assert config["name"] == NAME and config["target_rank"] == 2 and config["lr"] == TINY["lr"]
    assert config["max_train_samples"] == TINY["max_train_samples"]
    assert (config["warmup_frac"], config["final_frac"]) == (
        TINY["warmup_frac"],
        TINY["final_frac"],
    )

    # --- the rank heatmap changes while the job trains ---
    seen: list[str] = []

    def heatmap_changed_while_running() -> bool:
        z = heatmap_z(driver)
        running = api.run(run_id)["status"] == "running"
        if z and running and (not seen or seen[-1] != z):
            seen.append(z)
        return len(seen) >= 2

    wait_until(
        "two different rank heatmaps while the run is running", heatmap_changed_while_running, 150
    )
    first, later = json.loads(seen[0]), json.loads(seen[-1])
    live_first = sum(v for row in first for v in row if v is not None)
    live_later = sum(v for row in later for v in row if v is not None)
    assert live_later < live_first, "pruning lowers the live count"
    assert text_of(driver, "#run-name") == NAME

    # --- it finishes; the poll stops; the adapter downloads through the dashboard ---
    wait_until(
        "the run to complete", lambda: text_of(driver, "#run-status .badge") == "completed", 150
    )
    wait_until(
        "the download link", lambda: driver.find_element(By.ID, "run-download").is_displayed(), 20
    )
    href = driver.find_element(By.ID, "run-download").get_attribute("href")
    body = httpx.get(href, timeout=30).content
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert any(n.endswith("adapter_config.json") for n in zf.namelist())
    # the events card lists the run's milestones, newest first
    events = wait_until(
        "the finished event",
        lambda: (t := text_of(driver, "#run-events")) and "finished" in t and t,
    )
    assert events.index("finished") < events.index("mask frozen") < events.index("started")
    final = json.loads(wait_until("the final heatmap", lambda: heatmap_z(driver)))
    matrix = api.rank_matrix(run_id)
    assert final == matrix["live"]  # the page shows what the API holds at the end
    # appended live, step by step, the figures hold each step exactly once
    drawn = driver.execute_script(
        "const x = id => document.querySelector(id + ' .js-plotly-plot').data;"
        "return {budget: x('#run-budget')[1].x, scores: x('#run-importance')[0].x};"
    )
    assert drawn["budget"] == api.budget(run_id)["steps"]
    assert drawn["scores"] == api.scores(run_id, layer=0)["steps"]
    # the live-parameter count agrees with the worker's own count at r'
    # (every component live), so it counts the same things
    run = api.run(run_id)
    full = live_adapter_params("dora", api.modules(run_id), {**matrix, "live": matrix["rank"]})
    assert full == run["params"]["adapter"]
    assert "Live adapter parameters" in text_of(driver, "#run-step-label")

    # --- Replay starts from step 0, where every module still has all r' components ---
    driver.find_element(By.ID, "run-play-button").click()
    wait_until(
        "the replay's first frame",
        lambda: "step 0 (latest is" in text_of(driver, "#run-step-label"),
    )
    start = json.loads(heatmap_z(driver))
    assert start == api.rank_matrix(run_id, step=0)["live"]
    assert {v for row in start for v in row if v is not None} == {3}  # r' = ceil(1.5 * 2)
    driver.find_element(By.ID, "run-play-button").click()  # pause

    # --- Compare: the DoRA run and the LoRA baseline, both finished ---
    wait_until("the LoRA run to complete", lambda: api.run(lora_id)["status"] == "completed", 150)
    driver.get(f"{dash_url}/")
    wait_until("the LoRA run in the table", lambda: "tiny lora" in text_of(driver, "#runs-table"))
    driver.get(f"{dash_url}/compare?runs={run_id},{lora_id}")
    wait_until(
        "the compare heatmaps",
        lambda: driver.find_elements(By.CSS_SELECTOR, "#compare-heatmaps .js-plotly-plot"),
    )
    lora = api.run(lora_id)
    lora_matrix = api.rank_matrix(lora_id)
    assert (
        live_adapter_params("lora", api.modules(lora_id), lora_matrix) == lora["params"]["adapter"]
    )
    heat = driver.execute_script(
        "return document.querySelector('#compare-heatmaps .js-plotly-plot').data.map(t => t.z);"
    )
    assert heat[0] == final
    # LoRA keeps rank b(T) = 2 everywhere
    assert {v for row in heat[1] for v in row if v is not None} == {2}
    diff = driver.execute_script(
        "return document.querySelector('#compare-diff-0 .js-plotly-plot').data[0].z;"
    )
    assert diff == [
        [b - a for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(final, heat[1], strict=True)
    ]
    table = text_of(driver, "#compare-content table")
    assert NAME in table and "tiny lora" in table and "LoRA" in table

    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def _samples_event(step: int, rows: list[dict]) -> dict:
    return {"step": step, "kind": "samples", "message": "samples", "data": {"samples": rows}}


def test_generated_samples_show_as_text_and_the_form_follows_the_task(
    api_url: str, dash_url: str, browser: Any
) -> None:
    """A generative run's samples (posted as its worker would) are literal text in the
    Samples card, which follows a new generating evaluation; a classification run has no
    card; the New job form switched to causal-lm shows its fields and sends them."""
    from selenium.webdriver.common.by import By

    driver = browser
    http = httpx.Client(base_url=api_url, timeout=30)
    hostile = '<img src=x onerror="window.__xss=1">'
    long_prompt = "Summarise: " + "word " * 60 + hostile
    config = {"task": "causal-lm", "model": "smollm2-135m", "dataset": "bbc-summary"}
    made = http.post("/api/runs", json={"name": "lm samples", "config": config}).json()
    run_id, token = made["id"], made["token"]
    http.headers["Authorization"] = f"Bearer {token}"

    def post(seq: int, step: int, rows: list[dict]) -> None:
        body = {
            "seq": seq,
            "scalars": [{"step": step, "values": {"loss": 2.0}}],
            "events": [_samples_event(step, rows)],
        }
        assert http.post(f"/api/runs/{run_id}/telemetry", json=body).status_code == 200

    post(0, 20, [{"prompt": hostile, "reference": f"<b>lead</b> {hostile}", "prediction": hostile}])
    driver.get(f"{dash_url}/runs/{run_id}")
    cells = wait_until(
        "the samples table",
        lambda: driver.execute_script(
            "return [...document.querySelectorAll('#run-samples td')].map(e => e.innerText);"
        ),
    )
    assert cells == ["1", hostile, f"<b>lead</b> {hostile}", hostile]  # literal text
    no_script_ran(driver)
    assert not shown(driver, "#run-samples-picker")  # one step: nothing to pick

    # a new generating evaluation while the page is open: the card moves to it
    post(1, 40, [{"prompt": long_prompt, "reference": "ref 40", "prediction": "pred 40"}])
    wait_until("step 40's samples", lambda: "ref 40" in text_of(driver, "#run-samples"), 60)
    assert shown(driver, "#run-samples-picker")
    assert text_of(driver, "#run-samples summary") == long_prompt[:159] + "…"
    driver.find_element(By.CSS_SELECTOR, "#run-samples summary").click()
    wait_until(
        "the whole prompt", lambda: long_prompt in text_of(driver, "#run-samples details"), 10
    )
    no_script_ran(driver)
    http.close()

    # a classification run has no Samples card
    api = ApiClient(api_url, token="")
    cls = httpx.post(
        f"{api_url}/api/runs",
        json={"name": "cls", "config": {"model": "minilm", "dataset": "rt-snippets"}},
        timeout=30,
    ).json()["id"]
    driver.get(f"{dash_url}/runs/{cls}")
    wait_until("the run page", lambda: text_of(driver, "#run-name") == "cls")
    assert driver.find_elements(By.ID, "run-samples-card")
    assert not shown(driver, "#run-samples-card")

    # the New job form, switched to causal-lm
    driver.get(f"{dash_url}/?new=1")
    wait_until("the job form", lambda: driver.find_elements(By.ID, "job-submit"))
    assert shown(driver, "#job-field-label_column")
    assert not shown(driver, "#job-section-generation")
    driver.find_element(By.CSS_SELECTOR, "#job-task input[value='causal-lm']").click()
    wait_until("the generative fields", lambda: shown(driver, "#job-section-generation"), 30)
    assert not shown(driver, "#job-field-label_column") and not shown(driver, "#job-field-head_lr")
    available = {p["name"] for p in api.presets() if p["available"]}
    if "bbc-summary" in available:
        wait_until("bbc-summary chosen", lambda: "bbc-summary" in text_of(driver, "#job-dataset"))
    driver.find_element(By.CSS_SELECTOR, "#job-advanced summary").click()
    fill(driver, "max_new_tokens", "0")
    driver.find_element(By.ID, "job-submit").click()
    message = wait_until(
        "the max_new_tokens error", lambda: text_of(driver, "#job-error-max_new_tokens"), 30
    )
    assert "greater than or equal to 1" in message  # the generative field reached the API
    assert driver.execute_script("return location.pathname") == "/"  # nothing launched
    api.close()


def test_a_hostile_run_name_is_text_on_every_page(
    api_url: str, dash_url: str, browser: Any
) -> None:
    """A run name full of HTML and script shows as those characters on the run page, in the
    runs table and on Compare, and nothing in it runs."""
    from selenium.webdriver.common.by import By

    evil = SimulatedRun(api_url, name=EVIL_NAME).complete()
    plain = SimulatedRun(api_url, name="plain neighbour").complete()

    browser.get(f"{dash_url}/runs/{evil.id}")
    wait_until("the run name", lambda: text_of(browser, "#run-name") == EVIL_NAME, 30)
    wait_until("the events", lambda: "finished" in text_of(browser, "#run-events"), 30)
    no_script_ran(browser)

    browser.get(f"{dash_url}/")
    wait_until(
        "the runs table", lambda: browser.find_elements(By.CSS_SELECTOR, "#runs-table td.name")
    )
    names = browser.execute_script(
        "return [...document.querySelectorAll('#runs-table td.name')].map(e => e.innerText);"
    )
    assert EVIL_NAME in names
    no_script_ran(browser)

    browser.get(f"{dash_url}/compare?runs={evil.id},{plain.id}")
    wait_until("the compare table", lambda: EVIL_NAME in text_of(browser, "#compare-content table"))
    no_script_ran(browser)
