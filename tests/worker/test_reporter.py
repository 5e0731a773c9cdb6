"""The telemetry reporter against a real local HTTP server: order, spool, replay, idempotence."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from dora_core.worker.telemetry import SPOOL_FILE, Reporter, read_metrics
from dora_core.worker.telemetry.journal import Journal
from tests.conftest import wait_until
from tests.worker.fake_api import FakeApi


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi().start()
    yield server
    server.stop()


def by_type(records: list[dict]) -> dict[str, list[dict]]:
    """Records per type, in order (a batch groups records by type, so only this order is kept)."""
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["type"], []).append(r)
    return out


def emit(reporter: Reporter, steps: range) -> None:
    for step in steps:
        reporter.scores(step, {"m.0": [0.5, 0.5]}, {"m.0": [1, 1]})
        reporter.scalars(step, {"loss": 1.0 / (step + 1), "lr": 1e-3})
        if step % 5 == 0:
            reporter.budget(step, target=10, live=10 - step // 5, b=1.5)
            reporter.event(step, "prune", f"pruned at {step}")


def test_off_by_default_writes_metrics_only(tmp_path) -> None:
    reporter = Reporter(tmp_path)
    emit(reporter, range(12))
    assert reporter.close() is True
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if r["type"] == "scores"] == list(range(12))
    assert records[1] == {"type": "scalars", "step": 0, "values": {"loss": 1.0, "lr": 1e-3}}
    assert (tmp_path / SPOOL_FILE).read_text() == ""


def test_streams_in_order_with_contiguous_seq(tmp_path, api: FakeApi) -> None:
    reporter = Reporter(
        tmp_path, api.url, run_name="r1", config={"method": "dora"}, flush_interval=0.05
    )
    reporter.register({"modules": [{"name": "m.0", "rank": 2}], "total_steps": 30})
    emit(reporter, range(30))
    reporter.event(30, "finished", "done")
    assert reporter.close() is True
    assert api.runs == [{"name": "r1", "config": {"method": "dora"}}]
    paths = [p for p, _ in api.requests]
    assert paths[0] == "/api/runs" and paths[1] == "/api/runs/1/register"
    assert sorted(api.batches) == list(range(len(api.batches)))
    sent_seqs = [b["seq"] for p, b in api.requests if p.endswith("/telemetry")]
    assert sent_seqs == sorted(sent_seqs)  # in order, never ahead of an unacknowledged batch
    assert by_type(api.records()) == by_type(read_metrics(tmp_path))
    assert api.records()[-1]["kind"] == "finished"
    assert (tmp_path / SPOOL_FILE).read_text() == ""


def test_training_thread_never_waits_for_a_hanging_api(tmp_path, api: FakeApi) -> None:
    api.release.clear()  # every telemetry request hangs until released
    reporter = Reporter(tmp_path, api.url, run_id=3, flush_interval=0.01)
    done = threading.Event()

    def loop() -> None:
        emit(reporter, range(500))
        done.set()

    threading.Thread(target=loop, daemon=True).start()
    # The hang would block these calls forever if they waited for the API.
    assert done.wait(timeout=60)
    assert api.batches == {}
    api.release.set()
    assert reporter.close(timeout=30) is True
    assert by_type(api.records()) == by_type(read_metrics(tmp_path))


def test_spools_while_down_and_replays_in_order(tmp_path) -> None:
    api = FakeApi()  # port chosen, nothing listening yet
    reporter = Reporter(tmp_path, api.url, run_id=5, flush_interval=0.02, max_backoff=0.2)
    spool_lines = lambda: len((tmp_path / SPOOL_FILE).read_text().splitlines())  # noqa: E731
    emit(reporter, range(10))
    wait_until("a first spooled batch", lambda: spool_lines() >= 1, timeout=20)
    emit(reporter, range(10, 20))
    wait_until("a second spooled batch", lambda: spool_lines() >= 2, timeout=20)
    spooled = [json.loads(line) for line in (tmp_path / SPOOL_FILE).read_text().splitlines()]
    assert [item["body"]["seq"] for item in spooled] == list(range(len(spooled)))
    api.start()
    try:
        emit(reporter, range(20, 40))
        assert reporter.close(timeout=30) is True
        assert sorted(api.batches) == list(range(len(api.batches)))
        assert all(path.startswith("/api/runs/5/") for path, _ in api.requests)
        records = api.records()
        assert [r["step"] for r in records if r["type"] == "scores"] == list(range(40))
        assert by_type(records) == by_type(read_metrics(tmp_path))
        assert (tmp_path / SPOOL_FILE).read_text() == ""
    finally:
        api.stop()


def test_a_lost_reply_is_retried_and_stored_once(tmp_path, api: FakeApi) -> None:
    api.fail_once = {0, 1}
    reporter = Reporter(tmp_path, api.url, run_id=1, flush_interval=0.02, max_backoff=0.1)
    for step in range(3):
        emit(reporter, range(step * 10, step * 10 + 10))
        time.sleep(0.1)
    assert reporter.close(timeout=30) is True
    sent = [b["seq"] for p, b in api.requests if p.endswith("/telemetry")]
    assert sent.count(0) == 2 and sent.count(1) == 2  # each retried once after its lost reply
    assert sorted(api.batches) == list(range(len(api.batches)))
    assert by_type(api.records()) == by_type(read_metrics(tmp_path))


def test_a_new_process_replays_the_spool_into_the_same_run(tmp_path) -> None:
    api = FakeApi()
    first = Reporter(tmp_path, api.url, run_name="r", flush_interval=0.02, max_backoff=0.1)
    first.register({"modules": [], "total_steps": 10})
    emit(first, range(10))
    assert first.close(timeout=0.5) is False  # API down: left in the spool
    assert api.runs == []
    api.start()
    try:
        second = Reporter(tmp_path, api.url, run_name="r", flush_interval=0.02)
        emit(second, range(10, 15))
        assert second.close(timeout=30) is True
        assert len(api.runs) == 1  # created once, both processes report into it
        assert [p for p, _ in api.requests][1] == "/api/runs/1/register"
        assert sorted(api.batches) == list(range(len(api.batches)))
        assert [r["step"] for r in api.records() if r["type"] == "scores"] == list(range(15))
    finally:
        api.stop()


def test_refused_token_stops_sending_and_keeps_the_spool(tmp_path) -> None:
    api = FakeApi(token="right").start()
    try:
        reporter = Reporter(tmp_path, api.url, run_id=1, token="wrong", flush_interval=0.02)
        emit(reporter, range(5))
        assert reporter.close(timeout=5) is False
        assert api.batches == {}
        assert "401" in (reporter.last_error or "")
        assert (tmp_path / SPOOL_FILE).read_text().strip()
    finally:
        api.stop()


# --- the journal: crash consistency and resume ------------------------------------------


def scalar(step: int) -> dict:
    return {"type": "scalars", "step": step, "values": {"loss": float(step)}}


def test_recovery_drops_a_batch_killed_before_it_was_spooled(tmp_path) -> None:
    journal = Journal(tmp_path, spool=True)
    journal.commit([scalar(0), scalar(1)])
    # Killed after writing metrics lines of the next batch, before the spool and the state.
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(scalar(2)) + "\n" + '{"type": "scal')
    recovered = Journal(tmp_path, spool=True)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert recovered.state["next_seq"] == 1
    assert [item["body"]["seq"] for item in recovered.pending] == [0]


def test_recovery_completes_a_batch_killed_before_its_commit(tmp_path) -> None:
    journal = Journal(tmp_path, spool=True)
    journal.commit([scalar(0)])
    state = (tmp_path / "telemetry-state.json").read_text()
    journal.commit([scalar(1), scalar(2)])
    (tmp_path / "telemetry-state.json").write_text(state)  # the last commit never happened
    recovered = Journal(tmp_path, spool=True)
    assert recovered.state["next_seq"] == 2 and recovered.state["metrics_lines"] == 3
    assert [item["body"]["seq"] for item in recovered.pending] == [0, 1]


def test_resume_skips_records_already_reported(tmp_path) -> None:
    journal = Journal(tmp_path, spool=False)
    journal.commit(
        [scalar(s) for s in range(8)]
        + [{"type": "event", "step": 5, "kind": "eval", "message": "", "data": None}]
    )
    # A resumed run restarts at step 4: steps 4..7 are regenerated.
    resumed = Journal(tmp_path, spool=False)
    resumed.commit([scalar(s) for s in range(4, 10)])
    resumed.commit([{"type": "event", "step": 5, "kind": "eval", "message": "", "data": None}])
    resumed.commit(
        [
            {
                "type": "event",
                "step": 4,
                "kind": "log",
                "message": "resumed",
                "data": None,
                "force": True,
            }
        ]
    )
    steps = [(r["type"], r["step"]) for r in read_metrics(tmp_path)]
    assert steps == [
        *[("scalars", s) for s in range(8)],
        ("event", 5),
        ("scalars", 8),
        ("scalars", 9),
        ("event", 4),
    ]
    assert resumed.state["next_seq"] == 3  # the all-old batch was not sent


def test_close_counts_the_time_the_api_was_already_away(tmp_path) -> None:
    """An orphan stopped with SIGTERM (its API gone for longer than the close grace) makes
    one last try and leaves, spool kept, instead of waiting the whole grace again."""
    api = FakeApi()  # nothing listening
    reporter = Reporter(tmp_path, api.url, run_id=2, flush_interval=0.02, max_backoff=0.2)
    emit(reporter, range(5))
    wait_until("six seconds without the API", lambda: reporter.unreachable_for() > 6, timeout=30)
    began = time.monotonic()
    assert reporter.close(timeout=6) is False
    assert time.monotonic() - began < 4.5  # a full grace again would be 6 s
    assert (tmp_path / SPOOL_FILE).read_text() != ""


def test_close_tries_at_once_whatever_the_backoff(tmp_path) -> None:
    """The API came back during a long backoff: close sends now, not when the backoff ends."""
    api = FakeApi()
    reporter = Reporter(tmp_path, api.url, run_id=4, flush_interval=0.02, max_backoff=30)
    emit(reporter, range(5))
    wait_until("backing off", lambda: reporter.unreachable_for() > 4, timeout=30)
    api.start()
    try:
        reporter.event(5, "finished", "done")
        assert reporter.close(timeout=2) is True
        assert api.records()[-1]["kind"] == "finished"
        assert by_type(api.records()) == by_type(read_metrics(tmp_path))
    finally:
        api.stop()
