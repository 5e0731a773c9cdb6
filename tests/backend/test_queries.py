"""The dashboard's queries, checked against values computed here from what was sent."""

from __future__ import annotations

import numpy as np
import pytest

from tests.backend.conftest import MODULES, new_run, scores_record

pytestmark = pytest.mark.both_databases  # database behaviour: run on PostgreSQL too

PRUNE_STEPS = (37, 38, 61)


def _fill(client, steps=range(1, 101)) -> int:
    """A run with scores at ``steps``, pruning events at PRUNE_STEPS, budget and scalars."""
    run_id = new_run(client)
    steps = list(steps)
    for seq, start in enumerate(range(0, len(steps), 25)):
        chunk = steps[start : start + 25]
        batch = {
            "seq": seq,
            "scores": [scores_record(s) for s in chunk],
            "scalars": [{"step": s, "values": {"loss": 10.0 - s / 100}} for s in chunk],
            "events": [
                {"step": s, "kind": "prune", "message": f"at {s}"}
                for s in PRUNE_STEPS
                if s in chunk
            ],
        }
        if any(s in chunk for s in PRUNE_STEPS):
            batch["budget"] = [
                {"step": s, "target": 30 - s // 10, "live": 31 - s // 10, "b": 4 - s / 100}
                for s in PRUNE_STEPS
                if s in chunk
            ]
        resp = client.post(f"/api/runs/{run_id}/telemetry", json=batch)
        assert resp.status_code == 200, resp.text
    return run_id


def _live(step: int, module_index: int) -> int:
    """Live count as scores_record defines the mask: bit c is off when (step+m+c) % 3 == 0."""
    rank = MODULES[module_index]["rank"]
    return sum(1 for c in range(rank) if (step + module_index + c) % 3 != 0)


def test_rank_matrix_latest_and_nearest_at_or_before(client) -> None:
    run_id = _fill(client, steps=[10, 20, 30])
    latest = client.get(f"/api/runs/{run_id}/rank-matrix").json()
    assert latest["step"] == 30
    assert latest["layers"] == [0, 1]
    assert latest["types"] == [
        "q",
        "v",
        "ffn",
    ]  # first-seen order; the pooler (no layer) is left out
    assert latest["modules"] == [
        ["enc.0.q", "enc.0.v", "enc.0.ffn"],
        ["enc.1.q", "enc.1.v", "enc.1.ffn"],
    ]
    assert latest["rank"] == [[3, 3, 5], [3, 3, 5]]
    assert latest["live"] == [[_live(30, layer * 3 + t) for t in range(3)] for layer in range(2)]
    at_25 = client.get(f"/api/runs/{run_id}/rank-matrix", params={"step": 25}).json()
    assert at_25["step"] == 20
    assert at_25["live"] == [[_live(20, layer * 3 + t) for t in range(3)] for layer in range(2)]
    before_any = client.get(f"/api/runs/{run_id}/rank-matrix", params={"step": 5}).json()
    assert before_any["step"] is None and before_any["live"] == [[None] * 3, [None] * 3]
    assert before_any["rank"] == latest["rank"]


def test_rank_matrix_of_a_run_without_modules_is_empty(client) -> None:
    run_id = new_run(client, register=False)
    assert client.get(f"/api/runs/{run_id}/rank-matrix").json() == {
        "step": None,
        "layers": [],
        "types": [],
        "live": [],
        "rank": [],
        "modules": [],
    }


def test_rank_matrix_with_missing_cells(client) -> None:
    modules = [MODULES[0], MODULES[5]]  # enc.0.q and enc.1.ffn only
    run_id = new_run(client, modules=modules)
    client.post(
        f"/api/runs/{run_id}/telemetry", json={"seq": 0, "scores": [scores_record(3, modules)]}
    )
    matrix = client.get(f"/api/runs/{run_id}/rank-matrix").json()
    assert matrix["types"] == ["q", "ffn"]
    assert matrix["modules"] == [["enc.0.q", None], [None, "enc.1.ffn"]]
    assert matrix["live"][0][1] is None and matrix["rank"][1] == [None, 5]


def test_module_series_downsampled_keeps_pruning_steps(client) -> None:
    run_id = _fill(client)
    got = client.get(
        f"/api/runs/{run_id}/scores", params={"module": "enc.1.v", "max_points": 10}
    ).json()
    assert len(got["steps"]) <= 10
    assert (
        set(PRUNE_STEPS) <= set(got["steps"]) and got["steps"][0] == 1 and got["steps"][-1] == 100
    )
    [series] = got["modules"]
    assert (series["name"], series["type"]) == ("enc.1.v", "v")
    m = 4  # enc.1.v is registered fifth
    expected = [
        np.float32([s + m / 100 + c / 10_000 for c in range(3)]).tolist() for s in got["steps"]
    ]
    assert series["scores"] == expected
    assert series["masks"] == [
        [0 if (s + m + c) % 3 == 0 else 1 for c in range(3)] for s in got["steps"]
    ]


def test_series_since_step_returns_only_newer_steps(client) -> None:
    run_id = _fill(client)
    got = client.get(
        f"/api/runs/{run_id}/scores", params={"module": "pooler.dense", "since_step": 95}
    ).json()
    assert got["steps"] == [96, 97, 98, 99, 100]
    assert got["modules"][0]["scores"][0] == np.float32([96.06, 96.0601]).tolist()
    assert client.get(f"/api/runs/{run_id}/steps").json()["steps"] == list(range(1, 101))
    nothing_new = client.get(f"/api/runs/{run_id}/scores", params={"layer": 1, "since_step": 100})
    assert nothing_new.json() == {
        "steps": [],
        "modules": [
            {"name": f"enc.1.{t}", "type": t, "scores": [], "masks": []} for t in ("q", "v", "ffn")
        ],
    }


def test_layer_series_and_bad_selectors(client) -> None:
    run_id = _fill(client, steps=[1, 2])
    got = client.get(f"/api/runs/{run_id}/scores", params={"layer": 0}).json()
    assert [m["name"] for m in got["modules"]] == ["enc.0.q", "enc.0.v", "enc.0.ffn"]
    assert [len(m["scores"][0]) for m in got["modules"]] == [3, 3, 5]
    both = client.get(f"/api/runs/{run_id}/scores", params={"layer": 0, "module": "enc.0.q"})
    neither = client.get(f"/api/runs/{run_id}/scores")
    assert both.status_code == neither.status_code == 422
    assert client.get(f"/api/runs/{run_id}/scores", params={"module": "nope"}).status_code == 404
    assert client.get(f"/api/runs/{run_id}/scores", params={"layer": 7}).status_code == 404
    assert (
        client.get(f"/api/runs/{run_id}/scores", params={"layer": 0, "max_points": 0}).status_code
        == 422
    )


def test_budget_curve(client) -> None:
    run_id = _fill(client)
    assert client.get(f"/api/runs/{run_id}/budget").json() == {
        "steps": [37, 38, 61],
        "target": [27, 27, 24],
        "live": [28, 28, 25],
        "b": [3.63, 3.62, 3.39],
    }
    assert client.get(f"/api/runs/{run_id}/budget", params={"since_step": 38}).json()["steps"] == [
        61
    ]


def test_scalars_downsampled_and_keys(client) -> None:
    run_id = _fill(client)
    assert client.get(f"/api/runs/{run_id}/scalars/keys").json() == ["loss"]
    got = client.get(
        f"/api/runs/{run_id}/scalars", params={"keys": "loss,missing", "max_points": 5}
    ).json()
    assert list(got["series"]) == ["loss"]
    loss = got["series"]["loss"]
    assert len(loss["steps"]) == 5 and loss["steps"][0] == 1 and loss["steps"][-1] == 100
    assert loss["values"] == [10.0 - s / 100 for s in loss["steps"]]
    newer = client.get(
        f"/api/runs/{run_id}/scalars", params={"keys": "loss", "since_step": 98}
    ).json()
    assert newer["series"]["loss"]["steps"] == [99, 100]


def test_events_filter_and_order(client) -> None:
    run_id = _fill(client)
    client.post(
        f"/api/runs/{run_id}/telemetry",
        json={
            "seq": 9,
            "events": [
                {"step": 100, "kind": "eval", "message": "acc 0.8", "data": {"accuracy": 0.8}}
            ],
        },
    )
    everything = client.get(f"/api/runs/{run_id}/events").json()
    assert [(e["step"], e["kind"]) for e in everything] == [
        (37, "prune"),
        (38, "prune"),
        (61, "prune"),
        (100, "eval"),
    ]
    assert everything[-1]["data"] == {"accuracy": 0.8} and everything[-1]["created_at"]
    prunes = client.get(
        f"/api/runs/{run_id}/events", params={"kind": "prune", "since_step": 37}
    ).json()
    assert [e["step"] for e in prunes] == [38, 61]
    latest = client.get(f"/api/runs/{run_id}/events", params={"limit": 2}).json()
    assert [e["step"] for e in latest] == [61, 100]


def test_stream_of_a_finished_run_sends_its_final_state_and_ends(client) -> None:
    run_id = _fill(client, steps=[1, 2, 3])
    client.post(
        f"/api/runs/{run_id}/telemetry",
        json={"seq": 5, "events": [{"step": 3, "kind": "finished"}]},
    )
    text = client.get(f"/api/runs/{run_id}/stream").text
    assert text == 'event: progress\nid: 3\ndata: {"step": 3, "status": "completed"}\n\n'
    # resuming at the last step still gets the final status once, then the end
    resumed = client.get(f"/api/runs/{run_id}/stream", headers={"Last-Event-ID": "3"})
    assert resumed.headers["content-type"].startswith("text/event-stream")
    assert resumed.text.count("event: progress") == 1


def test_health_presets_and_job_schema(client) -> None:
    health = client.get("/api/health").json()
    assert health == {
        "status": "ok",
        "version": "0.1.0",
        "database": "ok",
        "instance": health["instance"],
    }
    assert len(health["instance"]) == 32
    names = {p["name"] for p in client.get("/api/presets").json()}
    assert {"minilm", "smollm2-135m", "rt-snippets", "sms-spam", "bbc-news", "tweets"} <= names
    methods = {m["name"]: m for m in client.get("/api/methods").json()}
    assert set(methods) == {"dora", "lora", "adalora", "full"}
    assert [n for n, m in methods.items() if m["prunes"]] == ["dora", "adalora"]
    assert [n for n, m in methods.items() if not m["adapter"]] == ["full"]
    schema = client.get("/api/jobs/schema").json()
    assert schema["additionalProperties"] is False
    assert {"model", "dataset", "method", "target_rank", "max_steps"} <= set(schema["properties"])


def test_openapi_documents_every_endpoint_with_examples(client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in [
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/register",
        "/api/runs/{run_id}/modules",
        "/api/runs/{run_id}/telemetry",
        "/api/runs/{run_id}/steps",
        "/api/runs/{run_id}/rank-matrix",
        "/api/runs/{run_id}/scores",
        "/api/runs/{run_id}/budget",
        "/api/runs/{run_id}/scalars",
        "/api/runs/{run_id}/scalars/keys",
        "/api/runs/{run_id}/events",
        "/api/runs/{run_id}/stream",
        "/api/jobs",
        "/api/jobs/{run_id}/cancel",
        "/api/jobs/{run_id}/log",
        "/api/jobs/schema",
        "/api/presets",
        "/api/methods",
        "/api/runs/{run_id}/adapter.zip",
        "/api/health",
    ]:
        assert path in paths, path
    telemetry = spec["components"]["schemas"]["TelemetryBatch"]
    assert telemetry["examples"][0]["seq"] == 17
    job_body = paths["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert "target_rank" in job_body["schema"]["properties"] and job_body["example"]


def test_layer_series_when_its_modules_are_not_registered_together(client) -> None:
    """Type-major registration order: layer 1's modules are interleaved with layer 0's."""
    modules = sorted(MODULES[:6], key=lambda m: (m["type"], m["layer"]))
    run_id = new_run(client, modules=modules)
    sent = [scores_record(s, modules) for s in (4, 5)]
    client.post(f"/api/runs/{run_id}/telemetry", json={"seq": 0, "scores": sent})
    got = client.get(f"/api/runs/{run_id}/scores", params={"layer": 1}).json()
    assert [m["name"] for m in got["modules"]] == ["enc.1.ffn", "enc.1.q", "enc.1.v"]
    for series in got["modules"]:
        assert series["scores"] == [np.float32(r["values"][series["name"]]).tolist() for r in sent]
        assert series["masks"] == [r["masks"][series["name"]] for r in sent]
