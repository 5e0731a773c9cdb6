"""Page callbacks as plain functions against the real API, fed known telemetry.

Expected numbers come from the tables in ``simulate.py`` (what the worker
reported), worked out by hand here, never from the dashboard's own output.
"""

from __future__ import annotations

import os

import pytest
from dash import no_update

from dashboard import downloads
from dashboard.api import ApiClient, ApiError
from dashboard.pages import compare, jobform, run, runs
from tests.conftest import free_port
from tests.dashboard import simulate
from tests.dashboard.conftest import start_server, stop_server
from tests.dashboard.helpers import METHODS, apply_patch, graphs, texts
from tests.dashboard.simulate import SimulatedRun

# What the form's model and dataset dropdowns hold when it opens (the first installed presets).
PRESETS = {"model": "minilm", "dataset": "rt-snippets"}

pytestmark = pytest.mark.slow


def test_methods_come_from_the_api(client: ApiClient) -> None:
    assert client.methods() == METHODS
    options = runs.method_options(client)
    assert [o["value"] for o in options] == list(METHODS)
    assert runs.method_options(ApiClient(f"http://127.0.0.1:{free_port()}", token="")) == []


def test_runs_list_shows_a_run_and_delete_removes_it(api_url: str, client: ApiClient) -> None:
    sim = SimulatedRun(api_url, name="to be deleted")
    data = runs._fetch(client)
    assert data["error"] is None
    assert "to be deleted" in texts(runs.render_table(data, None, None, None, None, None))
    assert runs.refresh(client, data) is no_update  # nothing changed: the table is left alone
    (row,) = [r for r in data["runs"] if r["id"] == sim.id]
    assert row["live_params"] is None  # registered, no scores yet
    sim.post([0, 5, 10])
    (row,) = [r for r in runs._fetch(client)["runs"] if r["id"] == sim.id]
    # step 10: 33 live components of 32 + 32 + 1 parameters (the gate) each
    assert row["live_params"] == 33 * 65
    client.delete_run(sim.id)
    assert sim.id not in [r["id"] for r in runs._fetch(client)["runs"]]
    with pytest.raises(ApiError) as err:
        client.run(sim.id)
    assert err.value.status == 404


def test_live_budget_scalars_and_importance_append_only_new_points(
    api_url: str, client: ApiClient
) -> None:
    sim = SimulatedRun(api_url)
    sim.post([0, 5, 10, 15])
    state = client.run(sim.id)
    dora = client.methods()["dora"]

    budget_fig, budget_cursor = run.budget.budget(client, state, None, method=dora)
    # live counts 36, 36, 33, 27 over L = 6 modules
    assert budget_fig.data[1].y == pytest.approx((6.0, 6.0, 5.5, 4.5))
    assert budget_cursor == 15
    # pruning phase of T = 40: [0.15 T, T - 0.5 T] = [6, 20]
    assert (budget_fig.layout.shapes[0].x0, budget_fig.layout.shapes[0].x1) == (6.0, 20.0)

    loss_fig, metrics_fig, _opt, scalar_cursor = run.curves.scalars(client, state, None)
    assert list(loss_fig.data[0].y) == [simulate.LOSS[s] for s in (0, 5, 10, 15)]
    assert len(metrics_fig.data) == 0  # no eval yet

    imp_fig, imp_cursor = run.importance.importance(client, state, "layer:1", None, method=dora)
    assert len(imp_fig.data[0].y) == 2 * simulate.R  # query and value of layer 1
    assert imp_cursor == {"selection": "layer:1", "step": 15}

    # nothing new yet: nothing is sent to the browser
    assert run.budget.budget(client, state, budget_cursor, method=dora) == (no_update, no_update)

    sim.post([20, 25, 30, 35, 40], finish=True)
    state = client.run(sim.id)

    patch, budget_cursor = run.budget.budget(client, state, budget_cursor, method=dora)
    patched = apply_patch(budget_fig.to_plotly_json(), patch)
    assert patched["data"][1]["x"] == simulate.STEPS
    assert patched["data"][1]["y"] == pytest.approx([6, 6, 5.5, 4.5, 4, 4, 4, 4, 4])
    assert budget_cursor == 40

    # eval/accuracy is a new key: the figures are redrawn whole, with both evals
    loss_fig, metrics_fig, _opt, scalar_cursor = run.curves.scalars(client, state, scalar_cursor)
    assert [t.name for t in metrics_fig.data] == ["eval/accuracy"]
    assert list(metrics_fig.data[0].x) == [20, 40] and list(metrics_fig.data[0].y) == [0.7, 0.8]
    assert list(loss_fig.data[0].x) == simulate.STEPS

    patch, imp_cursor = run.importance.importance(client, state, "layer:1", imp_cursor, method=dora)
    patched = apply_patch(imp_fig.to_plotly_json(), patch)
    assert patched["data"][0]["x"] == simulate.STEPS
    # layer 1 value is module 3: live 6, 6, 5, 3, then 2 -> component #2 is pruned from step 20
    value_2 = patched["data"][0]["y"].index("attention.self.value #2")
    assert patched["data"][1]["z"][value_2] == [None, None, None, None, 1, 1, 1, 1, 1]
    # component #0 of layer 1 query is never pruned
    assert patched["data"][1]["z"][0] == [None] * 9
    assert imp_cursor["step"] == 40


