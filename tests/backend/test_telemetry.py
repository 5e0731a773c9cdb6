"""Telemetry ingest: stored all-or-nothing, idempotent by seq, 422/413 with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.backend.conftest import new_run, row_counts, scores_record

pytestmark = pytest.mark.both_databases  # database behaviour: run on PostgreSQL too


def _batch(seq: int, steps: list[int], **extra) -> dict:
    return {
        "seq": seq,
        "scores": [scores_record(s) for s in steps],
        "budget": [{"step": s, "target": 20 - s, "live": 21 - s, "b": 3.0 - s / 10} for s in steps],
        "scalars": [{"step": s, "values": {"loss": 1.0 / (s + 1), "lr": 1e-3}} for s in steps],
        "events": [{"step": steps[-1], "kind": "prune", "message": "pruned", "data": {"live": 5}}],
        **extra,
    }


def test_batch_is_stored_and_acknowledged(client) -> None:
    run_id = new_run(client)
    resp = client.post(f"/api/runs/{run_id}/telemetry", json=_batch(0, [1, 2, 3]))
    assert resp.status_code == 200
    assert resp.json() == {"seq": 0, "duplicate": False, "step": 3}
    assert client.get(f"/api/runs/{run_id}/steps").json() == {"steps": [1, 2, 3]}
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["step"] == 3 and run["budget"] == {"step": 3, "target": 17, "live": 18}


def test_scores_come_back_as_sent_at_float32_precision(client) -> None:
    run_id = new_run(client)
    sent = [scores_record(s) for s in (1, 2, 3)]
    client.post(f"/api/runs/{run_id}/telemetry", json={"seq": 0, "scores": sent})
    got = client.get(f"/api/runs/{run_id}/scores", params={"layer": 1}).json()
    assert got["steps"] == [1, 2, 3]
    assert [m["name"] for m in got["modules"]] == ["enc.1.q", "enc.1.v", "enc.1.ffn"]
    for series in got["modules"]:
        expected = [np.float32(r["values"][series["name"]]).tolist() for r in sent]
        assert series["scores"] == expected
        assert series["masks"] == [r["masks"][series["name"]] for r in sent]


def test_repeated_seq_is_acknowledged_and_not_stored_twice(client, database_url) -> None:
    run_id = new_run(client)
    batch = _batch(0, [1, 2])
    client.post(f"/api/runs/{run_id}/telemetry", json=batch)
    before = row_counts(database_url)
    again = client.post(f"/api/runs/{run_id}/telemetry", json=batch)
    assert again.status_code == 200 and again.json() == {"seq": 0, "duplicate": True, "step": 2}
    assert row_counts(database_url) == before
    nxt = client.post(f"/api/runs/{run_id}/telemetry", json=_batch(1, [3]))
    assert nxt.json()["duplicate"] is False


def test_seq_is_per_run(client) -> None:
    a, b = new_run(client), new_run(client)
    assert client.post(f"/api/runs/{a}/telemetry", json=_batch(0, [1])).json()["duplicate"] is False
    assert client.post(f"/api/runs/{b}/telemetry", json=_batch(0, [1])).json()["duplicate"] is False


def _broken(mutate) -> dict:
    batch = _batch(1, [5, 6])
    mutate(batch)
    return batch


BAD_BATCHES = {
    "unknown module": (
        lambda b: b["scores"][1]["values"].update({"enc.9.q": [1.0, 2.0, 3.0]}),
        ["body", "scores", 1, "values", "enc.9.q"],
        "unknown module",
    ),
    "missing module": (
        lambda b: b["scores"][0]["masks"].pop("pooler.dense"),
        ["body", "scores", 0, "masks"],
        "missing",
    ),
    "wrong length": (
        lambda b: b["scores"][1]["values"].update({"enc.0.ffn": [1.0, 2.0]}),
        ["body", "scores", 1, "values", "enc.0.ffn"],
        "r' = 5",
    ),
    "mask not a bit": (
        lambda b: b["scores"][0]["masks"].update({"enc.0.q": [1, 0, 2]}),
        ["body", "scores", 0, "masks", "enc.0.q"],
        "0 or 1",
    ),
    "scores go back within the batch": (
        lambda b: b["scores"].reverse(),
        ["body", "scores", 1, "step"],
        "does not come after step 6",
    ),
    "scores go back across batches": (
        lambda b: b["scores"][0].update(step=2),
        ["body", "scores", 0, "step"],
        "does not come after step 2",
    ),
    "budget repeats a stored step": (
        lambda b: b["budget"][0].update(step=2),
        ["body", "budget", 0, "step"],
        "does not come after step 2",
    ),
    "a scalar key goes back": (
        lambda b: b["scalars"].append({"step": 1, "values": {"loss": 0.1}}),
        ["body", "scalars", 2, "step"],
        "'loss' already has a value at step 6",
    ),
    "unknown event kind": (
        lambda b: b["events"].append({"step": 6, "kind": "exploded"}),
        ["body", "events", 1, "kind"],
        "",
    ),
    "negative step": (
        lambda b: b["budget"][0].update(step=-1),
        ["body", "budget", 0, "step"],
        "",
    ),
    "unknown field": (
        lambda b: b.update(extra=1),
        ["body", "extra"],
        "",
    ),
}


@pytest.mark.parametrize("case", BAD_BATCHES, ids=list(BAD_BATCHES))
def test_bad_batch_is_422_naming_the_place_and_writes_nothing(client, database_url, case) -> None:
    mutate, loc, message = BAD_BATCHES[case]
    run_id = new_run(client)
    assert client.post(f"/api/runs/{run_id}/telemetry", json=_batch(0, [1, 2])).status_code == 200
    run_before = client.get(f"/api/runs/{run_id}").json()
    before = row_counts(database_url)
    resp = client.post(f"/api/runs/{run_id}/telemetry", json=_broken(mutate))
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert detail[0]["loc"] == loc
    assert message in detail[0]["msg"]
    assert row_counts(database_url) == before
    assert client.get(f"/api/runs/{run_id}").json() == run_before
    # and the same seq, fixed, is then accepted: the rejected one left no trace
    fixed = client.post(f"/api/runs/{run_id}/telemetry", json=_batch(1, [5, 6]))
    assert fixed.status_code == 200 and fixed.json()["duplicate"] is False


def test_non_finite_scores_are_rejected(client, database_url) -> None:
    run_id = new_run(client)
    batch = _batch(0, [1])
    batch["scores"][0]["values"]["enc.1.v"][2] = float("nan")
    body = json.dumps(batch)  # Python writes NaN, as a sloppy client would
    assert "NaN" in body
    resp = client.post(
        f"/api/runs/{run_id}/telemetry", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "scores", 0, "values", "enc.1.v"]
    assert row_counts(database_url)["score_steps"] == 0


def test_non_finite_scalars_are_stored_as_null(client) -> None:
    run_id = new_run(client)
    body = json.dumps(
        {
            "seq": 0,
            "scalars": [
                {"step": 1, "values": {"loss": 0.5}},
                {"step": 2, "values": {"loss": float("nan")}},
                {"step": 3, "values": {"loss": float("inf"), "eval/accuracy": float("nan")}},
                {"step": 4, "values": {"loss": None}},
            ],
        }
    )
    resp = client.post(
        f"/api/runs/{run_id}/telemetry", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200
    series = client.get(f"/api/runs/{run_id}/scalars", params={"keys": "loss"}).json()["series"]
    assert series["loss"] == {"steps": [1, 2, 3, 4], "values": [0.5, None, None, None]}
    assert client.get(f"/api/runs/{run_id}").json()["metrics"] == {"accuracy": None}


def test_scores_before_register_are_422(client) -> None:
    run_id = new_run(client, register=False)
    resp = client.post(
        f"/api/runs/{run_id}/telemetry", json={"seq": 0, "scores": [scores_record(1)]}
    )
    assert resp.status_code == 422 and "register" in resp.json()["detail"][0]["msg"]


def test_events_are_a_log_and_may_repeat_an_earlier_step(client) -> None:
    """A resumed worker announces itself at its checkpoint's step, below later events."""
    run_id = new_run(client)
    client.post(
        f"/api/runs/{run_id}/telemetry", json={"seq": 0, "events": [{"step": 50, "kind": "prune"}]}
    )
    resp = client.post(
        f"/api/runs/{run_id}/telemetry",
        json={
            "seq": 1,
            "events": [
                {"step": 40, "kind": "log", "message": "resumed from the checkpoint at step 40"}
            ],
        },
    )
    assert resp.status_code == 200
    kinds = [(e["step"], e["kind"]) for e in client.get(f"/api/runs/{run_id}/events").json()]
    assert kinds == [(40, "log"), (50, "prune")]


