"""The pages' pure parts: table filtering/sorting, the job form, compare, run page pieces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dash import html, no_update

import dashboard
from dashboard import downloads
from dashboard.api import ApiClient, ApiError
from dashboard.components import ordinal
from dashboard.pages import compare, jobform, run, runs
from tests.conftest import free_port
from tests.dashboard.helpers import METHODS, texts


def _run(rid: int, **kw) -> dict:
    base = {
        "id": rid,
        "name": f"run-{rid}",
        "status": "completed",
        "method": "dora",
        "model": "minilm",
        "dataset": "rt-snippets",
        "step": 100,
        "total_steps": 100,
        "best": None,
        "params": None,
        "created_at": f"2025-01-0{rid}T10:00:00",
    }
    return {**base, **kw}


RUNS = [
    _run(
        1,
        name="baseline lora",
        method="lora",
        best={"key": "eval/accuracy", "value": 0.81, "step": 90},
    ),
    _run(
        2,
        name="dora b4",
        status="running",
        step=30,
        best={"key": "eval/accuracy", "value": 0.84, "step": 20},
    ),
    _run(3, name="adalora", method="adalora", dataset="sms-spam", status="failed", step=5),
    _run(4, name="queued one", status="queued", step=None, total_steps=None),
]


def _ids(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows]


def test_filter_by_text_status_and_method() -> None:
    assert _ids(runs.filter_sort_runs(RUNS, query="DORA")) == [4, 2]  # method, any case
    assert _ids(runs.filter_sort_runs(RUNS, query="lora")) == [3, 1]  # "adalora" contains it
    assert _ids(runs.filter_sort_runs(RUNS, query="sms")) == [3]  # dataset
    assert _ids(runs.filter_sort_runs(RUNS, statuses=["running", "queued"])) == [4, 2]
    assert _ids(runs.filter_sort_runs(RUNS, methods=["lora", "adalora"])) == [3, 1]
    assert _ids(runs.filter_sort_runs(RUNS, query="2")) == [2]  # a run id


def test_sort_by_metric_and_progress_puts_missing_values_last() -> None:
    by_best = runs.filter_sort_runs(RUNS, sort={"key": "best", "desc": True})
    assert _ids(by_best) == [2, 1, 3, 4]
    by_progress = runs.filter_sort_runs(RUNS, sort={"key": "progress", "desc": False})
    assert _ids(by_progress) == [3, 2, 1, 4]  # 5/100, 30/100, 100/100, unknown total
    assert _ids(runs.filter_sort_runs(RUNS, sort={"key": "name", "desc": False})) == [3, 1, 2, 4]


def test_clicking_a_header_sorts_then_flips() -> None:
    first = runs.next_sort({"key": "id", "desc": True}, "name")
    assert first == {"key": "name", "desc": False}
    assert runs.next_sort(first, "name") == {"key": "name", "desc": True}


def test_table_states_no_runs_api_down_and_no_match() -> None:
    empty = runs.render_table({"runs": [], "error": None}, None, None, None, None, None)
    assert "No runs yet." in texts(empty)
    down = runs.render_table(
        {"runs": [], "error": "cannot reach the API at http://x", "unreachable": True},
        None,
        None,
        None,
        None,
        None,
    )
    assert "cannot reach the API at http://x" in texts(down)
    none = runs.render_table({"runs": RUNS, "error": None}, "zzz", None, None, None, None)
    assert "No run matches these filters." in texts(none)


def test_table_shows_an_html_run_name_as_a_text_child() -> None:
    evil = '<img src=x onerror="alert(1)">'
    table = runs.render_table(
        {"runs": [_run(7, name=evil)], "error": None}, None, None, None, None, None
    )
    assert evil in texts(table)  # a plain string child: React renders it as text


def test_a_waiting_job_shows_its_place_in_line_next_to_its_badge() -> None:
    waiting = _run(5, name="<b>next</b>", status="queued", step=None, queue_position=2)
    starting = _run(6, status="queued", step=None, queue_position=None)  # worker starting up
    table = runs.render_table(
        {"runs": [waiting, starting, RUNS[0]], "error": None}, None, None, None, None, None
    )
    shown = texts(table)
    assert "<b>next</b>" in shown and "2nd in line" in shown
    assert sum("in line" in t for t in shown) == 1
    dora = METHODS["dora"]
    line = texts(run.shell.status_line(waiting, method=dora))
    assert line[:2] == ["queued", "2nd in line"]
    assert "in line" not in " ".join(texts(run.shell.status_line(starting, method=dora)))
    assert "in line" not in " ".join(texts(run.shell.status_line(RUNS[0], method=dora)))


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),
        (22, "22nd"),
        (101, "101st"),
        (111, "111th"),
    ],
)
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text


SCHEMA = {
    "properties": {
        "name": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "model": {"type": "string"},  # required: no default
        "dataset": {"type": "string"},
        "method": {
            "enum": ["dora", "lora", "adalora", "full"],
            "type": "string",
            "default": "dora",
        },
        "target_rank": {"type": "integer", "default": 8},
        "init_rank": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        "lr": {"type": "number", "default": 5e-4},
        "epochs": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": 3.0},
        "grad_clip": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": 1.0},
        "dem_after_freeze": {"type": "boolean", "default": False},
        "target_modules": {
            "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]
        },
    }
}


def test_schema_kinds() -> None:
    props = SCHEMA["properties"]
    assert jobform.schema_kind(props["init_rank"]) == "integer"
    assert jobform.schema_kind(props["lr"]) == "number"
    assert jobform.schema_kind(props["method"]) == "enum"
    assert jobform.schema_kind(props["dem_after_freeze"]) == "boolean"
    assert jobform.schema_kind(props["target_modules"]) == "array"
    assert jobform.schema_kind(props["name"]) == "string"


def test_form_values_become_a_job_config() -> None:
    values = {
        "name": "  my run ",
        "model": "minilm",
        "dataset": "rt-snippets",
        "method": "dora",
        "target_rank": "4",
        "init_rank": "",  # blank: the default applies, so it is left out
        "lr": "1e-3",
        "epochs": "1.5",
        "grad_clip": "off",  # nullable: explicit null
        "dem_after_freeze": [True],
        "target_modules": "query, value,",
        "model_path": "",
        "dataset_path": "/data/reviews.csv",
    }
    assert jobform.form_to_config(values, SCHEMA) == {
        "name": "my run",
        "model": "minilm",
        "dataset": "/data/reviews.csv",  # a typed path wins over the preset
        "method": "dora",
        "target_rank": 4,
        "lr": 0.001,
        "epochs": 1.5,
        "grad_clip": None,
        "dem_after_freeze": True,
        "target_modules": ["query", "value"],
    }


def _preset(name: str, kind: str, available: bool) -> dict:
    return {"name": name, "kind": kind, "description": name, "available": available}


class _FormApi:
    """What the job form asks the API: the real job schema and a chosen preset list."""

    def __init__(self, presets: list[dict]):
        self._presets = presets

    def job_schema(self) -> dict:
        from dora_core.contracts.job import JobConfig

        return JobConfig.model_json_schema()

    def presets(self) -> list[dict]:
        return self._presets


def _value_of(tree: Any, component_id: str) -> Any:
    """The ``value`` of the component with ``component_id`` in a layout tree."""
    if getattr(tree, "id", None) == component_id:
        return tree.value
    children = tree if isinstance(tree, list | tuple) else getattr(tree, "children", None)
    for child in children if isinstance(children, list | tuple) else [children]:
        if child is not None and not isinstance(child, str):
            found = _value_of(child, component_id)
            if found is not _MISSING:
                return found
    return _MISSING


_MISSING = object()


def test_model_and_dataset_have_no_default_so_the_form_preselects_an_installed_preset() -> None:
    """A job must name both (the API refuses `{}`); the form still submits with one click."""
    api = _FormApi(
        [
            _preset("minilm", "model", available=False),
            _preset("smollm2-135m", "model", available=True),
            _preset("rt-snippets", "dataset", available=True),
            _preset("tweets", "dataset", available=True),
        ]
    )
    schema = api.job_schema()
    assert {"model", "dataset"} <= set(schema["required"])
    assert "default" not in schema["properties"]["model"]
    form = jobform.layout(api)  # type: ignore[arg-type]
    model, dataset = _value_of(form, "job-model"), _value_of(form, "job-dataset")
    assert (model, dataset) == ("smollm2-135m", "rt-snippets")  # the first installed of each
    config = jobform.form_to_config({"model": model, "dataset": dataset}, schema)
    assert config == {"model": "smollm2-135m", "dataset": "rt-snippets"}
    # nothing installed: nothing chosen, and the API's 422 names the field
    bare = jobform.layout(_FormApi([_preset("minilm", "model", available=False)]))  # type: ignore[arg-type]
    assert _value_of(bare, "job-model") is None


def test_unreadable_numbers_go_to_the_api_as_typed() -> None:
    config = jobform.form_to_config(
        {"target_rank": "four", "lr": "1e3", "init_rank": "6.0"}, SCHEMA
    )
    assert config == {"target_rank": "four", "lr": 1000.0, "init_rank": 6}


def test_api_422_is_split_into_field_and_form_messages() -> None:
    err = ApiError(
        "x",
        422,
        {
            "lr": "Input should be greater than 0",
            "dataset": "no such file",
            "bogus": "unknown field",
        },
    )
    fields, general = jobform.errors_for_fields(err)
    assert fields == {
        "lr": "Input should be greater than 0",
        "dataset": "no such file",
        "dataset_path": "no such file",
    }
    assert general == "bogus: unknown field"
    assert jobform.errors_for_fields(ApiError("server exploded (HTTP 500)", 500)) == (
        {},
        "server exploded (HTTP 500)",
    )


def test_compare_ids_from_the_url() -> None:
    assert compare.parse_run_ids("?runs=3,1,3,x,,7") == ([3, 1, 7], ["x"])
    assert compare.parse_run_ids("") == ([], [])
    assert compare.search_for([1, 2]) == "?runs=1,2"


def test_compare_rows_metrics_and_average_live_rank() -> None:
    a = _run(
        1,
        target_rank=4,
        init_rank=6,
        num_modules=36,
        budget={"step": 100, "target": 144, "live": 144},
        params={"adapter": 110592, "head": 1538, "total": 22713216},
        metrics={"accuracy": 0.8512, "macro_f1": 0.85},
    )
    b = _run(
        2,
        method="lora",
        target_rank=4,
        init_rank=None,
        num_modules=36,
        budget=None,
        metrics={"accuracy": 0.83},
    )
    matrix_b = {"live": [[4, 4], [4, None]]}
    header, rows = compare.compare_rows([a, b], {1: None, 2: matrix_b}, {1: 83_016, 2: None})
    assert header[-2:] == ["accuracy", "macro-F1"]
    row_a, row_b = rows
    assert row_a[0] == "#1 run-1" and row_a[1] == "DoRA"
    assert row_a[header.index("Avg live rank")] == "4.00"  # 144 live / 36 modules
    assert row_a[header.index("Adapter params at r'")] == "110.6k"
    assert row_a[header.index("Live adapter params")] == "83.0k"
    assert row_b[header.index("Live adapter params")] == "–"
    assert row_a[header.index("Total params")] == "22.7M"
    assert row_b[header.index("Avg live rank")] == "4.00"  # from the matrix: (4+4+4)/3
    assert row_b[-2:] == ["0.8300", "–"]


def test_run_page_phase_marks_and_selection() -> None:
    r = _run(1, total_steps=200, config={"warmup_frac": 0.1, "final_frac": 0.4})
    dora, lora = METHODS["dora"], METHODS["lora"]
    assert run.common.phase_of(r, method=dora) == pytest.approx((20.0, 120.0))
    assert run.ranks.slider_marks(r, method=dora) == {
        0: "0",
        20: "pruning starts",
        120: "mask frozen",
        200: "200",
    }
    assert run.common.phase_of({**r, "method": "lora"}, method=lora) is None
    modules = [
        {"index": 0, "name": "l.0.q", "layer": 0, "type": "q", "shape": [4, 4], "rank": 6},
        {"index": 1, "name": "l.1.q", "layer": 1, "type": "q", "shape": [4, 4], "rank": 6},
        {"index": 2, "name": "pooler", "layer": None, "type": "pooler", "shape": [4, 4], "rank": 6},
    ]
    values = [o["value"] for o in run.importance.module_options(modules)]
    assert values == ["layer:0", "layer:1", "module:l.0.q", "module:l.1.q", "module:pooler"]
    assert run.importance.parse_selection("layer:1") == {"layer": 1}
    assert run.importance.parse_selection("module:l.0.q") == {"module": "l.0.q"}
    assert run.importance.parse_selection("layer:x") == {}


def test_failure_box_shows_error_exit_status_and_log_as_text() -> None:
    r = _run(
        1, status="failed", error="<script>alert(1)</script> CUDA out of memory", exit_code=137
    )
    shown = texts(run.shell.failure_box(r, ["line 1", "Killed"]))
    assert "<script>alert(1)</script> CUDA out of memory" in shown
    assert "Worker exit status 137." in shown
    assert "line 1\nKilled" in shown
    assert run.shell.failure_box(_run(1), []) is None


def test_events_newest_first_as_text() -> None:
    events = [
        {"step": 0, "kind": "started", "message": "dora on minilm / rt-snippets: 300 steps"},
        {"step": 30, "kind": "prune", "message": "pruned to 215 live components (target 215)"},
        {"step": 210, "kind": "mask_frozen", "message": "<b>mask</b> frozen with 144 live"},
    ]
    table = run.events.events_table(events)
    rows = [[texts(td)[0] for td in tr.children] for tr in table.children.children[1].children]
    assert rows == [
        ["210", "mask frozen", "<b>mask</b> frozen with 144 live"],
        ["30", "prune", "pruned to 215 live components (target 215)"],
        ["0", "started", "dora on minilm / rt-snippets: 300 steps"],
    ]
    assert "No events yet." in texts(run.events.events_table([]))
    down = ApiClient(f"http://127.0.0.1:{free_port()}", token="")
    assert any("cannot reach the API" in t for t in texts(run.events.events(down, _run(1))))


def test_play_button_and_frames() -> None:
    # pressing play at the live end restarts from 0; pressing again stops
    assert run.ranks.play_toggle(False, 100, 100) == (False, "❚❚ Pause", 0)
    assert run.ranks.play_toggle(False, 40, 100) == (False, "❚❚ Pause", no_update)
    assert run.ranks.play_toggle(True, 40, 100) == (True, "▶ Replay", no_update)
    assert run.ranks.play_step(0, 400) == (10, False, "❚❚ Pause")
    assert run.ranks.play_step(395, 400) == (400, True, "▶ Replay")


def test_summary_names_the_budget_in_average_rank() -> None:
    r = _run(
        1,
        target_rank=4,
        init_rank=6,
        num_modules=36,
        budget={"step": 50, "target": 180, "live": 171},
    )
    items = dict(run.shell.summary_items(r, method=METHODS["dora"]))
    assert items["b(T) / r'"] == "4 / 6"
    assert items["live avg rank"] == "4.75"  # 171 / 36
    assert isinstance(run.shell.status_line(r, method=METHODS["dora"]), html.Div)
    # what the API says of a method decides the line: a fixed rank, or nothing for full
    lora = dict(run.shell.summary_items({**r, "method": "lora"}, method=METHODS["lora"]))
    assert lora["rank"] == "4" and "b(T) / r'" not in lora
    full = dict(run.shell.summary_items({**r, "method": "full"}, method=METHODS["full"]))
    assert "rank" not in full and "b(T) / r'" not in full


def test_api_down_gives_a_message_not_a_traceback() -> None:
    down = ApiClient(f"http://127.0.0.1:{free_port()}", token="")
    data = runs._fetch(down)
    assert data["unreachable"] and "cannot reach the API" in data["error"]
    page = texts(run.layout(down, 1))
    assert any("cannot reach the API" in t for t in page)
    assert any("make run" in t for t in page)


def test_full_fine_tuning_and_unregistered_runs_say_why_there_is_no_heatmap() -> None:
    down = ApiClient(f"http://127.0.0.1:{free_port()}", token="")  # never called for these
    full = _run(1, method="full")
    fig, label = run.ranks.heatmap(down, full, None, None, method=METHODS["full"])
    assert "no adapter ranks" in fig.layout.annotations[0].text and label == ""
    fig, cursor = run.importance.importance(
        down, _run(2, num_modules=0), None, None, method=METHODS["dora"]
    )
    assert "once the worker has built the model" in fig.layout.annotations[0].text
    assert cursor is None


def test_methods_that_do_not_prune_say_why_there_is_no_budget_curve() -> None:
    """LoRA reports a constant count (drawn, it was a bare line on empty-looking axes) and
    full fine-tuning none: the card says why, without asking the API."""
    down = ApiClient(f"http://127.0.0.1:{free_port()}", token="")  # never called for these
    lora = {**_run(1, method="lora"), "target_rank": 8}
    fig, cursor = run.budget.budget(down, lora, None, method=METHODS["lora"])
    assert cursor is None and not fig.data
    assert fig.layout.annotations[0].text == "LoRA keeps rank 8 in every layer."
    fig, _ = run.budget.budget(down, _run(2, method="full"), None, method=METHODS["full"])
    assert not fig.data and "no rank budget" in fig.layout.annotations[0].text
    # a pruning method asks the API (down here): the card says so, no traceback
    fig, cursor = run.budget.budget(down, _run(3), None, method=METHODS["dora"])
    assert cursor is None and "cannot reach the API" in fig.layout.annotations[0].text


def test_every_dashboard_module_stays_under_600_lines() -> None:
    root = Path(dashboard.__file__).parent
    lines = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    assert {name: n for name, n in lines.items() if n > 600} == {}


def test_the_dashboard_imports_no_torch_backend_or_worker() -> None:
    code = (
        "import sys, dashboard.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'backend') "
        "or m.startswith('dora_core.worker')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_download_button_points_at_the_dashboards_own_route() -> None:
    assert downloads.adapter_href(12) == "/download/runs/12/adapter.zip"


class _CloneApi(_FormApi):
    """The job form's API plus the run it clones."""

    def __init__(self, presets: list[dict], config: dict):
        super().__init__(presets)
        self._config = config

    def run(self, run_id: int) -> dict:
        return {"id": run_id, "config": self._config}


