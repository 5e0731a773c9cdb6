"""A worker on a cluster node: its job from the environment, its adapter sent to the API.

The API runs for real (uvicorn in a thread, its own SQLite file); the worker
side is the reporter and the upload code as `dora train` uses them.
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from backend.main import create_app
from backend.settings import Settings
from dora_core.worker.cli import main
from dora_core.worker.telemetry import Reporter
from dora_core.worker.telemetry.client import ApiClient
from dora_core.worker.telemetry.upload import upload_adapter
from tests.conftest import free_port, serve_in_thread
from tests.worker.conftest import tiny_job

CONFIG = {"model": "minilm", "dataset": "rt-snippets", "max_steps": 10}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """A real API and one run created on it as a worker started by hand creates it."""
    with serve_in_thread(create_app(Settings(data_dir=tmp_path / "data"))) as url:
        created = httpx.post(f"{url}/api/runs", json={"name": "remote", "config": CONFIG})
        assert created.status_code == 201, created.text
        yield url, created.json()


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    """An adapter folder as the worker leaves it, plus a symlink that must not travel."""
    folder = tmp_path / "run" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 8)
    (folder / "elsewhere").symlink_to("/etc/hostname")
    return folder


def reporter(run_dir: Path, url: str, run: dict, upload: bool) -> Reporter:
    return Reporter(
        run_dir,
        url,
        run_id=run["id"],
        token=run["token"],
        instance=run["instance"],
        flush_interval=0.02,
        upload_adapter=upload,
    )


def served_adapter(url: str, run_id: int) -> dict[str, bytes] | None:
    resp = httpx.get(f"{url}/api/runs/{run_id}/adapter.zip")
    if resp.status_code == 404:
        return None
    with zipfile.ZipFile(io.BytesIO(resp.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_adapter_reaches_the_api_and_download_serves_it(api, adapter) -> None:
    url, run = api
    sender = reporter(adapter.parent, url, run, upload=True)
    assert sender.upload_adapter(adapter, step=10) is True
    assert sender.close(timeout=10)
    assert served_adapter(url, run["id"]) == {
        "adapter_config.json": b'{"peft_type": "LORA"}',
        "adapter_model.safetensors": bytes(range(256)) * 8,
    }  # the symlink stayed behind


def test_without_the_setting_nothing_is_sent(api, adapter) -> None:
    url, run = api
    sender = reporter(adapter.parent, url, run, upload=False)
    assert sender.upload_adapter(adapter, step=10) is False
    assert sender.close(timeout=10)
    assert served_adapter(url, run["id"]) is None


def test_a_refused_upload_is_a_warning_and_a_log_event(api, adapter, caplog) -> None:
    url, run = api
    (adapter / "adapter_config.json").unlink()  # the API refuses what is not an adapter
    sender = reporter(adapter.parent, url, run, upload=True)
    with caplog.at_level(logging.WARNING, logger="dora.telemetry"):
        assert sender.upload_adapter(adapter, step=10) is False
    assert sender.close(timeout=10)  # the event got through: the run itself is fine
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "HTTP 422" in warned[0] and str(adapter) in warned[0]
    events = httpx.get(f"{url}/api/runs/{run['id']}/events").json()
    logged = [e for e in events if e["kind"] == "log"]
    assert len(logged) == 1 and logged[0]["step"] == 10
    assert "adapter was not uploaded" in logged[0]["message"]
    assert "no adapter_config.json" in logged[0]["message"]
    assert served_adapter(url, run["id"]) is None


def test_an_unreachable_api_is_retried_with_backoff_then_given_up(adapter) -> None:
    client = ApiClient(f"http://127.0.0.1:{free_port()}", "token", timeout=1.0)
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    started = time.monotonic()
    problem = upload_adapter(client, 1, adapter, retry_for=2.0, max_backoff=0.5, sleep=sleep)
    assert problem is not None and "did not take it within 2 s" in problem
    assert pauses[:3] == [0.25, 0.5, 0.5] and set(pauses[1:]) == {0.5}
    assert 1.5 <= time.monotonic() - started < 10


# --- `dora train --job-env NAME`: the job as JSON in the environment ----------------------


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (None, "--job-env DORA_JOB_CONFIG: the variable is not set"),
        ("{not json", "--job-env DORA_JOB_CONFIG: not valid JSON"),
        ('["a", "list"]', "a job config is a mapping of fields"),
        (json.dumps({"model": "minilm", "dataset": "rt-snippets", "lr": -1}), "lr: "),
    ],
)
def test_a_bad_job_in_the_environment_is_one_line(monkeypatch, capsys, value, named) -> None:
    monkeypatch.delenv("DORA_API_URL", raising=False)
    if value is None:
        monkeypatch.delenv("DORA_JOB_CONFIG", raising=False)
    else:
        monkeypatch.setenv("DORA_JOB_CONFIG", value)
    assert main(["train", "--job-env", "DORA_JOB_CONFIG", "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("dora train: error: ") and named in line, line


def test_a_job_file_and_a_job_variable_together_are_refused(tmp_path, capsys) -> None:
    job = tmp_path / "job.json"
    job.write_text("{}")
    assert main(["train", str(job), "--job-env", "X"]) == 2
    assert "not both" in one_error_line(capsys)


def test_a_bad_upload_switch_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps(tiny_job(tmp_path, tmp_path / "d.csv", tmp_path / "run")))
    monkeypatch.setenv("DORA_UPLOAD_ADAPTER", "maybe")
    assert main(["train", str(job), "--no-progress"]) == 2
    assert one_error_line(capsys) == (
        "dora train: error: DORA_UPLOAD_ADAPTER='maybe': use 1 (on) or 0 (off)"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_worker_with_its_job_in_the_environment_uploads_its_adapter_before_it_finishes(
    api, tiny_bert, sentiment_csv, tmp_path, monkeypatch, capsys
) -> None:
    """What the Ray launcher's entrypoint runs, without Ray: the API sees the adapter by the
    time the run is completed, identical to the worker's own folder."""
    url, run = api
    out = tmp_path / "node-run"
    job = tiny_job(tiny_bert, sentiment_csv, out, max_steps=12)
    for name, value in {
        "DORA_JOB_CONFIG": json.dumps(job),
        "DORA_API_URL": url,
        "DORA_RUN_ID": str(run["id"]),
        "DORA_INGEST_TOKEN": run["token"],
        "DORA_API_INSTANCE": run["instance"],
        "DORA_UPLOAD_ADAPTER": "1",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["train", "--job-env", "DORA_JOB_CONFIG", "--no-progress"]) == 0
    summary = httpx.get(f"{url}/api/runs/{run['id']}").json()
    assert summary["status"] == "completed" and summary["has_adapter"] is True
    own = {p.name: p.read_bytes() for p in (out / "adapter").iterdir() if p.is_file()}
    assert set(own) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert served_adapter(url, run["id"]) == own
    events = [e["kind"] for e in httpx.get(f"{url}/api/runs/{run['id']}/events").json()]
    assert events[-1] == "finished" and "log" not in events
    # Sent before the finished event: the folder was complete before the run was.
    stored = tmp_path / "data" / "runs" / str(run["id"]) / "adapter"
    finished = datetime.fromisoformat(summary["finished_at"].replace("Z", "+00:00"))
    assert stored.stat().st_mtime < finished.timestamp()
