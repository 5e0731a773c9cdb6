"""Who a worker reports to: its run's writer token, its API's instance id, and stopping
when nobody takes its telemetry any more (an orphan). Against the fake API over HTTP."""

from __future__ import annotations

import json
import logging
import stat

import pytest

from dora_core.contracts.rundir import STATE_FILE
from dora_core.contracts.wire import ORPHANED_EXIT
from dora_core.worker.cli import main
from dora_core.worker.telemetry import SPOOL_FILE, Reporter, read_metrics
from dora_core.worker.train import checkpoint
from tests.conftest import wait_until
from tests.worker.conftest import tiny_job
from tests.worker.fake_api import FakeApi
from tests.worker.test_reporter import by_type, emit


def _header(api: FakeApi, index: int, name: str) -> str | None:
    _path, headers = api.headers[index]
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _state(run_dir) -> dict:
    return json.loads((run_dir / STATE_FILE).read_text())


def test_a_run_created_by_hand_keeps_its_token_and_instance_for_a_resume(tmp_path) -> None:
    api = FakeApi(instance="inst-a", run_tokens_required=True).start()
    try:
        first = Reporter(tmp_path, api.url, run_name="r", flush_interval=0.02)
        first.register({"modules": [], "total_steps": 10})
        emit(first, range(5))
        assert first.close(timeout=30) is True
        state = _state(tmp_path)
        assert (state["run_id"], state["token"], state["instance"]) == (
            1,
            api.run_tokens[1],
            "inst-a",
        )
        # the token is on disk: the state file is its owner's only
        assert stat.S_IMODE((tmp_path / STATE_FILE).stat().st_mode) == 0o600
        # `dora train --resume`: a new process, no token in its environment
        second = Reporter(tmp_path, api.url, run_name="r", flush_interval=0.02)
        emit(second, range(5, 10))
        assert second.close(timeout=30) is True
    finally:
        api.stop()
    assert len(api.runs) == 1
    later = [i for i, (path, _) in enumerate(api.headers) if path != "/api/runs"]
    assert later and all(
        _header(api, i, "Authorization") == f"Bearer {api.run_tokens[1]}"
        and _header(api, i, "X-Dora-Instance") == "inst-a"
        for i in later
    )
    assert by_type(api.records()) == by_type(read_metrics(tmp_path))


def test_a_launched_workers_token_stays_out_of_the_run_dir(tmp_path) -> None:
    api = FakeApi(token="launch-secret", instance="inst-a").start()
    try:
        reporter = Reporter(tmp_path, api.url, run_id=4, token="launch-secret", instance="inst-a")
        emit(reporter, range(3))
        assert reporter.close(timeout=30) is True
    finally:
        api.stop()
    state = _state(tmp_path)
    assert (state["run_id"], state["token"], state["instance"]) == (4, None, "inst-a")
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and b"launch-secret" in p.read_bytes()]
    assert leaked == []


def test_a_resumed_run_without_a_token_is_issued_a_new_one(tmp_path) -> None:
    """A launched worker's token died with it; `dora train --resume` by hand has none."""
    api = FakeApi(instance="inst-a", run_tokens_required=True).start()
    try:
        reporter = Reporter(tmp_path, api.url, run_id=1, instance="inst-a", flush_interval=0.02)
        emit(reporter, range(4))
        assert reporter.close(timeout=30) is True
    finally:
        api.stop()
    assert [path for path, _ in api.requests][:2] == [
        "/api/runs/1/telemetry",
        "/api/runs/1/token",
    ]
    assert _state(tmp_path)["token"] == api.run_tokens[1]
    assert by_type(api.records()) == by_type(read_metrics(tmp_path))


