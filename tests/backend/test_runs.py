"""Runs: create, list, get, register, modules, delete, and their error answers."""

from __future__ import annotations

from tests.backend.conftest import MODULES, new_run, row_counts, scores_record

MINIMAL = {"model": "minilm", "dataset": "rt-snippets"}  # what every job must name


def test_create_run_checks_the_config_with_the_shared_schema(client) -> None:
    resp = client.post(
        "/api/runs",
        json={
            "name": "mine",
            "config": {"model": "minilm", "dataset": "rt-snippets", "max_steps": 50},
        },
    )
    assert resp.status_code == 201
    run = resp.json()
    assert (run["name"], run["status"], run["method"], run["model"]) == (
        "mine",
        "queued",
        "dora",
        "minilm",
    )
    assert run["config"]["max_steps"] == 50 and run["config"]["target_rank"] == 8  # defaults filled
    assert run["has_adapter"] is False and run["budget"] is None and run["step"] is None


def test_create_run_default_name_comes_from_the_config(client) -> None:
    resp = client.post(
        "/api/runs", json={"config": {"method": "lora", "model": "minilm", "dataset": "sms-spam"}}
    )
    assert resp.json()["name"] == "lora-minilm-sms-spam"


def test_create_run_bad_config_names_the_field(client, database_url) -> None:
    resp = client.post(
        "/api/runs", json={"name": "x", "config": {**MINIMAL, "target_rank": 8, "init_rank": 4}}
    )
    assert resp.status_code == 422
    [err] = resp.json()["detail"]
    assert err["loc"] == ["body", "config", "init_rank"]
    assert "at least target_rank" in err["msg"]
    resp = client.post("/api/runs", json={"config": {**MINIMAL, "lr": "fast"}})
    assert resp.json()["detail"][0]["loc"] == ["body", "config", "lr"]
    assert row_counts(database_url)["runs"] == 0


def test_register_sets_running_and_lists_modules_in_order(client) -> None:
    run_id = new_run(client, register=False)
    body = {
        "modules": MODULES,
        "total_steps": 100,
        "init_rank": 3,
        "target_rank": 2,
        "params": {"adapter": 1000, "head": 10, "total": 5000},
    }
    resp = client.post(f"/api/runs/{run_id}/register", json=body)
    assert resp.status_code == 200
    run = resp.json()
    assert run["status"] == "running" and run["started_at"] is not None
    assert (run["num_modules"], run["total_steps"], run["init_rank"], run["target_rank"]) == (
        7,
        100,
        3,
        2,
    )
    assert run["params"] == {"adapter": 1000, "head": 10, "total": 5000}
    mods = client.get(f"/api/runs/{run_id}/modules").json()
    assert [m["index"] for m in mods] == list(range(7))
    assert [{k: m[k] for k in ("name", "layer", "type", "shape", "rank")} for m in mods] == MODULES


def test_register_again_same_list_is_fine_different_list_is_409(client, database_url) -> None:
    run_id = new_run(client)
    again = client.post(f"/api/runs/{run_id}/register", json={"modules": MODULES})
    assert again.status_code == 200
    changed = [dict(m) for m in MODULES]
    changed[4]["rank"] = 9
    resp = client.post(f"/api/runs/{run_id}/register", json={"modules": changed})
    assert resp.status_code == 409
    assert "index 4" in resp.json()["detail"]
    assert client.get(f"/api/runs/{run_id}/modules").json()[4]["rank"] == MODULES[4]["rank"]
    assert row_counts(database_url)["modules"] == len(MODULES)


