"""The local launcher's GPU inventory: one GPU set per job, the queue in order, torchrun.

A fake inventory comes in through DORA_GPUS (no GPU on the test machine); the
workers are the conftest stand-in, which prints its environment, run by the
real launcher (under real torchrun for a job of several processes). A real
two-process (gloo) job through a real API: tests/worker/test_ddp.py.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.gpus import GpuInventory, nvidia_smi_ids, parse_ids
from backend.main import create_app
from backend.models import Run
from tests.backend.test_job_queue import Recording
from tests.backend.test_jobs import _final, _launch
from tests.conftest import (
    assert_one_line_refusal,
    run_module,
    wait_until,
)

THREE = ("0", "1", "2")


def env_lines(client: TestClient, run_id: int, count: int = 1) -> list[dict]:
    """The environments the run's stand-in processes printed (one per rank), by rank."""

    def lines() -> list[dict] | None:
        log = client.get(f"/api/jobs/{run_id}/log", params={"tail": 500}).json()["lines"]
        found = [json.loads(line[4:]) for line in log if line.startswith("env ")]
        return found if len(found) >= count else None

    found = wait_until(f"{count} env line(s) of run {run_id}", lines, timeout=60)
    return sorted(found, key=lambda env: env["RANK"] or "0")


def _started(client: TestClient, run_id: int) -> bool:
    with client.app.state.db.reader() as session:
        row = session.get(Run, run_id)
        return row is not None and row.worker_handle is not None


def _settle(client: TestClient) -> None:
    time.sleep(max(0.5, 5 * client.app.state.settings.watch_interval_s))


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


# --- the inventory ----------------------------------------------------------------------


def test_ids_parse_as_cuda_visible_devices_takes_them() -> None:
    assert parse_ids("0, 1,2") == THREE
    assert parse_ids("GPU-8a1b2c3d-0000,MIG-GPU-8a1b/1/0") == (
        "GPU-8a1b2c3d-0000",
        "MIG-GPU-8a1b/1/0",
    )
    assert parse_ids("none") == parse_ids(" None ") == ()
    for bad, why in (("0,,1", "not a GPU id"), ("0 1", "not a GPU id"), ("1,1", "twice")):
        with pytest.raises(ValueError, match=why):
            parse_ids(bad)


def test_a_bad_dora_gpus_stops_the_api_in_one_line(tmp_path) -> None:
    env = {**os.environ, "DORA_DATA_DIR": str(tmp_path), "DORA_GPUS": "0;1"}
    assert_one_line_refusal(run_module("backend", env), "DORA_GPUS", "0;1")


def _fake_smi(folder: Path, output: str, status: int = 0) -> None:
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {status}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_the_inventory_comes_from_dora_gpus_then_cuda_visible_devices_then_nvidia_smi(
    tmp_path, monkeypatch
) -> None:
    listing = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)\n"
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)\n"
        "  MIG 3g.40gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)\n"
    )
    _fake_smi(tmp_path, listing)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert nvidia_smi_ids() == ("0", "1")  # GPUs, not their MIG slices
    found = GpuInventory.discover(None, {})
    assert (found.ids, found.source) == (("0", "1"), "nvidia-smi")
    assert GpuInventory.discover(None, {"CUDA_VISIBLE_DEVICES": "3,5"}).ids == ("3", "5")
    assert GpuInventory.discover(None, {"CUDA_VISIBLE_DEVICES": ""}).ids == ()
    assert GpuInventory.discover(("7",), {"CUDA_VISIBLE_DEVICES": "3,5"}).ids == ("7",)
    _fake_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate\n", status=9)
    assert GpuInventory.discover(None, {}).ids == ()
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert GpuInventory.discover(None, {}).source == "none found"


# --- the queue and each worker's GPUs ---------------------------------------------------


@pytest.fixture
def recording(stand_in, database_url):
    launcher = Recording(stand_in.argv_prefix, database_url)
    yield launcher
    launcher.close()


