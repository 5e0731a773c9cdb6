"""Compare page (``/compare?runs=1,2,3``): where each run put its budget.

Final rank heatmaps on one colour scale, each run's difference from the
first, live components per module type, and a table of metrics and
parameter counts (how DoRA vs LoRA vs AdaLoRA is shown).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboard import components as ui
from dashboard import figures
from dashboard.api import ApiClient, ApiError
from dashboard.params import live_adapter_params

FIGURE_LABEL_CHARS = 32
# Metric columns in this order when the runs have them (classification's, then a generative
# run's), any other eval key after them in the order the runs report them.
METRIC_ORDER = ("accuracy", "macro_f1", "rouge1", "rouge2", "rougeL", "perplexity", "loss")


def parse_run_ids(search: str | None) -> tuple[list[int], list[str]]:
    """``?runs=1,2,x`` -> ([1, 2], ['x']): ids in order without repeats, and what was not an id."""
    raw = parse_qs((search or "").lstrip("?")).get("runs", [])
    ids: list[int] = []
    bad: list[str] = []
    for token in ",".join(raw).split(","):
        token = token.strip()
        if not token:
            continue
        if token.isdigit():
            if int(token) not in ids:
                ids.append(int(token))
        else:
            bad.append(token)
    return ids, bad


def search_for(ids: list[int]) -> str:
    return "?runs=" + ",".join(str(i) for i in ids)


def run_label(run: dict, limit: int | None = None) -> str:
    """'#3 name'; cut to ``limit`` characters for figure titles (the table has it whole)."""
    label = f"#{run['id']} {run.get('name') or ''}".strip()
    return label if limit is None or len(label) <= limit else label[: limit - 1] + "…"


def avg_live_rank(run: dict, matrix: dict | None) -> float | None:
    """Average live components per adapted module at the end (the achieved b)."""
    budget = run.get("budget")
    if budget and run.get("num_modules"):
        return budget["live"] / run["num_modules"]
    if not matrix:
        return None
    cells = [v for row in matrix.get("live", []) for v in row if v is not None]
    return sum(cells) / len(cells) if cells else None


def metric_columns(runs: list[dict]) -> list[str]:
    """The latest-eval metrics any of the runs has, in METRIC_ORDER, then the others."""
    seen: list[str] = []
    for run in runs:
        seen.extend(k for k in (run.get("metrics") or {}) if k not in seen)
    known = [k for k in METRIC_ORDER if k in seen]
    return known + [k for k in seen if k not in METRIC_ORDER]


def compare_rows(
    runs: list[dict], matrices: dict[int, dict | None], live: dict[int, int | None]
) -> tuple[list[str], list[list[str]]]:
    """Table header and rows: one row per run, metrics columns as the runs have them.

    ``live`` holds each run's live adapter parameters (what the pruned adapter
    costs); next to the count at r' it shows what pruning saved. "Best" is each
    run's headline metric (accuracy, ROUGE-L, or the lowest loss) from its best eval;
    the metric columns are the latest eval's (ROUGE and perplexity for a generative run).
    """
    metric_keys = metric_columns(runs)
    header = [
        "Run",
        "Method",
        "Task",
        "Status",
        "Model",
        "Dataset",
        "Steps",
        "b(T)",
        "r'",
        "Avg live rank",
        "Live adapter params",
        "Adapter params at r'",
        "Head params",
        "Total params",
        "Best",
        *(ui.metric_label(k) for k in metric_keys),
    ]
    rows = []
    for run in runs:
        params = run.get("params") or {}
        avg = avg_live_rank(run, matrices.get(run["id"]))
        metrics = run.get("metrics") or {}
        rows.append(
            [
                run_label(run),
                ui.method_label(run.get("method")),
                ui.task_label(ui.task_of(run)),
                run.get("status", "–"),
                run.get("model") or "–",
                run.get("dataset") or "–",
                f"{run.get('step') or 0} / {run.get('total_steps') or '–'}",
                str(run.get("target_rank") if run.get("target_rank") is not None else "–"),
                str(run.get("init_rank") if run.get("init_rank") is not None else "–"),
                "–" if avg is None else f"{avg:.2f}",
                ui.fmt_count(live.get(run["id"])),
                ui.fmt_count(params.get("adapter")),
                ui.fmt_count(params.get("head")),
                ui.fmt_count(params.get("total")),
                ui.headline(run),
                *(ui.fmt_metric(metrics.get(k), k) for k in metric_keys),
            ]
        )
    return header, rows


def _table(
    runs: list[dict], matrices: dict[int, dict | None], live: dict[int, int | None]
) -> html.Table:
    header, rows = compare_rows(runs, matrices, live)
    return html.Table(
        [
            html.Thead(html.Tr([html.Th(h) for h in header])),
            html.Tbody(
                [
                    html.Tr(
                        [html.Td(dcc.Link(row[0], href=f"/runs/{run['id']}"))]
                        + [html.Td(cell) for cell in row[1:]]
                    )
                    for run, row in zip(runs, rows, strict=True)
                ]
            ),
        ],
        className="table",
    )


def _selector(client: ApiClient, ids: list[int]) -> tuple[html.Div, ApiError | None]:
    try:
        runs = client.all_runs()
        error = None
    except ApiError as err:
        runs, error = [], err
    options = [
        {
            "label": f"{run_label(r)} ({ui.method_label(r.get('method'))}, {r.get('status')})",
            "value": r["id"],
        }
        for r in runs
    ]
    known = {r["id"] for r in runs}
    options += [{"label": f"#{i}", "value": i} for i in ids if i not in known]
    return (
        html.Div(
            dcc.Dropdown(
                id="compare-select",
                options=options,
                value=ids,
                multi=True,
                placeholder="Pick two or more runs",
                className="compare-dropdown",
            ),
            className="filters",
        ),
        error,
    )


def content(client: ApiClient, ids: list[int], bad: list[str]) -> list[Any]:
    """Everything under the selector, for the runs that could be loaded."""
    notes: list[Any] = []
    if bad:
        notes.append(
            ui.error_state(f"Not run ids, ignored: {', '.join(bad)}", "Use /compare?runs=1,2,3")
        )
    runs: list[dict] = []
    matrices: dict[int, dict | None] = {}
    live: dict[int, int | None] = {}
    for rid in ids:
        try:
            run = client.run(rid)
        except ApiError as err:
            if err.unreachable:
                return [*notes, ui.api_error_state(err)]
            notes.append(ui.error_state(f"Run {rid}: {err.message}"))
            continue
        try:
            matrices[rid] = client.rank_matrix(rid)
            live[rid] = live_adapter_params(run.get("method"), client.modules(rid), matrices[rid])
        except ApiError:
            matrices[rid], live[rid] = None, None
        runs.append(run)
    if len(runs) < 2:
        return [
            *notes,
            ui.empty_state(
                "Pick two or more runs to compare.",
                "Choose them above, or tick them on the Runs page and press “Compare selected”.",
            ),
        ]
    with_data = [
        (run_label(r, FIGURE_LABEL_CHARS), matrices[r["id"]]) for r in runs if matrices.get(r["id"])
    ]
    r_max = max((r.get("init_rank") or 0 for r in runs), default=0) or None
    first = next(((label, m) for label, m in with_data), None)
    diffs = (
        [
            ui.graph(
                f"compare-diff-{i}",
                figures.difference_heatmap(first[0], first[1], label, matrix),
            )
            for i, (label, matrix) in enumerate(with_data[1:])
        ]
        if first
        else []
    )
    return [
        *notes,
        ui.card(
            "Metrics and parameters", html.Div(_table(runs, matrices, live), className="table-wrap")
        ),
        ui.card(
            "Final rank distribution (one colour scale)",
            ui.graph("compare-heatmaps", figures.compare_rank_heatmaps(with_data, r_max)),
        ),
        html.Div(
            [
                ui.card(
                    "Difference from the first run",
                    *(diffs or [ui.empty_state("Needs rank data from two runs.")]),
                ),
                ui.card(
                    "Budget by module type",
                    ui.graph("compare-totals", figures.type_totals_figure(with_data)),
                ),
            ],
            className="grid-2",
        ),
    ]


def layout(client: ApiClient, search: str | None) -> html.Div:
    ids, bad = parse_run_ids(search)
    selector, error = _selector(client, ids)
    if error is not None and error.unreachable:
        body = [ui.api_error_state(error)]
    else:
        body = content(client, ids, bad)
    return html.Div(
        [
            html.Div(html.H2("Compare runs"), className="page-head"),
            selector,
            html.Div(body, id="compare-content"),
        ]
    )


def register(app: Dash, client: ApiClient) -> None:
    @app.callback(
        Output("url", "search", allow_duplicate=True),
        Input("compare-select", "value"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def _select(ids, search):
        # also called when the page is drawn (url is in the shell): change nothing then
        if list(ids or []) == parse_run_ids(search)[0]:
            return no_update
        return search_for(list(ids or []))
