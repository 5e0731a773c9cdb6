"""Generative runs in the dashboard: the Samples card, the task in the New job form, the
runs list and the compare table. Pure parts and callbacks as plain functions; the last
test runs the card's callbacks against the real API.

Expected values are written out by hand from the inputs, never taken from the pages.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from dash import dcc, html, no_update

from dashboard.api import ApiClient
from dashboard.pages import compare, jobform, runs
from dashboard.pages.run import samples, shell
from dora_core.contracts.job import JobConfig, JobConfigError, parse_job_config
from tests.dashboard.helpers import METHODS, texts

HOSTILE = "<img src=x onerror=alert(1)>"
LONG_PROMPT = "Summarise: " + "word " * 60 + "END"  # 311 characters


def _components(tree: Any) -> list[Any]:
    """Every component in a layout tree."""
    found = [tree] if hasattr(tree, "to_plotly_json") else []
    children = tree if isinstance(tree, list | tuple) else getattr(tree, "children", None)
    if children is None or isinstance(children, str):
        return found
    for child in children if isinstance(children, list | tuple) else [children]:
        found.extend(_components(child))
    return found


def _by_id(tree: Any, component_id: str) -> Any:
    return next(c for c in _components(tree) if getattr(c, "id", None) == component_id)


# --- the Samples card -----------------------------------------------------------------


ANSWER = {
    "step": 40,
    "steps": [20, 40],
    "samples": [
        {"prompt": HOSTILE, "reference": f"ref {HOSTILE}", "prediction": "**bold** _x_"},
        {"prompt": LONG_PROMPT, "reference": "line 1\nline 2", "prediction": ""},
    ],
}


def test_samples_are_text_nodes_never_markdown_or_html() -> None:
    table = samples.samples_table(ANSWER)
    shown = texts(table)
    # each text is one string child, exactly as the model wrote it
    assert HOSTILE in shown and f"ref {HOSTILE}" in shown and "**bold** _x_" in shown
    assert "line 1\nline 2" in shown
    components = _components(table)
    assert not any(isinstance(c, dcc.Markdown) for c in components)
    assert not any("dangerously_allow_html" in c.to_plotly_json()["props"] for c in components)
    assert "Step 40: 2 dev samples, greedy." in shown


def test_a_long_prompt_is_cut_with_the_whole_text_one_click_away() -> None:
    cell = samples.prompt_cell(LONG_PROMPT)
    assert isinstance(cell, html.Details)
    summary, full = cell.children
    assert isinstance(summary, html.Summary)
    assert summary.children == LONG_PROMPT[:159] + "…"  # 160 characters shown
    assert full.children == LONG_PROMPT
    short = samples.prompt_cell("Summarise: short")
    assert isinstance(short, html.Div) and short.children == "Summarise: short"


class _SamplesApi:
    """The two calls the card makes, answering from a list of samples events."""

    def __init__(self, events: list[dict]):
        self.events_list = events
        self.calls: list[tuple] = []

    def events(self, run_id, kind=None, since_step=None, limit=None):
        self.calls.append(("events", kind, since_step, limit))
        found = [e for e in self.events_list if since_step is None or e["step"] > since_step]
        return found[-limit:] if limit else found

    def samples(self, run_id, step=None):
        self.calls.append(("samples", step))
        steps = sorted({e["step"] for e in self.events_list})
        if not steps:
            return {"step": None, "steps": [], "samples": []}
        shown = steps[-1] if step is None else step
        rows = next(e["data"]["samples"] for e in self.events_list if e["step"] == shown)
        return {"step": shown, "steps": steps, "samples": rows}


def _event(step: int) -> dict:
    row = {"prompt": f"p{step}", "reference": f"r{step}", "prediction": f"y{step}"}
    return {"step": step, "kind": "samples", "data": {"samples": [row]}}


LM_RUN = {"id": 5, "task": "causal-lm", "status": "running"}


def test_the_card_is_hidden_for_classification_runs() -> None:
    api = _SamplesApi([_event(20)])
    for run in ({"id": 1, "task": "classification"}, {"id": 2, "config": {}}, {"id": 3}):
        assert samples.follow(api, run, None, None)[0] == {"display": "none"}  # type: ignore[arg-type]
        assert samples.table(api, run, 20) is None  # type: ignore[arg-type]
        assert samples.card(run).style == {"display": "none"}
    assert api.calls == []  # nothing is asked about a classification run
    assert samples.card(LM_RUN).style == {}
    # a run listed by an older API: the task comes from its config
    assert samples.card({"id": 4, "config": {"task": "seq2seq"}}).style == {}


def test_the_step_follows_new_samples_unless_an_earlier_one_was_picked() -> None:
    api = _SamplesApi([])
    card, picker, options, value, cursor = samples.follow(api, LM_RUN, None, None)  # type: ignore[arg-type]
    assert (card, picker, options, value, cursor) == (
        {},
        {"display": "none"},
        [],
        no_update,
        {"latest": None},
    )
    assert "No samples yet." in texts(samples.table(api, LM_RUN, None))  # type: ignore[arg-type]

    api.events_list.append(_event(20))
    card, picker, options, value, cursor = samples.follow(api, LM_RUN, None, cursor)  # type: ignore[arg-type]
    assert (value, cursor, picker) == (
        20,
        {"latest": 20},
        {"display": "none"},
    )  # one step: no picker
    assert options == [{"label": "step 20 (latest)", "value": 20}]
    assert texts(samples.table(api, LM_RUN, 20))[-4:] == ["1", "p20", "r20", "y20"]  # type: ignore[arg-type]

    # nothing newer: one cheap question, nothing sent to the browser
    api.calls.clear()
    assert samples.follow(api, LM_RUN, 20, cursor) == (no_update,) * 5  # type: ignore[arg-type]
    assert api.calls == [("events", "samples", 20, 1)]

    api.events_list.append(_event(40))
    _card, picker, options, value, cursor = samples.follow(api, LM_RUN, 20, cursor)  # type: ignore[arg-type]
    assert value == 40 and cursor == {"latest": 40} and picker == {}
    assert options == [
        {"label": "step 20", "value": 20},
        {"label": "step 40 (latest)", "value": 40},
    ]
    # a person reading step 20 stays there when step 60 arrives
    api.events_list.append(_event(60))
    _card, _picker, options, value, cursor = samples.follow(api, LM_RUN, 20, cursor)  # type: ignore[arg-type]
    assert value is no_update and cursor == {"latest": 60} and len(options) == 3


# --- the New job form -------------------------------------------------------------------


def _preset(name: str, kind: str, tasks: list[str], available: bool = True) -> dict:
    return {
        "name": name,
        "kind": kind,
        "description": name,
        "available": available,
        "tasks": tasks,
    }


# the catalogue as the brief lists it, plus one uninstalled generative dataset
PRESETS = [
    _preset("minilm", "model", ["classification"]),
    _preset("smollm2-135m", "model", ["classification", "causal-lm"]),
    _preset("rt-snippets", "dataset", ["classification"]),
    _preset("bbc-news", "dataset", ["classification"]),
    _preset("chat-set", "dataset", ["causal-lm"], available=False),
    _preset("bbc-summary", "dataset", ["causal-lm", "seq2seq"]),
]
SCHEMA = JobConfig.model_json_schema()


class _FormApi:
    def __init__(self, presets: list[dict], config: dict | None = None):
        self._presets, self._config = presets, config

    def job_schema(self) -> dict:
        return SCHEMA

    def presets(self) -> list[dict]:
        return self._presets

    def run(self, run_id: int) -> dict:
        return {"id": run_id, "name": "summaries", "config": self._config}


def _for_task(task: str, model: str | None = None, dataset: str | None = None) -> dict:
    out = jobform.for_task(task, PRESETS, model, dataset)
    styles = dict(zip(jobform.TASK_BOUND, out, strict=False))
    n = len(jobform.TASK_BOUND)
    shown = {f for f, style in styles.items() if style != {"display": "none"}}
    names = lambda options: [(o["value"], o["disabled"]) for o in options]  # noqa: E731
    return {
        "shown": shown,
        "generation": out[n],
        "model": (names(out[n + 1]), out[n + 2], out[n + 3]),
        "dataset": (names(out[n + 4]), out[n + 5], out[n + 6]),
    }


GENERATIVE = {
    "prompt_column",
    "completion_column",
    "chat_template",
    "train_on_prompt",
    "max_new_tokens",
    "max_gen_samples",
    "generate_every",
}


def test_the_task_picks_the_fields_and_the_presets() -> None:
    cls = _for_task("classification", "minilm", "rt-snippets")
    assert cls["shown"] == {"text_column", "label_column", "head_lr"}
    assert cls["generation"] == {"display": "none"}
    assert cls["model"] == ([("minilm", False), ("smollm2-135m", False)], "minilm", None)
    assert cls["dataset"] == ([("rt-snippets", False), ("bbc-news", False)], "rt-snippets", None)

    lm = _for_task("causal-lm", "minilm", "rt-snippets")  # neither serves causal-lm
    assert lm["shown"] == GENERATIVE | {"text_column"}  # plain text LM reads text_column
    assert lm["generation"] == {}
    assert lm["model"] == ([("smollm2-135m", False)], "smollm2-135m", None)
    assert lm["dataset"] == ([("chat-set", True), ("bbc-summary", False)], "bbc-summary", None)

    s2s = _for_task("seq2seq", "smollm2-135m", "bbc-summary")
    assert s2s["shown"] == GENERATIVE
    options, value, placeholder = s2s["model"]
    assert (options, value) == ([], None)  # no seq2seq model ships: a local folder it is
    assert placeholder == "No model preset serves seq2seq: give a local model folder under Advanced"
    assert s2s["dataset"] == ([("bbc-summary", False)], "bbc-summary", None)


def test_presets_from_an_api_without_tasks_serve_classification_only() -> None:
    old = [{k: v for k, v in p.items() if k != "tasks"} for p in PRESETS]
    out = jobform.for_task("causal-lm", old, None, None)
    n = len(jobform.TASK_BOUND)
    assert out[n + 1] == [] and out[n + 4] == []
    assert [o["value"] for o in jobform.for_task("classification", old, None, None)[n + 1]] == [
        "minilm",
        "smollm2-135m",
    ]


def test_fields_of_another_task_are_not_sent_and_the_job_validates() -> None:
    values = {
        "task": "causal-lm",
        "model": "smollm2-135m",
        "dataset": "bbc-summary",
        "head_lr": "0.01",  # typed while the task was classification, then hidden
        "label_column": "label",
        "text_column": "body",
        "prompt_column": "article",
        "completion_column": "lead",
        "train_on_prompt": [True],
        "chat_template": "",
        "max_new_tokens": "32",
        "max_gen_samples": "16",
        "generate_every": "50",
    }
    config = jobform.form_to_config(values, SCHEMA)
    assert config == {
        "task": "causal-lm",
        "model": "smollm2-135m",
        "dataset": "bbc-summary",
        "text_column": "body",
        "prompt_column": "article",
        "completion_column": "lead",
        "train_on_prompt": True,
        "max_new_tokens": 32,
        "max_gen_samples": 16,
        "generate_every": 50,
    }
    job = parse_job_config(config)  # what POST /api/jobs checks
    assert (job.task, job.max_new_tokens, job.train_on_prompt) == ("causal-lm", 32, True)
    # sent anyway, the hidden head_lr would have made the job invalid
    with pytest.raises(JobConfigError, match="head_lr"):
        parse_job_config({**config, "head_lr": 0.01})
    # classification drops the generative fields, whatever they hold
    values["task"] = "classification"
    cls = jobform.form_to_config({**values, "model": "minilm", "dataset": "rt-snippets"}, SCHEMA)
    assert cls == {
        "task": "classification",
        "model": "minilm",
        "dataset": "rt-snippets",
        "head_lr": 0.01,
        "label_column": "label",
        "text_column": "body",
    }
    parse_job_config(cls)


CLONED = {
    "task": "causal-lm",
    "model": "smollm2-135m",
    "dataset": "bbc-summary",
    "method": "lora",
    "head_lr": None,
    "label_column": "label",
    "prompt_column": "article",
    "completion_column": "lead",
    "train_on_prompt": True,
    "chat_template": "{{ messages }}",
    "max_new_tokens": 32,
    "max_gen_samples": 8,
    "generate_every": 20,
    "output_dir": "/data/runs/9",
}


def test_clone_carries_the_task_and_the_generative_fields() -> None:
    form = jobform.layout(_FormApi(PRESETS, CLONED), clone=9)  # type: ignore[arg-type]
    value = lambda field: _by_id(form, f"job-{field}").value  # noqa: E731
    assert value("task") == "causal-lm"
    assert (value("model"), value("dataset")) == ("smollm2-135m", "bbc-summary")
    assert (value("prompt_column"), value("completion_column")) == ("article", "lead")
    assert value("train_on_prompt") == [True] and value("chat_template") == "{{ messages }}"
    assert (value("max_new_tokens"), value("max_gen_samples"), value("generate_every")) == (
        "32",
        "8",
        "20",
    )
    # drawn for the cloned task: its presets, its fields, the Generation section open
    models = [o["value"] for o in _by_id(form, "job-model").options]
    assert models == ["smollm2-135m"]
    assert _by_id(form, "job-field-label_column").style == {"display": "none"}
    assert _by_id(form, "job-field-head_lr").style == {"display": "none"}
    assert _by_id(form, "job-field-max_new_tokens").style == {}
    assert _by_id(form, "job-section-generation").style == {}
    # submitted unchanged, it is the same generative job
    values = {f: _by_id(form, f"job-{f}").value for f in jobform.FIELDS}
    config = jobform.form_to_config(values, SCHEMA)
    want = {k: v for k, v in CLONED.items() if k not in ("output_dir", "head_lr", "label_column")}
    assert {k: config[k] for k in want} == want
    assert "head_lr" not in config and "label_column" not in config
    parse_job_config(config)


def test_a_new_form_starts_as_classification() -> None:
    form = jobform.layout(_FormApi(PRESETS))  # type: ignore[arg-type]
    assert _by_id(form, "job-task").value == "classification"
    assert [o["value"] for o in _by_id(form, "job-task").options] == [
        "classification",
        "causal-lm",
        "seq2seq",
    ]
    assert _by_id(form, "job-section-generation").style == {"display": "none"}
    assert _by_id(form, "job-field-prompt_column").style == {"display": "none"}
    assert _by_id(form, "job-field-label_column").style == {}
    assert [o["value"] for o in _by_id(form, "job-dataset").options] == [
        "rt-snippets",
        "bbc-news",
    ]


# --- runs list, run summary, compare ------------------------------------------------------


def _run(rid: int, **kw) -> dict:
    base = {
        "id": rid,
        "name": f"run-{rid}",
        "status": "completed",
        "method": "dora",
        "task": "classification",
        "model": "minilm",
        "dataset": "rt-snippets",
        "step": 100,
        "total_steps": 100,
        "best": None,
        "metrics": None,
        "params": None,
        "created_at": f"2025-01-0{rid}T10:00:00",
    }
    return {**base, **kw}


CLS = _run(
    1,
    best={"key": "eval/accuracy", "value": 0.84, "step": 90},
    metrics={"accuracy": 0.8312, "macro_f1": 0.8299, "loss": 0.41234},
)
LM = _run(
    2,
    task="causal-lm",
    model="smollm2-135m",
    dataset="bbc-summary",
    best={"key": "eval/rougeL", "value": 0.312, "step": 100},
    metrics={
        "loss": 2.43106,
        "perplexity": 11.3726,
        "rouge1": 0.35,
        "rouge2": 0.1234,
        "rougeL": 0.312,
    },
)
TEXT_LM = _run(
    3, task="causal-lm", best={"key": "eval/loss", "value": 2.43106, "step": 50}, config={}
)
S2S = _run(4, task=None, config={"task": "seq2seq"}, best=None)  # an older API: no task field


def _cells(table: Any) -> dict[int, list[str]]:
    body = table.children[0].children[1].children
    return {
        int(texts(tr.children[1])[0]): [" ".join(texts(td)) for td in tr.children] for tr in body
    }


def test_runs_list_shows_the_task_and_the_headline_metric() -> None:
    table = runs.render_table({"runs": [CLS, LM, TEXT_LM, S2S]}, None, None, None, None, None)
    header = ["".join(texts(th)) for th in table.children[0].children[0].children.children]
    task_col, best_col = header.index("Task"), header.index("Best dev metric")
    rows = _cells(table)
    assert {rid: (row[task_col], row[best_col]) for rid, row in rows.items()} == {
        1: ("classification", "accuracy 0.8400"),
        2: ("causal LM", "ROUGE-L 0.3120"),
        3: ("causal LM", "loss 2.4311 (lowest)"),
        4: ("seq2seq", "–"),
    }
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(runs.filter_sort_runs([CLS, LM, TEXT_LM, S2S], query="seq2seq")) == [4]
    assert ids(runs.filter_sort_runs([CLS, LM, S2S], sort={"key": "task", "desc": False})) == [
        2,
        1,
        4,
    ]


def test_run_summary_names_a_generative_task_and_its_best_rouge() -> None:
    items = dict(shell.summary_items(LM, method=METHODS["dora"]))
    assert items["task"] == "causal LM" and items["best ROUGE-L"] == "0.3120"
    assert "task" not in dict(shell.summary_items(CLS, method=METHODS["dora"]))


def test_compare_shows_rouge_and_perplexity_columns_formatted_for_them() -> None:
    header, rows = compare.compare_rows([CLS, LM], {}, {})
    metrics = header[header.index("Best") + 1 :]
    assert metrics == [
        "accuracy",
        "macro-F1",
        "ROUGE-1",
        "ROUGE-2",
        "ROUGE-L",
        "perplexity",
        "loss",
    ]
    cls, lm = (dict(zip(header, row, strict=True)) for row in rows)
    assert (cls["Task"], lm["Task"]) == ("classification", "causal LM")
    assert (cls["Best"], lm["Best"]) == ("accuracy 0.8400", "ROUGE-L 0.3120")
    assert [lm[k] for k in metrics] == ["–", "–", "0.3500", "0.1234", "0.3120", "11.37", "2.4311"]
    assert [cls[k] for k in metrics] == ["0.8312", "0.8299", "–", "–", "–", "–", "0.4123"]


# --- the card against the real API -------------------------------------------------------


@pytest.mark.slow
def test_the_card_reads_samples_posted_to_the_real_api(api_url: str, client: ApiClient) -> None:
    http = httpx.Client(base_url=api_url, timeout=10)
    config = {"task": "seq2seq", "model": "/models/t5", "dataset": "bbc-summary", "max_steps": 9}
    made = http.post("/api/runs", json={"name": "t5 summaries", "config": config}).json()
    http.headers["Authorization"] = f"Bearer {made['token']}"
    rows = [{"prompt": HOSTILE, "reference": "a <b>lead</b>", "prediction": "x & y"}]
    event = {"step": 9, "kind": "samples", "message": "1 sample", "data": {"samples": rows}}
    http.post(f"/api/runs/{made['id']}/telemetry", json={"seq": 0, "events": [event]})
    run = client.run(made["id"])
    assert run["task"] == "seq2seq"
    card, _picker, _options, value, cursor = samples.follow(client, run, None, None)
    assert (card, value, cursor) == ({}, 9, {"latest": 9})
    shown = texts(samples.table(client, run, value))
    assert shown[-3:] == [HOSTILE, "a <b>lead</b>", "x & y"]
    assert samples.follow(client, run, 9, cursor) == (no_update,) * 5
    http.close()


def test_perplexity_gets_its_own_axis_next_to_rouge() -> None:
    from dashboard import figures
    from dashboard.pages.run import curves

    keys = ["eval/loss", "eval/perplexity", "eval/rouge1", "eval/rougeL", "loss"]
    groups = figures.group_scalar_keys(keys)
    assert groups["metrics"] == ["eval/perplexity", "eval/rouge1", "eval/rougeL"]
    series = {k: {"steps": [10, 20], "values": [0.3, 0.35]} for k in keys}
    series["eval/perplexity"] = {"steps": [10, 20], "values": [40.2, 12.7]}
    fig = figures.curves_figure(series, groups["metrics"], right_axis=curves.RIGHT_AXIS)
    assert [(t.name, t.yaxis) for t in fig.data] == [
        ("eval/perplexity", "y2"),
        ("eval/rouge1", "y"),
        ("eval/rougeL", "y"),
    ]
    assert fig.layout.yaxis2.title.text == "eval/perplexity"
