"""Runs page (``/``): every run in a table with filter, sort, delete and compare.

The table is plain HTML built here (not a DataTable): run names are text
children, the name links to the run's page, and filtering and sorting are
pure functions of the run list (tested without a browser).
"""

from __future__ import annotations

from typing import Any

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dashboard import components as ui
from dashboard.api import ApiClient, ApiError
from dashboard.pages import jobform
from dashboard.params import LiveParams
from dora_core.contracts.wire import RUN_STATUSES

STATUSES = list(RUN_STATUSES)
# (sort key, column title); None = a column that does not sort
COLUMNS: list[tuple[str | None, str]] = [
    (None, ""),
    ("id", "#"),
    ("name", "Name"),
    ("method", "Method"),
    ("task", "Task"),
    ("model", "Model"),
    ("dataset", "Dataset"),
    ("status", "Status"),
    ("progress", "Progress"),
    ("best", "Best dev metric"),
    ("params", "Live params"),
    ("created_at", "Created"),
    (None, ""),
]
DEFAULT_SORT = {"key": "id", "desc": True}
LIVE_PARAMS = LiveParams()  # shared by every refresh: a run is recounted when its step moves
REFRESH_MS = 3000


def _sort_value(run: dict, key: str) -> Any:
    if key == "progress":
        total = run.get("total_steps")
        return (run.get("step") or 0) / total if total else None
    if key == "best":
        best = ui.best_metric(run)
        return best[1] if best else None
    if key == "params":
        return adapter_params(run)
    if key == "task":
        return ui.task_of(run)
    value = run.get(key)
    return value.lower() if isinstance(value, str) else value


def filter_sort_runs(
    runs: list[dict],
    query: str | None = None,
    statuses: list[str] | None = None,
    methods: list[str] | None = None,
    sort: dict | None = None,
) -> list[dict]:
    """The rows to show: text query over name/method/task/model/dataset, status and method
    filters (empty = all), then sorted; rows without a value sort last."""
    needle = (query or "").strip().lower()
    rows = [
        r
        for r in runs
        if (not statuses or r.get("status") in statuses)
        and (not methods or r.get("method") in methods)
        and (
            not needle
            or any(
                needle in str(r.get(k) or "").lower()
                for k in ("name", "method", "model", "dataset")
            )
            or needle in ui.task_of(r)
            or needle == str(r.get("id"))
        )
    ]
    sort = sort or DEFAULT_SORT
    present = [r for r in rows if _sort_value(r, sort["key"]) is not None]
    missing = [r for r in rows if _sort_value(r, sort["key"]) is None]
    present.sort(key=lambda r: _sort_value(r, sort["key"]), reverse=bool(sort.get("desc")))
    return present + missing


def next_sort(current: dict | None, key: str) -> dict:
    """Clicking a column header: sort by it, or flip the direction if it is already the key."""
    current = current or DEFAULT_SORT
    if current["key"] == key:
        return {"key": key, "desc": not current["desc"]}
    return {"key": key, "desc": key in ("id", "created_at", "progress", "best", "params")}


def adapter_params(run: dict) -> int | None:
    """The adapter's live parameter count, else its count at the start."""
    if run.get("live_params") is not None:
        return run["live_params"]
    return (run.get("params") or {}).get("adapter")


def _fetch(client: ApiClient) -> dict:
    """Store payload: the runs (each with its live parameter count), or the
    error a person should see instead."""
    try:
        runs = client.all_runs()
    except ApiError as err:
        return {"runs": [], "error": err.message, "unreachable": err.unreachable}
    return {
        "runs": [{**r, "live_params": LIVE_PARAMS.get(client, r)} for r in runs],
        "error": None,
        "unreachable": False,
    }


def method_options(client: ApiClient) -> list[dict]:
    """The method filter's choices, as the API lists its methods; none while it cannot say."""
    try:
        methods = client.methods()
    except ApiError:
        return []
    return [{"label": ui.method_label(name), "value": name} for name in methods]


def _header_cell(key: str | None, title: str, sort: dict) -> html.Th:
    if key is None:
        return html.Th(title)
    arrow = ("▼" if sort["desc"] else "▲") if sort["key"] == key else ""
    return html.Th(
        html.Button(
            [title, html.Span(arrow, className="sort-arrow")],
            id={"type": "runs-sort", "key": key},
            className="th-button",
            title=f"Sort by {title.lower()}",
        )
    )


