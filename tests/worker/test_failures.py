"""Failures reach the API as a `failed` event (with the traceback) and a non-zero exit."""

from __future__ import annotations

import json
import shutil

import pytest

from dora_core.worker.cli import main
from tests.worker.conftest import tiny_job
from tests.worker.fake_api import FakeApi


@pytest.fixture
def launched(monkeypatch):
    """The environment the API's launcher gives a worker: URL, run id, ingest token."""
    api = FakeApi(token="secret").start()
    monkeypatch.setenv("DORA_API_URL", api.url)
    monkeypatch.setenv("DORA_RUN_ID", "4")
    monkeypatch.setenv("DORA_INGEST_TOKEN", "secret")
    yield api
    api.stop()


def failed_events(api: FakeApi) -> list[dict]:
    return [r for r in api.records() if r["type"] == "event" and r["kind"] == "failed"]


def test_a_crash_during_the_run_reports_failed_with_the_traceback(
    launched, tiny_bert, sentiment_csv, tmp_path, capsys
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_bert, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated download
    job = tmp_path / "job.json"
    job.write_text(json.dumps(tiny_job(broken, sentiment_csv, tmp_path / "run")))
    assert main(["train", str(job), "--no-progress"]) == 1
    assert "training failed" in capsys.readouterr().err.strip().splitlines()[-1]
    assert all(path.startswith("/api/runs/4/") for path, _ in launched.requests)
    (event,) = failed_events(launched)
    assert "Traceback" in event["data"]["traceback"]
    assert "safetensors" in event["data"]["traceback"].lower()
    assert event["message"]


def test_a_bad_job_from_the_launcher_is_reported_before_exiting(
    launched, tiny_bert, tmp_path, capsys
) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps(tiny_job(tiny_bert, tmp_path / "gone.csv", tmp_path / "run")))
    assert main(["train", str(job), "--no-progress"]) == 2
    (event,) = failed_events(launched)
    assert event["message"].startswith("dataset: file")
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_finished_run_replays_its_spool_on_resume(tiny_bert, sentiment_csv, tmp_path) -> None:
    from dora_core.contracts.job import parse_job_config
    from dora_core.worker.telemetry import SPOOL_FILE, read_metrics
    from dora_core.worker.train.loop import Telemetry, train

    api = FakeApi()  # down for the whole run
    job = parse_job_config(tiny_job(tiny_bert, sentiment_csv, tmp_path / "run", max_steps=20))
    train(job, telemetry=Telemetry(api_url=api.url, close_timeout=0.5), progress=False)
    assert (tmp_path / "run" / SPOOL_FILE).read_text().strip()  # everything waits in the spool
    api.start()
    try:
        again = Telemetry(api_url=api.url)
        outcome = train(job, run_dir=tmp_path / "run", resume=True, telemetry=again, progress=False)
    finally:
        api.stop()
    assert outcome.status == "completed"
    assert (tmp_path / "run" / SPOOL_FILE).read_text() == ""
    assert len(api.runs) == 1 and len(api.registrations) == 1
    sent = sorted((r["type"], r["step"]) for r in api.records())
    assert sent == sorted((r["type"], r["step"]) for r in read_metrics(tmp_path / "run"))
