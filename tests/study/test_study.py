"""The study runner: which cells run, in which order, what a rerun skips, user errors.

Most tests replace the one thing that trains (``CellRunner.run``) with a stand-in
that returns a record whose scores the test chose, so the scheduling is checked
against hand-written expectations in milliseconds; the last test trains a tiny
real cell through the real worker and MiniLM, reporting to a real API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import pytest

from bench import study
from bench.study_grid import Cell, DatasetPlan, Grid, ResultFile, search_cells
from dashboard.api import ApiClient
from dora_core.contracts.presets import DATASETS, MODELS
from tests.conftest import free_port, start_api, stop_server
from tests.study import fake_record, two_dataset_grid

GRID = two_dataset_grid(bbc_steps=10, bbc_length=24)

# Stand-in dev scores: dora is best at 3e-3, the baselines at 1e-3.
F1 = {("dora", 1e-3): 0.5, ("dora", 3e-3): 0.9, ("lora", 1e-3): 0.8, ("lora", 3e-3): 0.6}
F1 |= {("adalora", 1e-3): 0.7, ("adalora", 3e-3): 0.4}


class FakeRunner:
    """Records which cells were asked for; returns a record like the real one's."""

    calls: ClassVar[list[Cell]] = []

    def __init__(self, grid, files, layout, api=None, threads=1):
        self.grid = grid

    def run(self, cell: Cell) -> dict:
        FakeRunner.calls.append(cell)
        return fake_record(cell, self.grid, F1[(cell.method, cell.lr)])

    def stop(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch, tmp_path):
    FakeRunner.calls = []
    monkeypatch.setattr(study, "CellRunner", FakeRunner)
    monkeypatch.setattr(study, "module_layout", lambda model, task: {})
    return study.Files(GRID, tmp_path / "results", tmp_path / "runs")


def test_search_then_grid_with_the_chosen_lr(fake) -> None:
    summary = study.run_study(GRID, fake, jobs=1, progress=False)
    calls = FakeRunner.calls
    # 2 datasets x (6 search cells + 12 grid cells - 3 reused from the search) = 30 trained.
    assert summary["cells_run"] == len(calls) == 30
    assert [c.phase for c in calls[:6]] == ["search"] * 6 and calls[0].dataset == "sms-spam"
    chosen = {"dora": 3e-3, "lora": 1e-3, "adalora": 1e-3}
    finals = [c for c in calls if c.phase == "final"]
    assert all(c.lr == chosen[c.method] for c in finals)
    assert not any(c.seed == 0 and c.budget == 8 for c in finals)  # those come from the search
    records = ResultFile(fake.cells.path).records()
    assert len(records) == 24 and sum(bool(r.get("from_search")) for r in records) == 6
    assert summary["complete"] is True
    # one session, its line rewritten after every cell: the last one has the totals
    (session,) = ResultFile(fake.sessions.path).done().values()
    assert (session["cells_run"], session["complete"], session["jobs"]) == (30, True, 1)
    assert len(ResultFile(fake.sessions.path).records()) == 31  # 30 cells + the closing line


def test_rerun_skips_finished_cells_and_redoes_a_torn_one(fake) -> None:
    study.run_study(GRID, fake, jobs=2, progress=False)
    assert len(FakeRunner.calls) == 30
    # A crash while writing the last grid line: that cell's line is torn.
    lines = fake.cells.path.read_text().splitlines()
    last = json.loads(lines[-1])
    fake.cells.path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    FakeRunner.calls = []
    summary = study.run_study(GRID, fake, jobs=2, progress=False)
    assert [(c.dataset, c.method, c.budget, c.seed) for c in FakeRunner.calls] == [
        (last["dataset"], last["method"], last["budget"], last["seed"])
    ]
    assert summary["cells_run"] == 1
    FakeRunner.calls = []
    assert study.run_study(GRID, fake, jobs=2, progress=False)["cells_run"] == 0
    assert FakeRunner.calls == []


