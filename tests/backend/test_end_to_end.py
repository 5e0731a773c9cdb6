"""A real API (uvicorn on a free loopback port) runs a real tiny training job.

The job goes in through ``POST /api/jobs`` with tokens on, so the worker
reports with the per-run ingest token the launcher handed it. Everything the
API then serves (modules, rank matrices, scores, budget curve, scalars,
events, the run summary, the adapter) is compared with what the worker
wrote to its own ``metrics.jsonl``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port, start_api, stop_server

TOKEN = "e2e-master-token"
JOB = {
    "name": "e2e: dora on minilm",
    "model": "minilm",
    "dataset": "rt-snippets",
    "max_steps": 12,
    "max_train_samples": 96,
    "max_dev_samples": 32,
    "batch_size": 8,
    "max_length": 32,
    "target_rank": 2,
    "prune_interval": 2,
    "eval_every": 6,
}


@pytest.fixture
def api(tmp_path: Path):
    """uvicorn serving backend.main:app the way `make run` does; stopped by the test."""
    port = free_port()
    env = {
        **os.environ,
        "DORA_DATA_DIR": str(tmp_path / "data"),
        "DORA_API_HOST": "127.0.0.1",
        "DORA_API_PORT": str(port),
        "DORA_API_TOKEN": TOKEN,
    }
    env.pop("DORA_API_URL", None)
    env.pop("DATABASE_URL", None)
    proc = start_api(port, env, tmp_path / "api.log")
    try:
        yield f"http://127.0.0.1:{port}", tmp_path / "data"
    finally:
        stop_server(proc)


def _listen(url: str, seen: list[dict]) -> None:
    """Follow the run's SSE stream until it ends (after the final status)."""
    with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=180)) as resp:
        for line in resp.iter_lines():
            if line.startswith("id: "):
                seen.append({"id": int(line[4:])})
            elif line.startswith("data: "):
                seen.append(json.loads(line[6:]))


@pytest.mark.slow
def test_a_real_job_through_the_api_matches_the_workers_metrics_file(api) -> None:
    url, data_dir = api
    http = httpx.Client(base_url=url, timeout=30)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http.post("/api/jobs", json=JOB).status_code == 401
    created = http.post("/api/jobs", json=JOB, headers=auth)
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    seen: list[dict] = []
    listener = threading.Thread(target=_listen, args=(f"{url}/api/runs/{run_id}/stream", seen))
    listener.start()

    deadline = time.monotonic() + 240
    while (run := http.get(f"/api/runs/{run_id}").json())["exit_code"] is None:
        assert time.monotonic() < deadline, http.get(f"/api/jobs/{run_id}/log").json()
        time.sleep(0.5)
    log_lines = http.get(f"/api/jobs/{run_id}/log", params={"tail": 500}).json()["lines"]
    assert run["status"] == "completed", (run, log_lines[-30:])
    listener.join(timeout=30)
    assert not listener.is_alive()

    run_dir = data_dir / "runs" / str(run_id)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_type: dict[str, list[dict]] = {}
    for record in records:
        by_type.setdefault(record["type"], []).append(record)
    scores, budget = by_type["scores"], by_type["budget"]

    # --- modules, in the order the worker reported them
    modules = http.get(f"/api/runs/{run_id}/modules").json()
    assert [m["name"] for m in modules] == list(scores[0]["values"])
    assert run["num_modules"] == len(modules) == 36  # 6 blocks x 6 projections
    rank = {m["name"]: m["rank"] for m in modules}
    assert all(len(v) == rank[n] for n, v in scores[-1]["values"].items())

    # --- every score step: values (float32), masks, and the rank matrix's live counts
    steps = [r["step"] for r in scores]
    assert http.get(f"/api/runs/{run_id}/steps").json()["steps"] == steps
    for layer in range(6):
        got = http.get(
            f"/api/runs/{run_id}/scores", params={"layer": layer, "max_points": 10_000}
        ).json()
        assert got["steps"] == steps
        for series in got["modules"]:
            name = series["name"]
            assert series["scores"] == [np.float32(r["values"][name]).tolist() for r in scores]
            assert series["masks"] == [r["masks"][name] for r in scores]
    for record in scores:
        matrix = http.get(f"/api/runs/{run_id}/rank-matrix", params={"step": record["step"]}).json()
        assert matrix["step"] == record["step"]
        for row in range(len(matrix["layers"])):
            for col in range(len(matrix["types"])):
                name = matrix["modules"][row][col]
                assert matrix["live"][row][col] == sum(record["masks"][name])

    # --- budget curve and the run's summary of it
    curve = http.get(f"/api/runs/{run_id}/budget").json()
    assert curve == {
        "steps": [r["step"] for r in budget],
        "target": [r["target"] for r in budget],
        "live": [r["live"] for r in budget],
        "b": [r["b"] for r in budget],
    }
    assert run["budget"] == {
        "step": budget[-1]["step"],
        "target": budget[-1]["target"],
        "live": budget[-1]["live"],
    }

    # --- scalars, key by key
    expected: dict[str, dict[str, list]] = {}
    for record in by_type["scalars"]:
        for key, value in record["values"].items():
            expected.setdefault(key, {"steps": [], "values": []})
            expected[key]["steps"].append(record["step"])
            expected[key]["values"].append(value)
    assert sorted(http.get(f"/api/runs/{run_id}/scalars/keys").json()) == sorted(expected)
    got = http.get(
        f"/api/runs/{run_id}/scalars", params={"keys": ",".join(expected), "max_points": 10_000}
    ).json()["series"]
    assert got == expected
    last_eval = max(s for s in expected["eval/accuracy"]["steps"])
    assert (
        run["metrics"]["accuracy"]
        == expected["eval/accuracy"]["values"][expected["eval/accuracy"]["steps"].index(last_eval)]
    )

    # --- events, in order, as the worker sent them
    events = http.get(f"/api/runs/{run_id}/events").json()
    assert [(e["step"], e["kind"], e["message"]) for e in events] == [
        (r["step"], r["kind"], r["message"]) for r in by_type["event"]
    ]
    assert events[-1]["kind"] == "finished"

    # --- the live stream told us about progress and ended with the final status
    notices = [n for n in seen if "status" in n]
    assert notices[-1] == {"step": run["step"], "status": "completed"}
    ids = [n["id"] for n in seen if "id" in n]
    assert ids == sorted(ids) and ids[-1] == run["step"]

    # --- the worker's process, log and adapter
    assert run["exit_code"] == 0 and run["has_adapter"] is True
    assert any("done: dev accuracy" in line for line in log_lines)
    archive = zipfile.ZipFile(io.BytesIO(http.get(f"/api/runs/{run_id}/adapter.zip").content))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.namelist())
    assert (
        archive.read("adapter_config.json")
        == (run_dir / "adapter" / "adapter_config.json").read_bytes()
    )