def test_rank_heatmap_at_a_past_step_and_the_latest(api_url: str, client: ApiClient) -> None:
    sim = SimulatedRun(api_url).complete()
    state = client.run(sim.id)
    dora = client.methods()["dora"]
    fig, label = run.ranks.heatmap(client, state, step=12, latest=40, method=dora)
    # step 12 was not recorded: the nearest at or before it is 10
    assert [list(r) for r in fig.data[0].z] == simulate.live_matrix(10)
    assert (fig.data[0].zmin, fig.data[0].zmax) == (0, simulate.R)
    assert "step 10" in label and "latest is 40" in label
    fig, label = run.ranks.heatmap(client, state, step=40, latest=40, method=dora)
    assert [list(r) for r in fig.data[0].z] == [[6, 3], [5, 2], [5, 3]]
    assert "the latest" in label
    # a run that is further on than its last scores (LoRA scores only at the start and the
    # end): at the slider's end the label says so rather than "latest is"
    fig, label = run.ranks.heatmap(client, state, step=None, latest=55, method=dora)
    assert "Showing step 40 (the last scored; the run is at step 55)" in label
    fig, label = run.ranks.heatmap(client, state, step=55, latest=55, method=dora)
    assert "the last scored" in label and "latest is" not in label


def test_poll_stops_once_the_finished_run_is_drawn(api_url: str, client: ApiClient) -> None:
    sim = SimulatedRun(api_url)
    sim.post([0, 5])
    running = client.run(sim.id)
    assert run.shell.poll(client, running) == (no_update, False, None)  # live, unchanged
    sim.post([10, 15, 20, 25, 30, 35, 40], finish=True)
    new, disabled, _ = run.shell.poll(client, running)
    assert new["status"] == "completed" and new["step"] == 40
    assert disabled is False  # the last steps still have to be drawn
    assert run.shell.poll(client, new) == (no_update, True, None)


def test_slider_follows_the_live_end(api_url: str, client: ApiClient) -> None:
    sim = SimulatedRun(api_url)
    sim.post([0, 5, 10])
    state = client.run(sim.id)
    dora = client.methods()["dora"]
    top, marks, value, latest = run.ranks.follow_slider(state, 10, 10, method=dora)
    assert (top, value, latest) == (40, no_update, 10)
    assert marks == {0: "0", 6: "pruning starts", 20: "mask frozen", 40: "40"}
    sim.post([15])
    state = client.run(sim.id)
    assert run.ranks.follow_slider(state, 10, 10, method=dora)[2] == 15  # was at the end: moves on
    assert run.ranks.follow_slider(state, 5, 10, method=dora)[2] is no_update  # looking back: stays


def test_job_form_shows_the_apis_422_next_to_each_field(api_url: str, client: ApiClient) -> None:
    before = client.runs()["total"]
    schema = client.job_schema()
    path, fields, general = jobform.submit(
        client,
        schema,
        {**PRESETS, "method": "dora", "target_rank": "four", "lr": "-1"},
    )
    assert path is None and general is None
    assert "integer" in fields["target_rank"]
    assert "greater than 0" in fields["lr"]
    # a cross-field rule names its field too
    _, fields, _ = jobform.submit(client, schema, {**PRESETS, "target_rank": "8", "init_rank": "6"})
    assert "init_rank" in fields and "at least target_rank" in fields["init_rank"]
    assert client.runs()["total"] == before  # nothing was created


def test_compare_two_runs_difference_and_table(api_url: str, client: ApiClient) -> None:
    done = SimulatedRun(api_url, name="finished one").complete()
    half = SimulatedRun(api_url, name='<b onmouseover="alert(1)">half</b>')
    half.post([0, 5, 10, 15])
    body = compare.content(client, [done.id, half.id], [])
    shown = texts(body)
    assert f'#{half.id} <b onmouseover="alert(1)">half</b>' in shown  # a text child
    figs = {c.id: c.figure for c in graphs(body)}
    diff = figs["compare-diff-0"]
    # half (step 15) minus finished (step 40): layer x [query, value]
    assert [list(r) for r in diff.data[0].z] == [[0, 1], [0, 1], [0, 1]]
    heat = figs["compare-heatmaps"]
    assert (heat.layout.coloraxis.cmin, heat.layout.coloraxis.cmax) == (0, simulate.R)
    # live adapter params: 24 (finished) and 27 (half) components of 32 + 32 + 1
    assert "1.6k" in shown and "1.8k" in shown
    totals = figs["compare-totals"]
    assert list(totals.data[0].y) == [16, 8] and list(totals.data[1].y) == [16, 11]


