"""The Ray launcher without a cluster: its settings, and a job server that does not answer.

With a cluster, see test_ray_cluster.py. Here the address is a loopback port
nothing listens on, which the real Ray client meets as a refused connection.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.ray_launcher import RayJobLauncher
from backend.remote import LauncherUnavailable, is_remote
from tests.conftest import assert_one_line_refusal, free_port, run_module, wait_until

if os.environ.get("CI", "").lower() not in ("true", "1"):
    pytest.importorskip("ray.job_submission", reason="ray[default] (the cluster extra)")


@pytest.mark.parametrize(
    ("env", "variable", "value"),
    [
        ({"DORA_LAUNCHER": "k8s"}, "DORA_LAUNCHER", "is not one of 'local' or 'ray'"),
        ({"DORA_LAUNCHER": "ray"}, "DORA_RAY_ADDRESS", "must be set when DORA_LAUNCHER=ray"),
        (
            {"DORA_LAUNCHER": "ray", "DORA_RAY_ADDRESS": "http://h:8265", "DORA_RAY_CPUS": "0"},
            "DORA_RAY_CPUS",
            "must be positive",
        ),
        ({"DORA_RAY_RUNS_DIR": "runs"}, "DORA_RAY_RUNS_DIR", "must be an absolute path"),
        ({"DORA_MAX_ADAPTER_BYTES": "1GB"}, "DORA_MAX_ADAPTER_BYTES", "is not an integer"),
    ],
)
def test_bad_launcher_settings_stop_the_api_with_one_line(tmp_path, env, variable, value) -> None:
    out = run_module("backend", {"PATH": "/usr/bin:/bin", "DORA_DATA_DIR": str(tmp_path), **env})
    assert_one_line_refusal(out, variable, value)
    assert not (tmp_path / "dora.db").exists()


def dead_cluster() -> RayJobLauncher:
    return RayJobLauncher(f"http://127.0.0.1:{free_port()}")


def test_an_unreachable_cluster_is_a_failed_start_and_a_one_line_error(make_settings) -> None:
    """A job whose submission cannot reach Ray fails at once, saying why; the next one is
    tried (and fails the same way), nothing is left queued."""
    settings = make_settings(launcher="ray", ray_address=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as client:
        assert is_remote(client.app.state.launcher)
        ids = [
            client.post("/api/jobs", json={"model": "minilm", "dataset": "rt-snippets"}).json()[
                "run_id"
            ]
            for _ in range(2)
        ]
        for run_id in ids:
            run = wait_until(
                "the start to fail",
                lambda run_id=run_id: (
                    (r := client.get(f"/api/runs/{run_id}").json())["status"] == "failed" and r
                ),
                timeout=60,
            )
            assert run["error"].startswith("could not start the worker: the Ray cluster at ")
            assert "did not answer" in run["error"] and "\n" not in run["error"]
            assert client.get(f"/api/jobs/{run_id}/log").json() == {"lines": []}


def test_a_cluster_that_stops_answering_leaves_its_jobs_running() -> None:
    """poll says "still running" (the watcher asks again), the log tail is a 503 to say so."""
    launcher = dead_cluster()
    assert launcher.poll("ray:dora-abc-run1-0000") is None
    assert launcher.wait("ray:dora-abc-run1-0000", timeout_s=0.5) is None
    with pytest.raises(LauncherUnavailable, match="did not answer"):
        launcher.log_tail("ray:dora-abc-run1-0000", 10)
    launcher.stop("ray:dora-abc-run1-0000", grace_s=1)  # logged, not raised


def test_a_job_server_that_never_answers_is_given_up_in_time() -> None:
    """Ray's client sets no timeout: a server that takes the connection and says nothing
    would hang the watcher (and the API's start-up) without the launcher's own."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections wait in the backlog, never answered
        launcher = RayJobLauncher(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=1)
        started = time.monotonic()
        assert launcher.poll("ray:dora-abc-run1-0000") is None
        with pytest.raises(LauncherUnavailable, match="did not answer within 1 s"):
            launcher.log_tail("ray:dora-abc-run1-0000", 10)
        assert time.monotonic() - started < 10


def test_handles_of_other_launchers_are_not_ray_jobs() -> None:
    launcher = dead_cluster()
    with pytest.raises(ValueError, match="not a Ray job handle"):
        launcher.poll("local:123:456")
    with pytest.raises(ValueError, match="not a Ray job handle"):
        launcher.poll("ray:")
    assert launcher.log_tail("local:123:456", 10) is None  # the run dir's log, then


@pytest.mark.parametrize(
    ("processes", "python", "expected"),
    [
        (1, "python", "exec python -m dora_core.worker.cli train --job-env DORA_JOB_CONFIG"),
        (
            2,
            "/opt/my env/bin/python",
            "exec '/opt/my env/bin/python' -m torch.distributed.run --standalone "
            "--nproc_per_node=2 -m dora_core.worker.cli train --job-env DORA_JOB_CONFIG",
        ),
    ],
)
def test_the_entrypoint_is_the_fixed_worker_command(processes, python, expected) -> None:
    assert RayJobLauncher("http://h:8265", python=python).entrypoint(processes) == expected