CLONED = {
    "name": "<b>mine</b>",
    "model": "minilm",
    "dataset": "/data/reviews.csv",
    "method": "lora",
    "lr": 0.003,
    "target_rank": 4,
    "target_modules": ["query", "value"],
    "dem_after_freeze": True,
    "init_rank": None,
    "output_dir": "/data/runs/7",
}
PRESETS = [_preset("minilm", "model", available=True), _preset("rt-snippets", "dataset", True)]


def test_prefill_from_a_run_moves_paths_and_leaves_the_run_dir() -> None:
    values = jobform.prefill_from(CLONED, PRESETS)
    assert values["dataset_path"] == "/data/reviews.csv" and "dataset" not in values
    assert values["model"] == "minilm" and "output_dir" not in values
    assert values["name"] == "<b>mine</b> (clone)"


def test_clone_prefills_the_form_with_the_runs_config() -> None:
    form = jobform.layout(_CloneApi(PRESETS, CLONED), clone=7)  # type: ignore[arg-type]
    assert _value_of(form, "job-method") == "lora"
    assert _value_of(form, "job-lr") == "0.003" and _value_of(form, "job-target_rank") == "4"
    assert _value_of(form, "job-dataset_path") == "/data/reviews.csv"
    assert _value_of(form, "job-target_modules") == "query, value"
    assert _value_of(form, "job-dem_after_freeze") == [True]
    assert _value_of(form, "job-init_rank") is None  # auto stays auto
    # submitted unchanged, the clone asks for the same job (the run dir is the API's choice)
    values = {f: _value_of(form, f"job-{f}") for f in jobform.FIELDS}
    config = jobform.form_to_config(values, _CloneApi(PRESETS, CLONED).job_schema())
    want = {k: v for k, v in CLONED.items() if k not in ("output_dir", "init_rank", "name")}
    assert {k: config[k] for k in want} == want


def test_the_run_page_shows_its_config_as_text_and_links_clone() -> None:
    from dashboard.pages.run import config

    card = config.card({"id": 7, "config": CLONED})
    pre = next(c for c in card.children if getattr(c, "id", None) == "run-config")
    assert '"name": "<b>mine</b>"' in pre.children  # shown as text, not markup
    link = card.children[1].children
    assert link.href == "/?new=1&clone=7" and link.children == "Clone job"


def test_the_clone_url_opens_the_prefilled_form() -> None:
    from dashboard.app import route

    class Api(_CloneApi):
        def all_runs(self, **kwargs):
            return []

        def methods(self):
            return []

    page, title = route(Api(PRESETS, CLONED), "/", "?new=1&clone=7")  # type: ignore[arg-type]
    assert title == "Runs · DoRA"
    assert _value_of(page, "job-method") == "lora"