def test_grid_waits_for_the_whole_search_of_its_dataset(fake) -> None:
    # Only part of sms-spam's search is on file: its grid cannot start, the rest of the
    # search (and the next dataset's) can.
    for cell in search_cells(GRID)[:4]:
        fake.search.append(FakeRunner(GRID, fake, {}).run(cell))
    plan = study.Study(GRID, fake)
    assert plan.chosen_lr("sms-spam") is None
    first = plan.next_cell()
    assert (first.phase, first.dataset, first.method, first.lr) == (
        "search",
        "sms-spam",
        "adalora",
        1e-3,
    )


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = study.main(list(argv))
    return code, capsys.readouterr().err


def test_user_errors_are_one_line(capsys) -> None:
    code, err = run_main(capsys, "--jobs", "0")
    assert code == 2 and err.strip() == "study: error: --jobs: must be at least 1"
    code, err = run_main(capsys, "--api", "localhost:8000")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "http(s) URL" in err


@pytest.mark.slow
def test_one_tiny_real_cell_end_to_end(tmp_path) -> None:
    """A real cell through the real worker, reporting to a real API (the dashboard's view)."""
    for preset in (MODELS["minilm"], DATASETS["sms-spam"]):
        if not preset.available:
            pytest.skip(f"{preset.name} is not installed ({preset.install_hint})")
    grid = Grid(
        name="tiny",
        datasets=(DatasetPlan("sms-spam", steps=4, max_length=16, max_train=32, max_dev=16),),
        methods=("dora",),
        budgets=(2,),
        seeds=(0,),
        lrs=(1e-3,),
        search_budget=2,
    )
    files = study.Files(grid, tmp_path / "results", tmp_path / "runs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DORA_DATA_DIR": str(tmp_path / "api")}
    env.pop("DORA_API_TOKEN", None)
    env.pop("DATABASE_URL", None)
    (tmp_path / "api").mkdir()
    server = start_api(port, env, tmp_path / "api" / "api.log")
    try:
        summary = study.run_study(grid, files, api=url, jobs=1, threads=1, progress=False)
        api = ApiClient(url, token="")
        (run,) = api.all_runs()
        matrix = api.rank_matrix(run["id"])
        api.close()
    finally:
        stop_server(server)
    assert summary["cells_run"] == 1 and summary["complete"]
    (record,) = ResultFile(files.cells.path).records()
    # the cell is an ordinary run in the API's database, as the dashboard shows it
    assert run["status"] == "completed"
    assert (run["config"]["dataset"], run["config"]["method"]) == ("sms-spam", "dora")
    assert sum(v for row in matrix["live"] for v in row if v is not None) == 72
    assert record["from_search"] and record["phase"] == "final"
    assert (record["steps"], record["train_size"], record["dev_size"]) == (4, 32, 16)
    assert 0 <= record["accuracy"] <= 1 and record["wall_s"] >= record["train_s"] > 0
    # b(T) = 2 over MiniLM's 36 projections: 72 live components at the end.
    assert len(record["rank_pattern"]) == 36
    assert sum(row["live"] for row in record["rank_pattern"]) == 72
    assert {row["layer"] for row in record["rank_pattern"]} == set(range(6))
    # The compacted factors the worker counts are exactly the live components:
    # attention projections 384 + 384 + 1 per component, FFN ones 384 + 1536 + 1.
    sizes = {"intermediate.dense": 1921, "output.dense": 1921}
    expected = sum(row["live"] * sizes.get(row["type"], 769) for row in record["rank_pattern"])
    assert record["adapter_params"] == record["live_adapter_params"] == expected
    assert record["head_params"] == 384 * 2 + 2
    assert (Path(record["run_dir"]) / "adapter" / "adapter_config.json").is_file()
    # A rerun trains nothing.
    assert study.run_study(grid, files, jobs=1, threads=1, progress=False)["cells_run"] == 0