def test_compare_with_a_missing_run_and_too_few_runs(api_url: str, client: ApiClient) -> None:
    sim = SimulatedRun(api_url).complete()
    shown = texts(compare.content(client, [sim.id, 999_999], ["x"]))
    assert any("999999" in t and "not found" in t for t in shown)
    assert "Pick two or more runs to compare." in shown
    assert any("x" in t for t in shown if t.startswith("Not run ids"))


def test_download_without_an_adapter_says_why(api_url: str, client: ApiClient) -> None:
    sim = SimulatedRun(api_url)
    resp = downloads.adapter_zip(client, sim.id)
    assert resp.status_code == 404
    assert "adapter" in resp.get_data(as_text=True)


def test_failed_run_shows_its_error_line(api_url: str, client: ApiClient) -> None:
    sim = SimulatedRun(api_url)
    sim.post([0, 5])
    error = "RuntimeError: <b>boom</b> at step 5"
    resp = sim.http.post(
        f"/api/runs/{sim.id}/telemetry",
        json={"seq": sim.seq, "events": [{"step": 5, "kind": "failed", "message": error}]},
    )
    resp.raise_for_status()
    state = client.run(sim.id)
    status, cancel_style, _download, failure = run.shell.header(
        client, state, method=client.methods()["dora"]
    )
    assert state["status"] == "failed"
    assert error in texts(failure)  # as text, with its HTML shown, not rendered
    assert cancel_style == {"display": "none"}  # nothing left to cancel
    assert "failed" in texts(status)


def test_submit_opens_the_new_run_and_cancel_stops_it(api_url: str, client: ApiClient) -> None:
    schema = client.job_schema()
    path, fields, general = jobform.submit(
        client,
        schema,
        {
            **PRESETS,
            "name": "cancel me",
            "max_steps": "500",
            "max_train_samples": "16",
            "seed": "1",
        },
    )
    assert (fields, general) == ({}, None)
    run_id = int(path.removeprefix("/runs/"))
    state = client.run(run_id)
    assert state["name"] == "cancel me" and state["config"]["max_steps"] == 500
    updated, message = run.shell.cancel(client, state)
    assert updated["status"] == "cancelled"
    assert "Cancel requested" in " ".join(texts(message))
    # a second click: the API says why not, in words
    again, message = run.shell.cancel(client, updated)
    assert again is no_update and "already cancelled" in " ".join(texts(message))


def test_writes_carry_the_token_when_the_api_wants_one(tmp_path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DORA_DATA_DIR": str(tmp_path),
        "DORA_API_PORT": str(port),
        "DORA_API_TOKEN": "s3cret",
    }
    url = f"http://127.0.0.1:{port}"
    proc = start_server(
        ["-m", "uvicorn", "backend.main:app", "--port", str(port), "--log-level", "warning"],
        env,
        f"{url}/api/health",
        tmp_path / "api.log",
    )
    try:
        anonymous, holder = ApiClient(url, token=""), ApiClient(url, token="s3cret")
        assert anonymous.runs()["total"] == 0  # reads need no token
        path, fields, general = jobform.submit(anonymous, {}, {"lr": "-1"})
        assert path is None and "DORA_API_TOKEN" in general and "401" in general
        _, fields, general = jobform.submit(holder, {}, {"lr": "-1"})
        assert general is None and "greater than 0" in fields["lr"]  # past the token check
        with pytest.raises(ApiError) as err:
            holder.delete_run(12345)
        assert err.value.status == 404
    finally:
        stop_server(proc)


def test_rank_matrix_csv_at_a_step_through_the_dashboard(api_url: str, client: ApiClient) -> None:
    """The rank card's CSV: one row per module with its live count at the chosen step, the
    same numbers the simulated worker posted (LIVE), read back through the real API."""
    import csv
    import io

    from tests.dashboard.simulate import LIVE, MODULES, R

    sim = SimulatedRun(api_url).complete()
    assert downloads.ranks_href(sim.id, 15) == f"/download/runs/{sim.id}/rank-matrix.csv?step=15"
    resp = downloads.ranks_csv(client, sim.id, 15)
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert f"run-{sim.id}-ranks-step-15.csv" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert [r["module"] for r in rows] == list(MODULES)
    assert [int(r["live"]) for r in rows] == LIVE[15]
    assert {(r["step"], r["rank"]) for r in rows} == {("15", str(R))}
    missing = downloads.ranks_csv(client, 10_000, None)
    assert missing.status_code == 404
