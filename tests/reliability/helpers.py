"""Real processes for the reliability tests, and what "nothing lost, nothing twice" means.

``ApiServer`` is ``python -m backend`` (the documented way to serve the API)
on a fixed loopback port over one data dir, so it can be killed and started
again where its workers expect it. ``stored_records`` reads a run back
through the API in the shape of the worker's ``metrics.jsonl``, so a test
compares the two directly: the worker's own file is the independent record
of what was reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from backend.launcher import LocalProcessLauncher
from tests.conftest import REPO_ROOT, RunTokens, start_server, stop_server

# A real MiniLM job that trains in seconds on one thread: scores move (and are
# sent) at every step until the mask freezes at step 12, an eval at 12 and 24.
TINY_JOB: dict[str, Any] = {
    "model": "minilm",
    "dataset": "rt-snippets",
    "max_steps": 24,
    "max_train_samples": 96,
    "max_dev_samples": 16,
    "batch_size": 8,
    "max_length": 32,
    "target_rank": 2,
    "prune_interval": 2,
    "eval_every": 12,
}
TABLES = ("score_steps", "budget", "scalars", "events", "ingest_batches")


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker (and of an API whose launched workers inherit it):
    offline, one thread (two cores are shared with other jobs), no stray API settings."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}
    for key in ("DATABASE_URL", "DORA_API_URL", "DORA_RUN_ID", "DORA_INGEST_TOKEN"):
        if key not in extra:
            env.pop(key, None)
    if "DORA_API_TOKEN" not in extra:
        env.pop("DORA_API_TOKEN", None)
    return env


@dataclass
class ApiServer:
    """``python -m backend`` on ``port`` over ``data_dir``; restartable on the same port."""

    data_dir: Path
    port: int
    token: str | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)
    # The writer tokens of the runs the tests create here (kept across restarts).
    run_tokens: RunTokens = field(default_factory=RunTokens)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "dora.db"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self) -> ApiServer:
        extra = {
            "DORA_DATA_DIR": str(self.data_dir),
            "DORA_API_HOST": "127.0.0.1",
            "DORA_API_PORT": str(self.port),
        }
        if self.token:
            extra["DORA_API_TOKEN"] = self.token
        log = self.data_dir.parent / f"api-{self.data_dir.name}-{self.port}-{self.starts}.log"
        self.starts += 1
        self.logs.append(log)
        self.proc = start_server(
            ["-m", "backend"], worker_env(**extra), f"{self.url}/api/health", log
        )
        return self

    def stop(self) -> None:
        """A clean stop (SIGINT, as Ctrl-C)."""
        if self.proc is not None:
            stop_server(self.proc)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash or the OOM killer."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def worker_handles(self) -> dict[int, str]:
        """Run id -> the launcher's handle (``local:<pid>:<start time>``), read from the file."""
        if not self.db_path.exists():
            return {}
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            rows = conn.execute(
                "SELECT id, worker_handle FROM runs WHERE worker_handle IS NOT NULL"
            )
            return dict(rows.fetchall())

    def kill_workers(self) -> None:
        """Kill every worker this API launched that still runs (they outlive the API by design)."""
        reaper = LocalProcessLauncher()
        for handle in self.worker_handles().values():
            reaper.stop(handle, grace_s=0)  # same pid *and* start time, or nothing is signalled


