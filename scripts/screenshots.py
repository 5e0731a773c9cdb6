"""The README's screenshots, from a real run: `make run`'s demo job and a LoRA baseline.

Starts `python -m backend.serve --demo` (API + dashboard on free loopback
ports, a fresh data dir in a temp folder; the demo is DoRA on MiniLM and
Rotten Tomatoes snippets, 300 steps), launches the same job with
``method: lora`` beside it for Compare, waits for both to finish, and then
takes full-page screenshots with headless Chromium:

- ``run.png``: the finished demo run's page (the README's quick start),
- ``runs.png``: the runs list,
- ``new-job.png``: the New job form over the runs list while both jobs
  train, with the API's message under a bad learning rate (-1; nothing is
  launched),
- ``compare.png``: the demo against the LoRA baseline.

12 to 17 minutes on the shared 2-core machine (both jobs train side by side,
one thread each). Needs Chromium and chromedriver (`make test` installs them as root).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.serve import DEMO_JOB  # noqa: E402
from tests.chromium import headless_chromium  # noqa: E402

BASELINE = {**DEMO_JOB, "name": "baseline: lora on minilm + rt-snippets", "method": "lora"}
SERVE = [sys.executable, "-m", "backend.serve", "--demo"]
WIDTH = 1440
FINAL = ("completed", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"error: gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(every)


def screenshot(driver: Any, path: Path) -> None:
    """The whole page, not just the window."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(max(height, 900), 4000))
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.0)  # plotly relayouts after a resize
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 900)
    print(f"wrote {path}", flush=True)


def drawn(driver: Any, selector: str) -> bool:
    return bool(driver.find_elements("css selector", f"{selector} .js-plotly-plot .main-svg"))


def text_of(driver: Any, selector: str) -> str:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", selector
    )


def fill(driver: Any, field: str, value: str) -> None:
    """Replace what a form input holds (select-all + type, as a person does)."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", f"job-{field}")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(value)


def take_form(driver: Any, dash: str, out: Path) -> None:
    """The New job form over the runs list (both jobs training), with the API's 422."""
    driver.get(f"{dash}/?new=1")
    wait("the job form", lambda: driver.find_elements("id", "job-submit"), 60)
    wait("both runs training", lambda: text_of(driver, "#runs-table").count("running") >= 2, 120)
    fill(driver, "lr", "-1")
    driver.find_element("id", "job-submit").click()
    wait(
        "the API's message under lr",
        lambda: "greater than 0" in text_of(driver, "#job-error-lr"),
        60,
    )
    screenshot(driver, out / "new-job.png")


def take_finished(driver: Any, dash: str, out: Path, demo: int, baseline: int) -> None:
    """The finished demo run, the runs list and Compare."""
    driver.get(f"{dash}/runs/{demo}")
    for card in ("#run-heatmap", "#run-budget", "#run-importance"):
        wait(f"the {card} plot", lambda c=card: drawn(driver, c), 60)
    wait("the events", lambda: "finished" in text_of(driver, "#run-events"), 60)
    screenshot(driver, out / "run.png")

    driver.get(f"{dash}/")
    wait("the runs table", lambda: "baseline" in text_of(driver, "#runs-table"), 60)
    screenshot(driver, out / "runs.png")

    driver.get(f"{dash}/compare?runs={demo},{baseline}")
    wait("the compare heatmaps", lambda: drawn(driver, "#compare-heatmaps"), 60)
    screenshot(driver, out / "compare.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for both jobs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    api_port, dash_port = free_port(), free_port()
    api, dash = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{dash_port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DORA_DATA_DIR": str(Path(tmp) / "data")}
        for key in ("DORA_API_TOKEN", "DATABASE_URL", "DORA_API_URL", "OMP_NUM_THREADS"):
            env.pop(key, None)
        log = Path(tmp) / "serve.log"
        with log.open("w") as out:
            serve = subprocess.Popen(
                [*SERVE, "--api-port", str(api_port), "--dash-port", str(dash_port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        driver = None
        try:
            found = wait(
                "the demo job",
                lambda: (
                    serve.poll() is not None
                    or re.search(r"demo job (?:started|queued): run (\d+)", log.read_text())
                ),
                300,
            )
            if found is True:
                raise SystemExit(
                    f"error: `python -m backend.serve --demo` stopped:\n{log.read_text()}"
                )
            demo = int(found.group(1))
            print(f"demo job started: run {demo} ({dash}/runs/{demo})", flush=True)
            http = httpx.Client(base_url=api, timeout=30)
            baseline = http.post("/api/jobs", json=BASELINE).json()["run_id"]
            print(f"baseline job started: run {baseline}", flush=True)
            driver = headless_chromium(Path(tmp) / "chromium", WIDTH, "--hide-scrollbars")
            take_form(driver, dash, args.out)
            for run_id in (demo, baseline):
                status = wait(
                    f"run {run_id} to finish",
                    lambda r=run_id: (
                        (s := http.get(f"/api/runs/{r}").json()["status"]) in FINAL and s
                    ),
                    args.timeout,
                    every=5,
                )
                if status != "completed":
                    raise SystemExit(
                        f"error: run {run_id} ended {status}; see {dash}/runs/{run_id}"
                    )
            take_finished(driver, dash, args.out, demo, baseline)
        finally:
            if driver is not None:
                driver.quit()
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