def _row(run: dict, selected: list[int]) -> html.Tr:
    rid = run["id"]
    start = (run.get("params") or {}).get("adapter")
    return html.Tr(
        [
            html.Td(
                dcc.Checklist(
                    id={"type": "runs-select", "id": rid},
                    options=[{"label": "", "value": rid}],
                    value=[rid] if rid in selected else [],
                    className="row-select",
                )
            ),
            html.Td(str(rid), className="num"),
            html.Td(
                dcc.Link(run.get("name") or f"run {rid}", href=f"/runs/{rid}"), className="name"
            ),
            html.Td(ui.method_label(run.get("method"))),
            html.Td(ui.task_label(ui.task_of(run)), className="task"),
            html.Td(run.get("model") or "–"),
            html.Td(run.get("dataset") or "–"),
            html.Td(
                ui.status_badge(run.get("status", "?"), run.get("queue_position")),
                title=run.get("error") or "",
            ),
            html.Td(ui.progress_bar(run.get("step"), run.get("total_steps"))),
            html.Td(ui.headline(run), className="headline"),
            html.Td(
                ui.fmt_count(adapter_params(run)),
                className="num",
                title=f"adapter parameters now; {ui.fmt_count(start)} at the start"
                if start
                else "",
            ),
            html.Td(ui.fmt_time(run.get("created_at"))),
            html.Td(
                html.Button(
                    "Delete",
                    id={"type": "runs-delete", "id": rid},
                    className="btn btn-small btn-danger-outline",
                    title=f"Delete run {rid} and its data",
                )
            ),
        ]
    )


def render_table(
    data: dict,
    query: str | None,
    statuses: list[str] | None,
    methods: list[str] | None,
    sort: dict | None,
    selected: list[int] | None,
) -> html.Div:
    """The table, or the page's empty/error state."""
    if data.get("error"):
        if data.get("unreachable"):
            return ui.api_error_state(ApiError(data["error"]))
        return ui.error_state(data["error"])
    runs = data.get("runs") or []
    if not runs:
        return ui.empty_state(
            "No runs yet.",
            "Start one with “New job” above; it appears here and opens its live page.",
        )
    rows = filter_sort_runs(runs, query, statuses, methods, sort)
    if not rows:
        return ui.empty_state("No run matches these filters.", f"{len(runs)} runs in total.")
    sort = sort or DEFAULT_SORT
    return html.Div(
        [
            html.Table(
                [
                    html.Thead(html.Tr([_header_cell(k, t, sort) for k, t in COLUMNS])),
                    html.Tbody([_row(r, selected or []) for r in rows]),
                ],
                className="table",
            ),
            html.P(f"{len(rows)} of {len(runs)} runs", className="muted small"),
        ],
        className="table-wrap",
    )


def layout(client: ApiClient, new_job: bool = False, clone: int | None = None) -> html.Div:
    data = _fetch(client)
    return html.Div(
        [
            html.Div(
                [
                    html.H2("Runs"),
                    html.Div(
                        [
                            dcc.Link(
                                "Compare selected",
                                id="runs-compare",
                                href="/compare",
                                className="btn btn-secondary disabled",
                            ),
                            html.Button("New job", id="runs-new", className="btn btn-primary"),
                        ],
                        className="actions",
                    ),
                ],
                className="page-head",
            ),
            html.Div(
                jobform.layout(client, clone),
                id="runs-form-panel",
                style={} if new_job else {"display": "none"},
            ),
            html.Div(
                [
                    dcc.Input(
                        id="runs-query",
                        type="search",
                        placeholder="Filter by name, method, task, model or dataset",
                        debounce=0.3,
                        className="input",
                    ),
                    dcc.Dropdown(
                        id="runs-status",
                        options=STATUSES,
                        multi=True,
                        placeholder="Any status",
                        className="filter-dropdown",
                    ),
                    dcc.Dropdown(
                        id="runs-method",
                        options=method_options(client),
                        multi=True,
                        placeholder="Any method",
                        className="filter-dropdown",
                    ),
                ],
                className="filters",
            ),
            html.Div(id="runs-message", role="status"),
            html.Div(render_table(data, None, None, None, None, None), id="runs-table"),
            dcc.Store(id="runs-data", data=data),
            dcc.Store(id="runs-sort-state", data=DEFAULT_SORT),
            dcc.Store(id="runs-selected", data=[]),
            dcc.Store(id="runs-pending-delete"),
            dcc.ConfirmDialog(id="runs-confirm"),
            dcc.Interval(id="runs-tick", interval=REFRESH_MS),
        ]
    )