def start_worker(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """``dora train ...`` by hand, in its own process group (killed as a group on cleanup)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dora_core.worker.cli", "train", *args, "--no-progress"],
            cwd=REPO_ROOT,
            env=worker_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def read_records(run_dir: Path) -> list[dict]:
    """The worker's ``metrics.jsonl``: complete lines only (it may be mid-write)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line) for line in lines if line]


def last_step(run_dir: Path) -> int:
    return max((r["step"] for r in read_records(run_dir) if r["type"] == "scalars"), default=-1)


def spool_items(run_dir: Path) -> int:
    path = run_dir / "telemetry-spool.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


# --- what the API holds, in metrics.jsonl terms ---------------------------------------------


def stored_records(http: httpx.Client, run_id: int) -> dict[str, list]:
    """Scores, budget, scalars and events of a run as the API serves them, not downsampled."""
    everything = {"max_points": 100_000}
    modules = http.get(f"/api/runs/{run_id}/modules").json()
    steps = http.get(f"/api/runs/{run_id}/steps").json()["steps"]
    scores: list[dict] = [{"step": s, "values": {}, "masks": {}} for s in steps]
    for m in modules:
        got = http.get(f"/api/runs/{run_id}/scores", params={"module": m["name"], **everything})
        series = got.json()
        assert series["steps"] == steps, m["name"]
        [one] = series["modules"]
        for record, values, masks in zip(scores, one["scores"], one["masks"], strict=True):
            record["values"][m["name"]] = values
            record["masks"][m["name"]] = masks
    budget = http.get(f"/api/runs/{run_id}/budget").json()
    keys = http.get(f"/api/runs/{run_id}/scalars/keys").json()
    series = (
        http.get(
            f"/api/runs/{run_id}/scalars", params={"keys": ",".join(keys), **everything}
        ).json()["series"]
        if keys
        else {}
    )
    scalars = sorted(
        (key, step, value)
        for key, s in series.items()
        for step, value in zip(s["steps"], s["values"], strict=True)
    )
    events = http.get(f"/api/runs/{run_id}/events", params={"limit": 100_000}).json()
    return {
        "scores": scores,
        "budget": [
            {"step": s, "target": t, "live": live, "b": b}
            for s, t, live, b in zip(
                budget["steps"], budget["target"], budget["live"], budget["b"], strict=True
            )
        ],
        "scalars": scalars,
        "events": [(e["step"], e["kind"], e["message"], e["data"]) for e in events],
    }


def reported_records(records: list[dict]) -> dict[str, list]:
    """The same view of the worker's ``metrics.jsonl`` (scores at the API's float32)."""
    out: dict[str, list] = {"scores": [], "budget": [], "scalars": [], "events": []}
    for r in records:
        if r["type"] == "scores":
            values = {k: np.float32(v).tolist() for k, v in r["values"].items()}
            out["scores"].append({"step": r["step"], "values": values, "masks": r["masks"]})
        elif r["type"] == "budget":
            out["budget"].append({k: r[k] for k in ("step", "target", "live", "b")})
        elif r["type"] == "scalars":
            out["scalars"] += [(k, r["step"], v) for k, v in r["values"].items()]
        else:
            out["events"].append((r["step"], r["kind"], r["message"], r["data"]))
    out["scalars"].sort()
    return out


def assert_stored_exactly_once(
    api: ApiServer,
    http: httpx.Client,
    run_id: int,
    run_dir: Path,
    extra_events: int = 0,
    spool_left: bool = False,
) -> dict[str, list]:
    """The API holds every record of ``metrics.jsonl`` once, and nothing else.

    ``extra_events`` events the API writes itself (the launcher's ``failed``
    event for a killed worker) are taken out of the comparison and returned.
    ``spool_left``: the worker gave up with requests in its spool (the API
    took them in from there and left the worker's files as they were).
    Row counts are also read from the SQLite file, and the stored batch
    numbers must be exactly 0..n-1 for the n batches the worker committed.
    """
    sent = reported_records(read_records(run_dir))
    got = stored_records(http, run_id)
    ours = [e for e in got["events"] if e not in sent["events"]]
    assert len(ours) == extra_events, ours
    got["events"] = [e for e in got["events"] if e not in ours]
    for kind in ("scores", "budget", "scalars", "events"):
        assert got[kind] == sent[kind], kind
    state = json.loads((run_dir / "telemetry-state.json").read_text())
    with sqlite3.connect(api.db_path, timeout=30) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", (run_id,)).fetchone()[0]
            for t in TABLES
        }
        seqs = [
            row[0]
            for row in conn.execute(
                "SELECT seq FROM ingest_batches WHERE run_id = ? ORDER BY seq", (run_id,)
            )
        ]
    assert counts == {
        "score_steps": len(sent["scores"]),
        "budget": len(sent["budget"]),
        "scalars": len(sent["scalars"]),
        "events": len(sent["events"]) + extra_events,
        "ingest_batches": state["next_seq"],
    }
    assert seqs == list(range(state["next_seq"]))
    assert (spool_items(run_dir) > 0) == spool_left
    return {"sent": sent, "ours": ours}
