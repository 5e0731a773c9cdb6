"""What an ended worker left in its spool is stored by the API, once, in order.

The spool files here are written by hand in the worker's format
(docs/protocol.md): one JSON request per line, ``telemetry-state.json`` as
the commit point, ``metrics.jsonl`` holding every record of a committed batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from backend.services.spool import replay_spool
from tests.backend.conftest import MODULES, new_run, row_counts, scores_record


def _batch(seq: int, steps: range, finished: bool = False) -> dict:
    body: dict = {
        "seq": seq,
        "scores": [scores_record(step) for step in steps],
        "scalars": [{"step": step, "values": {"loss": 1.0 / (step + 1)}} for step in steps],
    }
    if finished:
        body["events"] = [{"step": steps[-1], "kind": "finished", "message": "done"}]
    return body


def _records(body: dict) -> int:
    return sum(len(body.get(key, [])) for key in ("scores", "budget", "scalars", "events"))


def _write_run_dir(run_dir: Path, bodies: list[dict], committed: int, extra: str = "") -> None:
    """A spool of ``bodies``, the first ``committed`` of them past the state's commit point."""
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"path": "telemetry", "body": b}) + "\n" for b in bodies]
    (run_dir / "telemetry-spool.jsonl").write_text("".join(lines) + extra)
    metric_lines = sum(_records(b) for b in bodies[:committed])
    (run_dir / "metrics.jsonl").write_text("{}\n" * metric_lines)
    state = {"next_seq": bodies[committed - 1]["seq"] + 1, "metrics_lines": metric_lines}
    (run_dir / "telemetry-state.json").write_text(json.dumps(state))


def test_the_spool_is_stored_in_order_and_once(client, database_url, tmp_path) -> None:
    run_id = new_run(client)
    ok = client.post(f"/api/runs/{run_id}/telemetry", json=_batch(0, range(0, 3)))
    assert ok.status_code == 200, ok.text  # the first batch did arrive before the API went away
    bodies = [_batch(0, range(0, 3)), _batch(1, range(3, 6)), _batch(2, range(6, 9), True)]
    # a batch written to the spool but not committed (no metrics lines): never reported
    uncommitted = json.dumps({"path": "telemetry", "body": _batch(3, range(9, 12))}) + "\n"
    torn = '{"path": "telemetry", "body": {"seq": 4'  # killed while writing this line
    run_dir = tmp_path / "run"
    _write_run_dir(run_dir, bodies, committed=3, extra=uncommitted + torn)
    db = client.app.state.db

    result = replay_spool(db, run_id, run_dir)
    assert (result.stored, result.duplicates, result.refused) == (2, 1, 0)
    run = client.get(f"/api/runs/{run_id}").json()
    assert (run["status"], run["step"]) == ("completed", 8)
    assert client.get(f"/api/runs/{run_id}/steps").json()["steps"] == list(range(9))
    loss = client.get(f"/api/runs/{run_id}/scalars", params={"keys": "loss"}).json()
    assert loss["series"]["loss"]["steps"] == list(range(9))

    before = row_counts(database_url)
    again = replay_spool(db, run_id, run_dir)  # the watcher and a later --resume may both try
    assert (again.stored, again.duplicates) == (0, 3)
    assert row_counts(database_url) == before
    spooled = (run_dir / "telemetry-spool.jsonl").read_text()
    assert spooled.endswith(torn), "the worker's files are only read"


def test_a_refused_batch_is_skipped_and_the_rest_stored(client, tmp_path) -> None:
    run_id = new_run(client)
    bad = _batch(1, range(3, 4))
    bad["scores"][0]["values"]["no.such.module"] = [0.5]
    bodies = [_batch(0, range(0, 3)), bad, _batch(2, range(4, 6))]
    run_dir = tmp_path / "run"
    _write_run_dir(run_dir, bodies, committed=3)

    result = replay_spool(client.app.state.db, run_id, run_dir)
    assert (result.stored, result.duplicates, result.refused) == (2, 0, 1)
    assert client.get(f"/api/runs/{run_id}/steps").json()["steps"] == [0, 1, 2, 4, 5]


def test_a_spooled_registration_is_stored_when_the_run_has_none(client, tmp_path) -> None:
    run_id = new_run(client, register=False)
    register = {"modules": MODULES, "total_steps": 100, "init_rank": 3, "target_rank": 2}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [
        {"path": "register", "body": register},
        {"path": "telemetry", "body": _batch(0, range(0, 2))},
    ]
    (run_dir / "telemetry-spool.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run_dir / "metrics.jsonl").write_text("{}\n" * _records(lines[1]["body"]))
    state = {"next_seq": 1, "metrics_lines": _records(lines[1]["body"])}
    (run_dir / "telemetry-state.json").write_text(json.dumps(state))

    result = replay_spool(client.app.state.db, run_id, run_dir)
    assert (result.stored, result.refused) == (2, 0)
    names = [m["name"] for m in client.get(f"/api/runs/{run_id}/modules").json()]
    assert names == [m["name"] for m in MODULES]
    # registered already: a second pass leaves the module list alone
    assert replay_spool(client.app.state.db, run_id, run_dir).duplicates == 2


def test_no_spool_or_an_unreadable_one_stores_nothing(client, database_url, tmp_path) -> None:
    run_id = new_run(client)
    before = row_counts(database_url)
    assert replay_spool(client.app.state.db, run_id, tmp_path / "missing").stored == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "telemetry-spool.jsonl").write_text("not json\n")
    assert replay_spool(client.app.state.db, run_id, broken).stored == 0
    assert row_counts(database_url) == before