def refresh(client: ApiClient, old: dict | None) -> Any:
    """New run list, or no_update when nothing changed (the table keeps its state)."""
    new = _fetch(client)
    return no_update if new == old else new


def register(app: Dash, client: ApiClient) -> None:
    jobform.register(app, client)

    @app.callback(
        Output("runs-data", "data"), Input("runs-tick", "n_intervals"), State("runs-data", "data")
    )
    def _refresh(_n, old):
        return refresh(client, old)

    @app.callback(
        Output("runs-table", "children"),
        Input("runs-data", "data"),
        Input("runs-query", "value"),
        Input("runs-status", "value"),
        Input("runs-method", "value"),
        Input("runs-sort-state", "data"),
        State("runs-selected", "data"),
    )
    def _table(data, query, statuses, methods, sort, selected):
        return render_table(data or {}, query, statuses, methods, sort, selected)

    @app.callback(
        Output("runs-method", "options"),
        Input("runs-data", "data"),
        State("runs-method", "options"),
        prevent_initial_call=True,
    )
    def _methods(_data, options):
        # the API was down when the page was drawn: fill the filter once it answers
        return no_update if options else method_options(client)

    @app.callback(
        Output("runs-sort-state", "data"),
        Input({"type": "runs-sort", "key": ALL}, "n_clicks"),
        State("runs-sort-state", "data"),
        prevent_initial_call=True,
    )
    def _sort(clicks, current):
        if not ctx.triggered_id or not any(clicks):
            return no_update
        return next_sort(current, ctx.triggered_id["key"])

    @app.callback(
        Output("runs-selected", "data"),
        Output("runs-compare", "href"),
        Output("runs-compare", "className"),
        Input({"type": "runs-select", "id": ALL}, "value"),
    )
    def _select(values):
        ids = sorted({rid for value in values or [] for rid in value or []})
        href = "/compare?runs=" + ",".join(map(str, ids)) if ids else "/compare"
        ready = len(ids) >= 2
        return ids, href, "btn btn-secondary" + ("" if ready else " disabled")

    @app.callback(
        Output("runs-form-panel", "style"),
        Input("runs-new", "n_clicks"),
        State("runs-form-panel", "style"),
        prevent_initial_call=True,
    )
    def _toggle_form(_n, style):
        hidden = (style or {}).get("display") == "none"
        return {} if hidden else {"display": "none"}

    @app.callback(
        Output("runs-confirm", "displayed"),
        Output("runs-confirm", "message"),
        Output("runs-pending-delete", "data"),
        Input({"type": "runs-delete", "id": ALL}, "n_clicks"),
        State("runs-data", "data"),
        prevent_initial_call=True,
    )
    def _ask_delete(clicks, data):
        if not ctx.triggered_id or not ctx.triggered[0]["value"]:
            return no_update, no_update, no_update
        rid = ctx.triggered_id["id"]
        run = next((r for r in (data or {}).get("runs", []) if r["id"] == rid), {})
        live = " It is still running and will be cancelled first." if ui.is_live(run) else ""
        # ConfirmDialog shows its message as plain text (window.confirm)
        return True, f"Delete run {rid} ({run.get('name', '')}) and all its data?{live}", rid

    @app.callback(
        Output("runs-message", "children"),
        Output("runs-data", "data", allow_duplicate=True),
        Input("runs-confirm", "submit_n_clicks"),
        State("runs-pending-delete", "data"),
        prevent_initial_call=True,
    )
    def _delete(submitted, rid):
        if not submitted or rid is None:
            return no_update, no_update
        try:
            client.delete_run(rid)
        except ApiError as err:
            return ui.error_state(f"Could not delete run {rid}: {err.message}"), no_update
        return html.P(f"Deleted run {rid}.", className="note"), _fetch(client)