def test_another_api_instance_at_the_address_stores_nothing_and_the_spool_waits(
    tmp_path, caplog
) -> None:
    """The API that created the run stops; another one (its own database) starts on its
    port. It refuses the worker, which keeps everything for its own API and delivers it,
    once, when that one is back."""
    ours = FakeApi(instance="inst-a").start()
    reporter = Reporter(tmp_path, ours.url, run_name="r", flush_interval=0.02, max_backoff=0.1)
    emit(reporter, range(5))
    wait_until("the first batches at our API", lambda: ours.batches, timeout=30)
    ours.stop()
    other = FakeApi(instance="inst-b", port=ours.port).start()
    try:
        with caplog.at_level(logging.ERROR, logger="dora.telemetry"):
            emit(reporter, range(5, 10))
            wait_until("a refusal", lambda: other.refused, timeout=30)
            wait_until("the reporter to count it", lambda: reporter.unreachable_for() > 0.2)
        assert other.batches == {} and other.runs == [] and other.registrations == []
        assert {instance for _, instance in other.refused} == {"inst-a"}
        spooled = (tmp_path / SPOOL_FILE).read_text().splitlines()
        assert spooled, "the refused batches must stay in the spool"
        [line] = {r.getMessage() for r in caplog.records if "inst-b" in r.getMessage()}
        assert "instance inst-b, not instance inst-a" in line
    finally:
        other.stop()
    ours.start()
    try:
        emit(reporter, range(10, 15))
        assert reporter.close(timeout=30) is True
    finally:
        ours.stop()
    assert reporter.unreachable_for() == 0.0
    assert sorted(ours.batches) == list(range(len(ours.batches)))
    assert [r["step"] for r in ours.records() if r["type"] == "scores"] == list(range(15))
    assert by_type(ours.records()) == by_type(read_metrics(tmp_path))


# --- an orphaned worker stops --------------------------------------------------------------


@pytest.mark.slow  # two trainings of 200 steps each, ~20 s apiece
@pytest.mark.parametrize("nobody", ["api down", "another instance"])
def test_an_orphaned_worker_checkpoints_exits_75_and_resumes_into_its_run(
    nobody, tiny_bert, sentiment_csv, tmp_path, monkeypatch, capsys
) -> None:
    """Launched by an API that went away (or whose address another API instance took):
    with a short orphan timeout the worker stops well before its last step, checkpointed,
    spool kept, saying how to resume; resumed once its API is back, nothing is lost."""
    ours = FakeApi(token="launch-secret", instance="inst-a")  # not started: away
    run_dir = tmp_path / "run"
    job = tmp_path / "job.json"
    steps = 200  # about 5 s of training: far more than it trains before the timeout
    job.write_text(
        json.dumps(tiny_job(tiny_bert, sentiment_csv, run_dir, max_steps=steps, eval_every=100))
    )
    for key, value in {
        "DORA_API_URL": ours.url,
        "DORA_RUN_ID": "1",
        "DORA_INGEST_TOKEN": "launch-secret",
        "DORA_API_INSTANCE": "inst-a",
        "DORA_ORPHAN_TIMEOUT_S": "1",
    }.items():
        monkeypatch.setenv(key, value)
    other = FakeApi(instance="inst-b", port=ours.port).start() if nobody != "api down" else None
    try:
        code = main(["train", str(job), "--no-progress"])
    finally:
        if other is not None:
            other.stop()
    err = capsys.readouterr().err
    assert code == ORPHANED_EXIT, err
    stopped = max(checkpoint.list_steps(run_dir))
    assert 0 < stopped < steps
    assert (run_dir / SPOOL_FILE).read_text().strip()  # nothing was delivered, all kept
    assert f"stopped at step {stopped}: the API has taken no telemetry" in err
    assert f"dora train --resume {run_dir}" in err
    if other is not None:
        assert other.batches == {} and other.refused
    last = read_metrics(run_dir)[-1]
    assert (last["type"], last["kind"], last["step"]) == ("event", "cancelled", stopped)

    ours.start()
    try:
        monkeypatch.delenv("DORA_ORPHAN_TIMEOUT_S")
        assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    finally:
        ours.stop()
    assert (run_dir / SPOOL_FILE).read_text() == ""
    assert sorted(ours.batches) == list(range(len(ours.batches)))
    assert by_type(ours.records()) == by_type(read_metrics(run_dir))
    assert ours.records()[-1]["kind"] == "finished"


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_a_bad_orphan_timeout_is_one_line(value, tmp_path, capsys) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": "minilm", "dataset": "rt-snippets"}))
    assert main(["train", str(job), "--orphan-timeout", value]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--orphan-timeout" in line and value in line
