"""Live run page: polling vs following the API's event stream (DORA_DASH_LIVE=poll|stream).

For each mode a real API (uvicorn, SQLite in a temp folder, access log on)
and a real dashboard (`python -m dashboard.app`, DORA_DASH_POLL_MS=1500, the
default) start on loopback, and headless Chromium opens the page of a run
that a simulated worker feeds: a MiniLM-sized DoRA run (6 layers x 6 module
types, r' = 6), one telemetry batch per optimizer step (scores and masks of
every module, a budget point, loss and lr, a pruning event every 5 steps),
as `dora train --api` reports. Three scenarios of SECONDS each:

- steady: a step every 0.7 s (the demo job's pace on the 2-core machine),
- sparse: a step every 6 s (a larger model, or evaluation in between),
- quiet:  running, nothing new (a long evaluation, a stalled worker).

Reported per mode and scenario: the API requests the page caused per minute
(GET lines in the API's access log, without the top bar's health check and
without the worker's POSTs; a relayed stream counts once, when it opens),
and the update latency: from a step's POST returning to the page's budget
curve showing it (a script in the page records when the curve's last step
changes), median / p95 / max over the steps posted.

    .venv/bin/python bench/live_updates.py [--seconds 60] [--modes poll,stream]

Needs Chromium and chromedriver (what the browser tests use).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from ingest import free_port  # noqa: E402

TYPES = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
LAYERS = 6
RANK = 6
SCENARIOS = {"steady": 0.7, "sparse": 6.0, "quiet": None}  # seconds between steps
POLL_MS = 1500
# Records, in the page, when the budget curve's last step changes: {step: Date.now()}.
WATCH_JS = """
window.__seen = {}; window.__last = null;
setInterval(function () {
  const gd = document.querySelector('#run-budget .js-plotly-plot');
  if (!gd || !gd.data || gd.data.length < 2) return;
  const x = gd.data[1].x; if (!x || !x.length) return;
  const last = x[x.length - 1];
  if (last !== window.__last) { window.__last = last; window.__seen[last] = Date.now(); }
}, 20);
"""


def modules() -> list[dict]:
    return [
        {
            "name": f"bert.encoder.layer.{layer}.{kind}",
            "layer": layer,
            "type": kind,
            "shape": [1536 if kind == "intermediate.dense" else 384, 384],
            "rank": RANK,
        }
        for layer in range(LAYERS)
        for kind in TYPES
    ]


class Worker:
    """A run created through the API and fed one batch per step, with its writer token."""

    def __init__(self, api: str, name: str):
        self.http = httpx.Client(base_url=api, timeout=30)
        config = {"model": "minilm", "dataset": "rt-snippets", "target_rank": 4, "max_steps": 300}
        created = self.http.post("/api/runs", json={"name": name, "config": config}).json()
        self.id = created["id"]
        self.http.headers["Authorization"] = f"Bearer {created['token']}"
        self.mods = modules()
        self.http.post(
            f"/api/runs/{self.id}/register",
            json={"modules": self.mods, "total_steps": 300, "init_rank": RANK, "target_rank": 4},
        ).raise_for_status()
        self.seq = 0
        self.step = 0
        self.posted: dict[int, float] = {}  # step -> wall time (ms) its POST returned

    def post_step(self) -> None:
        step = self.step
        live = max(4, RANK - step // 20)
        names = [m["name"] for m in self.mods]
        batch = {
            "seq": self.seq,
            "scores": [
                {
                    "step": step,
                    "values": {
                        n: [(RANK - i) / 21 + step / 1e4 for i in range(RANK)] for n in names
                    },
                    "masks": {n: [int(i < live) for i in range(RANK)] for n in names},
                }
            ],
            "budget": [{"step": step, "target": live * 36, "live": live * 36, "b": float(live)}],
            "scalars": [{"step": step, "values": {"loss": 1 / (1 + step / 50), "lr": 5e-4}}],
            "events": [{"step": step, "kind": "prune", "message": "pruned"}]
            if step % 5 == 0
            else [],
        }
        self.http.post(f"/api/runs/{self.id}/telemetry", json=batch).raise_for_status()
        self.posted[step] = time.time() * 1000
        self.seq += 1
        self.step += 1


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str], health: str, log: Path) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(health, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1440,900")
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def page_gets(log: Path, start: int) -> tuple[int, int]:
    """(GET requests to the API after byte ``start`` of its access log, health checks excluded;
    the byte offset now)."""
    text = log.read_bytes()
    lines = text[start:].decode(errors="replace").splitlines()
    gets = [ln for ln in lines if '"GET /api/' in ln and "/api/health" not in ln]
    return len(gets), len(text)


def scenario(driver, api: str, dash: str, log: Path, name: str, gap: float | None, seconds: float):
    worker = Worker(api, f"bench {name}")
    for _ in range(3):
        worker.post_step()
    driver.get(f"{dash}/runs/{worker.id}")
    deadline = time.monotonic() + 60
    while not driver.execute_script(
        "const gd = document.querySelector('#run-budget .js-plotly-plot');"
        "return !!(gd && gd.data && gd.data.length > 1 && gd.data[1].x.length);"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the run page did not draw its budget curve")
        time.sleep(0.1)
    driver.execute_script(WATCH_JS)
    time.sleep(2)  # the page settles (its stream opens)
    follows = driver.execute_script(
        "const e = document.getElementById('run-live-follow'); return e ? e.innerText : '';"
    )
    first = worker.step
    _, offset = page_gets(log, 0)
    start = time.monotonic()
    next_post = start
    while time.monotonic() - start < seconds:
        if gap is not None and time.monotonic() >= next_post:
            worker.post_step()
            next_post += gap
        time.sleep(0.02)
    time.sleep(max(3.0, POLL_MS / 1000 * 2))  # let the last step be drawn
    elapsed = time.monotonic() - start
    gets, _ = page_gets(log, offset)
    seen = {int(k): v for k, v in driver.execute_script("return window.__seen").items()}
    latencies = []
    for step in range(first, worker.step):
        shown = [t for s, t in seen.items() if s >= step]
        if shown:
            latencies.append(min(shown) - worker.posted[step])
    return {
        "scenario": name,
        "follows": follows,
        "posted": worker.step - first,
        "drawn": len(latencies),
        "gets_per_min": gets / elapsed * 60,
        "latency": latencies,
    }


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "–"
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"{statistics.median(values):.0f} / {p95:.0f} / {values[-1]:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--modes", default="poll,stream")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for mode in args.modes.split(","):
            api_port, dash_port = free_port(), free_port()
            api, dash = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{dash_port}"
            env = {
                **os.environ,
                "DORA_DATA_DIR": str(folder / mode),
                "DORA_API_PORT": str(api_port),
            }
            for key in ("DATABASE_URL", "DORA_API_TOKEN", "DORA_API_URL"):
                env.pop(key, None)
            dash_env = {
                **env,
                "DORA_API_URL": api,
                "DORA_DASH_PORT": str(dash_port),
                "DORA_DASH_POLL_MS": str(POLL_MS),
                "DORA_DASH_LIVE": mode,
            }
            api_log = folder / f"api-{mode}.log"
            uvicorn = ["-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1"]
            with (
                server([*uvicorn, "--port", str(api_port)], env, f"{api}/api/health", api_log),
                server(["-m", "dashboard.app"], dash_env, f"{dash}/", folder / f"dash-{mode}.log"),
                chromium(folder / f"chromium-{mode}") as driver,
            ):
                for name in args.scenarios.split(","):
                    row = scenario(driver, api, dash, api_log, name, SCENARIOS[name], args.seconds)
                    row["mode"] = mode
                    rows.append(row)
                    print(
                        f"{mode:6} {name:6} follows={row['follows'] or '-':9} "
                        f"{row['gets_per_min']:6.1f} GET/min  latency ms (median/p95/max) "
                        f"{fmt_ms(row['latency'])}  ({row['drawn']}/{row['posted']} steps)",
                        flush=True,
                    )
    load = os.getloadavg()
    print(f"\nload average (1/5/15 min) at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(
        "\n| scenario | mode | API requests per minute | update latency ms (median / p95 / max) |"
    )
    print("|---|---|---:|---|")
    for row in rows:
        print(
            f"| {row['scenario']} | {row['mode']} | {row['gets_per_min']:.1f} | "
            f"{fmt_ms(row['latency'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