def test_empty_batch_is_fine_and_counts_its_seq(client) -> None:
    run_id = new_run(client)
    assert client.post(f"/api/runs/{run_id}/telemetry", json={"seq": 0}).json() == {
        "seq": 0,
        "duplicate": False,
        "step": None,
    }
    assert client.post(f"/api/runs/{run_id}/telemetry", json={"seq": 0}).json()["duplicate"] is True


def test_status_follows_the_workers_events(client) -> None:
    run_id = new_run(client)
    client.post(
        f"/api/runs/{run_id}/telemetry",
        json={"seq": 0, "events": [{"step": 9, "kind": "finished", "message": "dev accuracy 0.9"}]},
    )
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "completed" and run["finished_at"] is not None
    # a final status is kept: a late "failed" does not overwrite it
    client.post(
        f"/api/runs/{run_id}/telemetry",
        json={"seq": 1, "events": [{"step": 9, "kind": "failed", "message": "late"}]},
    )
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "completed"

    failing = new_run(client)
    client.post(
        f"/api/runs/{failing}/telemetry",
        json={
            "seq": 0,
            "events": [
                {
                    "step": 3,
                    "kind": "failed",
                    "message": "CUDA out of memory",
                    "data": {"traceback": "..."},
                }
            ],
        },
    )
    run = client.get(f"/api/runs/{failing}").json()
    assert (run["status"], run["error"]) == ("failed", "CUDA out of memory")