@pytest.mark.both_databases  # the claim's lock and the reservations, on PostgreSQL too
def test_each_job_gets_its_own_gpus_in_queue_order(make_settings, recording) -> None:
    """Three fake GPUs, four slots: a 2-GPU job under torchrun, then a second 2-GPU job that
    must wait, and behind it a 1-GPU job and a CPU job that wait too (first come, first
    served), until the first job ends and frees its GPUs."""
    settings = make_settings(max_jobs=4, gpus=THREE)
    with TestClient(create_app(settings, recording)) as client:
        first = _launch(client, "sleep", gpus=2)
        ranks = env_lines(client, first["id"], count=2)
        assert [(e["RANK"], e["WORLD_SIZE"]) for e in ranks] == [("0", "2"), ("1", "2")]
        assert {e["CUDA_VISIBLE_DEVICES"] for e in ranks} == {"0,1"}
        second = _launch(client, "sleep", gpus=2)
        third = _launch(client, "sleep", gpus=1)  # GPU 2 is free, but it is behind second
        fourth = _launch(client, "sleep")  # no GPU at all, and behind them too
        _settle(client)
        assert recording.started == [first["id"]]
        listed = {r["id"]: r["queue_position"] for r in client.get("/api/runs").json()["items"]}
        assert [listed[r["id"]] for r in (second, third, fourth)] == [1, 2, 3]

        client.post(f"/api/jobs/{first['id']}/cancel")  # frees GPUs 0 and 1
        assert _final(client, first["id"])["status"] == "cancelled"
        for run in (second, third, fourth):
            wait_until(f"run {run['id']} to start", lambda r=run: _started(client, r["id"]), 30)
        assert recording.started == [first["id"], second["id"], third["id"], fourth["id"]]
        assert {e["CUDA_VISIBLE_DEVICES"] for e in env_lines(client, second["id"], 2)} == {"0,1"}
        [one] = env_lines(client, third["id"])
        [none] = env_lines(client, fourth["id"])
        assert (one["CUDA_VISIBLE_DEVICES"], one["WORLD_SIZE"]) == ("2", None)  # one process
        assert none["CUDA_VISIBLE_DEVICES"] == ""  # sees no GPU, so it cannot take another's

        client.post(f"/api/jobs/{third['id']}/cancel")  # GPU 2 is free again
        _final(client, third["id"])
        fifth = _launch(client, "sleep", device="cuda")  # device cuda: one GPU
        [env] = env_lines(client, fifth["id"])
        assert env["CUDA_VISIBLE_DEVICES"] == "2"
        for run in (second, fourth, fifth):
            client.post(f"/api/jobs/{run['id']}/cancel")


@pytest.mark.both_databases  # the claim's lock and the reservations, on PostgreSQL too
def test_a_job_asking_for_more_gpus_than_the_machine_has_is_refused(
    make_settings, recording, database_url
) -> None:
    with TestClient(create_app(make_settings(gpus=("0", "1")), recording)) as client:
        resp = client.post(
            "/api/jobs", json={"model": "minilm", "dataset": "rt-snippets", "gpus": 3}
        )
        assert resp.status_code == 422, resp.text
        [err] = resp.json()["detail"]
        assert err["loc"] == ["body", "gpus"]
        assert "needs 3 GPUs" in err["msg"] and "2 GPUs (0,1, from DORA_GPUS)" in err["msg"]
        assert "\n" not in err["msg"]
    with TestClient(create_app(make_settings(gpus=()), recording)) as client:
        resp = client.post(
            "/api/jobs", json={"model": "minilm", "dataset": "rt-snippets", "device": "cuda"}
        )
        assert resp.status_code == 422, resp.text
        [err] = resp.json()["detail"]
        assert err["loc"] == ["body", "device"] and "needs 1 GPU" in err["msg"]
        assert client.get("/api/runs").json()["items"] == []
    assert recording.started == []


def test_cancel_stops_every_rank_even_one_that_ignores_sigterm(make_settings, recording) -> None:
    """torchrun starts each rank in a session of its own: the SIGKILL after the grace must
    reach them, not only torchrun."""
    settings = make_settings(gpus=("0", "1"), cancel_grace_s=1.0)
    with TestClient(create_app(settings, recording)) as client:
        run = _launch(client, "stubborn", processes=2, device="cpu")
        ranks = env_lines(client, run["id"], count=2)
        assert [e["CUDA_VISIBLE_DEVICES"] for e in ranks] == ["", ""]  # gloo ranks, no GPU
        client.post(f"/api/jobs/{run['id']}/cancel")
        assert _final(client, run["id"])["status"] == "cancelled"
        pids = [e["pid"] for e in ranks]
        wait_until("every rank to be gone", lambda: all(_gone(pid) for pid in pids), timeout=20)


if sys.platform != "linux":  # /proc, process groups
    pytestmark = pytest.mark.skip("the local launcher's process handling is Linux-only")
