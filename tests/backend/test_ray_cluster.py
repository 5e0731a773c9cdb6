"""DORA_LAUNCHER=ray against a real local Ray head: jobs through POST /api/jobs run as Ray jobs.

The session starts one head (``ray start --head`` on loopback, 2 CPUs, its
own temp dir and free ports; ``ray stop`` at the end) from this venv's
``ray``, with the venv's ``bin`` first on its PATH as an activated venv
has it, so the job's ``python`` is this venv's. The API is a real uvicorn
with an API token, as a cluster deployment needs. The Ray workers write
their run dirs under a "node" folder that is not the API's data dir: all
the API learns comes over HTTP (telemetry, the uploaded adapter) or from
Ray (status, log), which the test checks by what the API's run dir holds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dora_core.contracts.rundir import read_metrics
from tests.conftest import free_port, start_api, stop_server, wait_until
from tests.worker import conftest as worker_fixtures

# The worker tests' tiny BERT and sentiment CSV (session fixtures), shared here.
tiny_bert = worker_fixtures.tiny_bert
sentiment_csv = worker_fixtures.sentiment_csv

pytestmark = pytest.mark.slow

TOKEN = "ray-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"


def ray_missing() -> str | None:
    if not RAY.exists():
        return f"no {RAY}: Ray's CLI comes with the cluster extra (pip install -e '.[cluster]')"
    try:
        import ray.job_submission  # noqa: F401
    except ImportError as exc:
        return f"ray[default] is not importable: {exc}"
    return None


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """A local Ray head for the session; yields its job server's URL."""
    missing = ray_missing()
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI=true and no Ray to test against: {missing}")
        pytest.skip(missing)
    # Short: Ray's Unix sockets live under it, and a socket path has at most 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    dashboard = free_port()
    command = [
        str(RAY),
        "start",
        "--head",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        url = f"http://127.0.0.1:{dashboard}"
        wait_until(
            "Ray's job server",
            lambda: _answers(f"{url}/api/version"),
            timeout=120,
            every=0.5,
        )
        yield url
    finally:
        subprocess.run([str(RAY), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def ray_jobs(ray_head: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_head)


@pytest.fixture
def cluster_api(
    ray_head: str, tmp_path: Path, tiny_bert: Path, sentiment_csv: Path
) -> Iterator[Callable[[], str]]:
    """Start (and restart) the API with DORA_LAUNCHER=ray on one port and data dir; the
    function returns its URL. Stopped at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    for name in ("DORA_API_URL", "DATABASE_URL", "DORA_LAUNCHER"):
        env.pop(name, None)
    env.update(
        {
            "DORA_DATA_DIR": str(tmp_path / "data"),
            "DORA_API_TOKEN": TOKEN,
            "DORA_LAUNCHER": "ray",
            "DORA_RAY_ADDRESS": ray_head,
            "DORA_RAY_RUNS_DIR": str(tmp_path / "node"),
            "DORA_MODEL_ROOTS": str(tiny_bert),
            "DORA_DATASET_ROOTS": str(sentiment_csv.parent),
            "DORA_CANCEL_GRACE_S": "20",
        }
    )
    procs: list[subprocess.Popen] = []

    def start(**more: str) -> str:
        for proc in procs:
            stop_server(proc)
        procs.append(start_api(port, {**env, **more}, tmp_path / f"api-{len(procs)}.log"))
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in procs:
            stop_server(proc)


def tiny(tiny_bert: Path, sentiment_csv: Path, name: str, **overrides: object) -> dict:
    """A job that trains the tiny BERT in seconds (no output_dir: the server picks it)."""
    return {
        "name": name,
        "model": str(tiny_bert),
        "dataset": str(sentiment_csv),
        "text_column": "review",
        "label_column": "sentiment",
        "max_length": 16,
        "method": "dora",
        "target_rank": 2,
        "max_steps": 12,
        "batch_size": 8,
        "lr": 0.01,
        "prune_interval": 2,
        "eval_every": 6,
        "seed": 7,
        "device": "cpu",
        **overrides,
    }


def handle_of(data_dir: Path, run_id: int) -> str:
    with sqlite3.connect(data_dir / "dora.db") as db:
        return db.execute("SELECT worker_handle FROM runs WHERE id = ?", (run_id,)).fetchone()[0]


def submit(http: httpx.Client, job: dict) -> int:
    created = http.post("/api/jobs", json=job, headers=AUTH)
    assert created.status_code == 201, created.text
    return created.json()["run_id"]


def ended(http: httpx.Client, run_id: int, timeout: float = 300) -> dict:
    return wait_until(
        f"run {run_id}'s worker to end",
        lambda: (r := http.get(f"/api/runs/{run_id}").json())["exit_code"] is not None and r,
        timeout=timeout,
        every=0.5,
    )


def test_a_job_runs_on_the_cluster_with_its_telemetry_log_and_adapter(
    cluster_api, ray_head, tmp_path, tiny_bert, sentiment_csv
) -> None:
    http = httpx.Client(base_url=cluster_api(), timeout=30)
    instance = http.get("/api/health").json()["instance"]
    run_id = submit(http, tiny(tiny_bert, sentiment_csv, "on ray"))
    run = ended(http, run_id)
    log = http.get(f"/api/jobs/{run_id}/log", params={"tail": 1000}).json()["lines"]
    assert (run["status"], run["exit_code"], run["error"]) == ("completed", 0, None), log[-20:]

    # --- what Ray was asked to run
    handle = handle_of(tmp_path / "data", run_id)
    assert handle.startswith("ray:")
    # As the job server keeps it (its CPUs and GPUs: see the next test).
    job = httpx.get(f"{ray_head}/api/jobs/{handle.removeprefix('ray:')}").json()
    assert (job["status"], job["driver_exit_code"]) == ("SUCCEEDED", 0)
    assert (
        job["entrypoint"] == "exec python -m dora_core.worker.cli train --job-env DORA_JOB_CONFIG"
    )
    sent = job["runtime_env"]["env_vars"]
    node_dir = tmp_path / "node" / instance / str(run_id)
    assert json.loads(sent["DORA_JOB_CONFIG"])["output_dir"] == str(node_dir)
    assert (sent["DORA_RUN_ID"], sent["DORA_API_INSTANCE"]) == (str(run_id), instance)
    assert sent["DORA_UPLOAD_ADAPTER"] == "1" and sent["DORA_INGEST_TOKEN"] != TOKEN
    assert "DORA_API_TOKEN" not in sent and "DATABASE_URL" not in sent

    # --- the telemetry in the run is what the worker wrote on its node
    records = read_metrics(node_dir)
    scores = [r["step"] for r in records if r["type"] == "scores"]
    assert http.get(f"/api/runs/{run_id}/steps").json()["steps"] == scores
    assert run["step"] == 12 and run["num_modules"] == 12  # 2 layers x 6 projections
    events = http.get(f"/api/runs/{run_id}/events").json()
    assert [e["kind"] for e in events] == [r["kind"] for r in records if r["type"] == "event"]
    assert events[-1]["kind"] == "finished"

    # --- the log comes from Ray, the adapter through the API: the API's own run dir has
    # nothing of the worker's but what it uploaded
    assert any(f"run dir {node_dir}" in line for line in log)
    assert any("adapter uploaded to the API" in line for line in log)
    api_run_dir = tmp_path / "data" / "runs" / str(run_id)
    assert sorted(p.name for p in api_run_dir.iterdir()) == ["adapter", "job.json"]
    assert run["has_adapter"] is True
    download = http.get(f"/api/runs/{run_id}/adapter.zip")
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        served = {name: archive.read(name) for name in archive.namelist()}
    on_node = {p.name: p.read_bytes() for p in (node_dir / "adapter").iterdir()}
    assert served == on_node and "adapter_model.safetensors" in served


def test_cancel_stops_a_ray_job_that_a_restarted_api_adopted(
    cluster_api, ray_jobs, tmp_path, tiny_bert, sentiment_csv
) -> None:
    """Each job reserves DORA_RAY_CPUS=2 CPUs: the head's two. So a second job waits in
    Ray (PENDING: still running to the API) until the first, cancelled, gives them back."""
    url = cluster_api(DORA_RAY_CPUS="2")
    http = httpx.Client(base_url=url, timeout=30)
    long = tiny(tiny_bert, sentiment_csv, "long on ray", max_steps=100_000, eval_every=100_000)
    first = submit(http, long)
    wait_until(
        "the first Ray job to train",
        lambda: (http.get(f"/api/runs/{first}").json()["step"] or 0) > 0,
        timeout=240,
        every=0.5,
    )
    second = submit(http, tiny(tiny_bert, sentiment_csv, "waits for cpus"))
    submissions = {
        run_id: handle_of(tmp_path / "data", run_id).removeprefix("ray:")
        for run_id in wait_until(
            "both jobs submitted",
            lambda: (
                all(handle_of(tmp_path / "data", r) for r in (first, second)) and [first, second]
            ),
            timeout=30,
        )
    }

    # The API stops (its lease released) and comes back: both jobs are adopted, none is
    # failed, and the first one's telemetry keeps arriving.
    assert cluster_api(DORA_RAY_CPUS="2") == url
    before = http.get(f"/api/runs/{first}").json()
    assert before["status"] == "running" and before["exit_code"] is None
    wait_until(
        "telemetry to the restarted API",
        lambda: http.get(f"/api/runs/{first}").json()["step"] > before["step"],
        timeout=60,
        every=0.5,
    )
    assert str(ray_jobs.get_job_status(submissions[first])) == "RUNNING"
    assert str(ray_jobs.get_job_status(submissions[second])) == "PENDING"
    waiting = http.get(f"/api/runs/{second}").json()
    assert (waiting["status"], waiting["exit_code"], waiting["step"]) == ("queued", None, None)

    cancelled = http.post(f"/api/jobs/{first}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    run = ended(http, first, timeout=120)
    assert (run["status"], run["exit_code"]) == ("cancelled", 143)
    assert str(ray_jobs.get_job_status(submissions[first])) == "STOPPED"
    log = http.get(f"/api/jobs/{first}/log").json()["lines"]
    assert any("cancelled by SIGTERM" in line for line in log), log[-10:]  # checkpointed

    # Its CPUs are free: the second job runs now, to the end.
    run = ended(http, second)
    assert (run["status"], run["exit_code"], run["has_adapter"]) == ("completed", 0, True)


def test_a_job_whose_worker_cannot_start_fails_with_rays_reason(
    cluster_api, tiny_bert, sentiment_csv
) -> None:
    """No worker ran, so nothing reported: the run's error is Ray's (the exit status and the
    log's last line), and its log is Ray's."""
    http = httpx.Client(base_url=cluster_api(DORA_RAY_PYTHON="/no/such/python"), timeout=30)
    run_id = submit(http, tiny(tiny_bert, sentiment_csv, "no interpreter"))
    run = ended(http, run_id)
    assert (run["status"], run["exit_code"]) == ("failed", 127)
    assert run["error"].startswith("the Ray job dora-")
    assert "failed with exit status 127: " in run["error"] and "/no/such/python" in run["error"]
    log = http.get(f"/api/jobs/{run_id}/log").json()["lines"]
    assert any("/no/such/python" in line and "not found" in line for line in log), log