def test_metrics_are_the_latest_eval_and_best_follows_accuracy(client) -> None:
    run_id = new_run(client)
    evals = [(10, 0.70, 0.6), (20, 0.85, 0.8), (30, 0.80, 0.79)]
    for seq, (step, acc, f1) in enumerate(evals):
        client.post(
            f"/api/runs/{run_id}/telemetry",
            json={
                "seq": seq,
                "scalars": [
                    {
                        "step": step,
                        "values": {"loss": 0.3, "eval/accuracy": acc, "eval/macro_f1": f1},
                    }
                ],
            },
        )
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["metrics"] == {"accuracy": 0.80, "macro_f1": 0.79}
    assert run["best"] == {"key": "eval/accuracy", "value": 0.85, "step": 20}


def test_event_data_with_nan_is_422(client) -> None:
    run_id = new_run(client)
    body = json.dumps(
        {"seq": 0, "events": [{"step": 1, "kind": "eval", "data": {"x": float("nan")}}]}
    )
    resp = client.post(
        f"/api/runs/{run_id}/telemetry", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == [
        "body",
        "events",
        0,
        "data",
    ]


def test_oversized_batch_is_413_and_writes_nothing(make_settings, stand_in, database_url) -> None:
    from fastapi.testclient import TestClient

    from backend.main import create_app

    with TestClient(create_app(make_settings(max_body_bytes=64 * 1024), stand_in)) as client:
        run_id = new_run(client)
        batch = {"seq": 0, "scores": [scores_record(s) for s in range(1, 400)]}
        body = json.dumps(batch).encode()
        assert len(body) > 64 * 1024
        resp = client.post(
            f"/api/runs/{run_id}/telemetry",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 413
        assert "limit of 65536 bytes" in resp.json()["detail"]

        def chunks():  # no Content-Length: the limit still applies while streaming
            for i in range(0, len(body), 8192):
                yield body[i : i + 8192]

        streamed = client.post(
            f"/api/runs/{run_id}/telemetry",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413
        assert row_counts(database_url)["score_steps"] == 0
        small = {"seq": 0, "scores": [scores_record(1)]}
        assert client.post(f"/api/runs/{run_id}/telemetry", json=small).status_code == 200


def test_default_limit_takes_a_realistic_large_batch(client) -> None:
    """200 steps of a 7-module run is well under 8 MiB; the protocol's batches fit."""
    run_id = new_run(client)
    batch = {"seq": 0, "scores": [scores_record(s) for s in range(1, 201)]}
    assert client.post(f"/api/runs/{run_id}/telemetry", json=batch).status_code == 200
    assert len(client.get(f"/api/runs/{run_id}/steps").json()["steps"]) == 200


def test_order_is_checked_for_runs_stored_before_stream_heads_existed(client, database_url) -> None:
    """Migration 0002 leaves ``heads`` NULL on older runs; their stored rows still count."""
    from sqlalchemy import create_engine, text

    run_id = new_run(client)
    assert client.post(f"/api/runs/{run_id}/telemetry", json=_batch(0, [4, 5])).status_code == 200
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE runs SET heads = NULL WHERE id = :id"), {"id": run_id})
    engine.dispose()
    for field in ("scores", "budget", "scalars"):
        batch = _batch(1, [6])
        batch[field][0]["step"] = 5
        resp = client.post(f"/api/runs/{run_id}/telemetry", json=batch)
        assert resp.status_code == 422, field
        assert resp.json()["detail"][0]["loc"][:2] == ["body", field]
    assert client.post(f"/api/runs/{run_id}/telemetry", json=_batch(1, [6])).status_code == 200