def test_register_rejects_duplicate_names_and_bad_fields(client) -> None:
    run_id = new_run(client, register=False)
    dup = client.post(f"/api/runs/{run_id}/register", json={"modules": [MODULES[0], MODULES[0]]})
    assert dup.status_code == 422
    assert dup.json()["detail"][0]["loc"] == ["body", "modules", 1, "name"]
    bad = client.post(f"/api/runs/{run_id}/register", json={"modules": [{**MODULES[0], "rank": 0}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
        "body",
        "modules",
        0,
        "rank",
    ]


def test_register_resumes_a_failed_run(client) -> None:
    run_id = new_run(client)
    client.post(
        f"/api/runs/{run_id}/telemetry",
        json={"seq": 0, "events": [{"step": 5, "kind": "failed", "message": "OOM"}]},
    )
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "failed"
    resumed = client.post(f"/api/runs/{run_id}/register", json={"modules": MODULES}).json()
    assert (
        resumed["status"] == "running"
        and resumed["error"] is None
        and resumed["finished_at"] is None
    )


def test_list_filters_by_status_and_paginates_newest_first(client) -> None:
    ids = [new_run(client, register=i % 2 == 0) for i in range(5)]  # 0, 2, 4 running
    page = client.get("/api/runs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5
    assert [r["id"] for r in page["items"]] == [ids[3], ids[2]]
    running = client.get("/api/runs", params={"status": "running"}).json()
    assert running["total"] == 3 and [r["id"] for r in running["items"]] == [ids[4], ids[2], ids[0]]
    assert client.get("/api/runs", params={"status": "sleeping"}).status_code == 422
    assert client.get("/api/runs", params={"limit": 0}).status_code == 422


def test_unknown_run_is_404_everywhere(client) -> None:
    for method, path in [
        ("GET", "/api/runs/999"),
        ("DELETE", "/api/runs/999"),
        ("GET", "/api/runs/999/modules"),
        ("GET", "/api/runs/999/steps"),
        ("GET", "/api/runs/999/rank-matrix"),
        ("GET", "/api/runs/999/scores?module=x"),
        ("GET", "/api/runs/999/budget"),
        ("GET", "/api/runs/999/scalars?keys=loss"),
        ("GET", "/api/runs/999/scalars/keys"),
        ("GET", "/api/runs/999/events"),
        ("GET", "/api/runs/999/stream"),
        ("GET", "/api/runs/999/adapter.zip"),
        ("POST", "/api/jobs/999/cancel"),
        ("GET", "/api/jobs/999/log"),
    ]:
        resp = client.request(method, path)
        assert resp.status_code == 404, (method, path, resp.text)
        assert "999" in resp.json()["detail"]
    reg = client.post("/api/runs/999/register", json={"modules": MODULES})
    tel = client.post("/api/runs/999/telemetry", json={"seq": 0})
    assert (reg.status_code, tel.status_code) == (404, 404)


def test_delete_removes_the_run_and_every_row_of_it(client, database_url) -> None:
    keep = new_run(client)
    gone = new_run(client)
    for run_id in (keep, gone):
        batch = {
            "seq": 0,
            "scores": [scores_record(1)],
            "budget": [{"step": 1, "target": 9, "live": 9, "b": 1.5}],
            "scalars": [{"step": 1, "values": {"loss": 1.0}}],
            "events": [{"step": 1, "kind": "prune"}],
        }
        assert client.post(f"/api/runs/{run_id}/telemetry", json=batch).status_code == 200
    before = row_counts(database_url)
    assert client.delete(f"/api/runs/{gone}").status_code == 204
    after = row_counts(database_url)
    assert client.get(f"/api/runs/{gone}").status_code == 404
    # every table lost exactly the deleted run's share: half of what two equal runs had
    assert after == {table: count // 2 for table, count in before.items()}
    assert client.get(f"/api/runs/{keep}/steps").json() == {"steps": [1]}


def test_out_of_range_ids_and_steps_are_422_not_500(client) -> None:
    run_id = new_run(client)
    for path in (
        "/api/runs/0",
        f"/api/runs/{2**31}",
        f"/api/runs/{2**70}/modules",
        "/api/jobs/-1/log",
    ):
        assert client.get(path).status_code == 422, path
    for params in ({"step": 2**40}, {"step": -1}):
        assert client.get(f"/api/runs/{run_id}/rank-matrix", params=params).status_code == 422
    assert client.get("/api/runs", params={"offset": 2**63}).status_code == 422
    huge = client.post(f"/api/runs/{run_id}/telemetry", json={"seq": 2**40})
    assert huge.status_code == 422 and huge.json()["detail"][0]["loc"] == ["body", "seq"]


def test_nul_characters_are_refused_where_text_is_stored(client, database_url) -> None:
    """PostgreSQL text cannot hold NUL; every database gets the same clear 422."""
    bad_name = client.post(
        "/api/runs",
        json={"name": "a\x00b", "config": {"model": "minilm", "dataset": "rt-snippets"}},
    )
    assert bad_name.status_code == 422 and bad_name.json()["detail"][0]["loc"] == ["body", "name"]
    bad_config = client.post(
        "/api/runs", json={"config": {"model": "min\x00lm", "dataset": "rt-snippets"}}
    )
    assert bad_config.json()["detail"][0]["loc"] == ["body", "config", "model"]
    run_id = new_run(client, register=False)
    module = {**MODULES[0], "name": "enc\x00"}
    reg = client.post(f"/api/runs/{run_id}/register", json={"modules": [module]})
    assert reg.status_code == 422 and reg.json()["detail"][0]["loc"] == [
        "body",
        "modules",
        0,
        "name",
    ]
    tel = client.post(
        f"/api/runs/{run_id}/telemetry",
        json={"seq": 0, "events": [{"step": 1, "kind": "log", "message": "\x00"}]},
    )
    assert tel.status_code == 422
    assert client.get(f"/api/runs/{run_id}/events", params={"kind": "lo\x00g"}).status_code == 422
    assert row_counts(database_url)["runs"] == 1 and row_counts(database_url)["events"] == 0
