"""Run page (``/runs/<id>``): status, live rank heatmap with replay, budget,
component importance, loss and metric curves, events, cancel and adapter download.

One poll (``GET /api/runs/<id>``) per tick drives everything: when the run
changed, each stream fetches only what is new (``since_step``) and appends
it to its figure with a Patch. The poll stops once the run has ended and its
last step has been drawn.
"""

from __future__ import annotations

import os
from typing import Any

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from flask import Flask, Response

from dashboard import components as ui
from dashboard import figures, live
from dashboard.api import ApiClient, ApiError
from dashboard.params import live_adapter_params

# how often a live run is polled; lower it (ms) to see fast jobs in more frames
POLL_MS = int(os.environ.get("DORA_DASH_POLL_MS", "1500"))
PLAY_MS = 600
MAX_SCORE_POINTS = 400
MAX_SCALAR_POINTS = 1000
LOG_TAIL = 15
EVENT_ROWS = 50  # the events card lists the latest this many
# (scalar group, card title, y axis, empty message): the curve cards
SCALAR_PLOTS = (
    ("loss", "Loss", "loss", "No loss reported yet."),
    ("metrics", "Dev metrics", "", "No evaluation yet: metrics appear at each eval step."),
    ("optimizer", "Optimiser", "gradient norm", "No optimiser scalars yet."),
)
# small next to the others: drawn on their own scale on the right
RIGHT_AXIS = ("dem", "lr")
FULL_MESSAGE = "Full fine-tuning trains every weight: there are no adapter ranks to show."


# --- pure pieces ------------------------------------------------------------


def phase_of(run: dict) -> tuple[float, float] | None:
    """The pruning phase of a run, from its config; None for methods that do not prune."""
    if run.get("method") not in ("dora", "adalora"):
        return None
    config = run.get("config") or {}
    return figures.pruning_phase(
        run.get("total_steps"), config.get("warmup_frac", 0.15), config.get("final_frac", 0.5)
    )


def slider_marks(run: dict) -> dict[int, str]:
    """Slider ticks: start, the pruning phase boundaries, the last step."""
    total = run.get("total_steps") or run.get("step") or 0
    marks = {0: "0"}
    phase = phase_of(run)
    if phase:
        marks[round(phase[0])] = "pruning starts"
        marks[round(phase[1])] = "mask frozen"
    if total:
        marks[int(total)] = str(total)
    return marks


def module_options(modules: list[dict]) -> list[dict]:
    """Importance selector: each layer as a whole, then each module by name."""
    layers = sorted({m["layer"] for m in modules if m.get("layer") is not None})
    options = [
        {"label": f"layer {layer}: all modules", "value": f"layer:{layer}"} for layer in layers
    ]
    options += [{"label": m["name"], "value": f"module:{m['name']}"} for m in modules]
    return options


def parse_selection(value: str | None) -> dict[str, Any]:
    """'layer:3' -> {'layer': 3}; 'module:<name>' -> {'module': name}."""
    if not value:
        return {}
    kind, _, rest = value.partition(":")
    if kind == "layer" and rest.lstrip("-").isdigit():
        return {"layer": int(rest)}
    if kind == "module" and rest:
        return {"module": rest}
    return {}


def summary_items(run: dict) -> list[tuple[str, str]]:
    """(label, value) pairs under the title: method, data, budget, params, best metric."""
    config = run.get("config") or {}
    items = [
        ("method", ui.method_label(run.get("method"))),
        ("model", run.get("model") or "–"),
        ("dataset", run.get("dataset") or "–"),
    ]
    if run.get("method") in ("dora", "adalora"):
        items.append(
            (
                "b(T) / r'",
                f"{run.get('target_rank') or config.get('target_rank', '–')} / {run.get('init_rank') or '–'}",
            )
        )
    elif run.get("method") == "lora":
        items.append(("rank", str(run.get("target_rank") or config.get("target_rank", "–"))))
    budget = run.get("budget")
    if budget and run.get("num_modules"):
        items.append(("live avg rank", f"{budget['live'] / run['num_modules']:.2f}"))
    params = run.get("params") or {}
    if params.get("adapter") is not None:
        items.append(("adapter params", ui.fmt_count(params["adapter"])))
    best = ui.best_metric(run)
    if best:
        items.append((f"best {best[0]}", f"{best[1]:.4f}"))
    items.append(("created", ui.fmt_time(run.get("created_at"))))
    return items


def status_line(run: dict) -> html.Div:
    return html.Div(
        [
            ui.status_badge(run.get("status", "?"), run.get("queue_position")),
            ui.progress_bar(run.get("step"), run.get("total_steps")),
            html.Div(
                [
                    html.Div(
                        [html.Span(label, className="k"), html.Span(value, className="v")],
                        className="kv",
                    )
                    for label, value in summary_items(run)
                ],
                className="summary",
            ),
        ],
        className="status-line",
    )


def failure_box(run: dict, log_lines: list[str]) -> html.Div | None:
    """Why a run failed: its error line, exit status and the worker's last log lines."""
    if run.get("status") != "failed":
        return None
    exit_code = run.get("exit_code")
    title = run.get("error") or "The run failed without an error line."
    parts: list[Any] = [html.P(title, className="state-title")]
    if exit_code is not None:
        parts.append(html.P(f"Worker exit status {exit_code}."))
    if log_lines:
        parts.append(
            html.Details(
                [html.Summary("Last log lines"), html.Pre("\n".join(log_lines), className="log")],
                open=True,
            )
        )
    return html.Div(parts, className="state state-error", role="alert")


# --- layout -----------------------------------------------------------------


def not_found(run_id: int, err: ApiError) -> html.Div:
    if err.status == 404:
        return ui.empty_state(
            f"Run {run_id} does not exist.",
            "It may have been deleted.",
            dcc.Link("Back to all runs", href="/"),
        )
    return ui.api_error_state(err)


def layout(client: ApiClient, run_id: int) -> html.Div:
    try:
        run = client.run(run_id)
    except ApiError as err:
        return not_found(run_id, err)
    try:
        modules = client.modules(run_id)
    except ApiError:
        modules = []
    options = module_options(modules)
    latest = run.get("step")
    return html.Div(
        [
            html.Div(
                [
                    html.Div(
                        [
                            html.Div(dcc.Link("← all runs", href="/"), className="crumb"),
                            html.H2(
                                [
                                    html.Span(f"#{run_id} "),
                                    html.Span(run.get("name") or "", id="run-name"),
                                ]
                            ),
                        ]
                    ),
                    html.Div(
                        [
                            dcc.Link(
                                "Compare…",
                                href=f"/compare?runs={run_id}",
                                className="btn btn-secondary",
                            ),
                            html.A(
                                "Download adapter",
                                id="run-download",
                                href=f"/download/runs/{run_id}/adapter.zip",
                                className="btn btn-secondary",
                                style={} if run.get("has_adapter") else {"display": "none"},
                            ),
                            html.Button(
                                "Cancel run",
                                id="run-cancel",
                                className="btn btn-danger-outline",
                                style={} if ui.is_live(run) else {"display": "none"},
                            ),
                        ],
                        className="actions",
                    ),
                ],
                className="page-head",
            ),
            html.Div(status_line(run), id="run-status"),
            html.Div(id="run-banner", role="status"),
            html.Div(id="run-message", role="status"),
            html.Div(failure_box(run, []), id="run-failure"),
            html.Div(
                [
                    ui.card(
                        "Rank distribution",
                        html.Div(
                            [
                                html.Button(
                                    "▶ Replay",
                                    id="run-play-button",
                                    className="btn btn-small btn-secondary",
                                ),
                                html.Div(
                                    dcc.Slider(
                                        id="run-step",
                                        min=0,
                                        max=max(run.get("total_steps") or 0, latest or 0, 1),
                                        step=1,
                                        value=latest or 0,
                                        marks=slider_marks(run),
                                        updatemode="mouseup",
                                        allow_direct_input=True,
                                    ),
                                    className="slider",
                                ),
                            ],
                            className="replay",
                        ),
                        html.Div(id="run-step-label", className="muted small"),
                        ui.graph("run-heatmap", figures.empty_figure("Loading…")),
                    ),
                    ui.card("Budget", ui.graph("run-budget", figures.empty_figure("Loading…"))),
                ],
                className="grid-2",
            ),
            ui.card(
                "Component importance",
                dcc.Dropdown(
                    id="run-module",
                    options=options,
                    value=options[0]["value"] if options else None,
                    clearable=False,
                    placeholder="Layer or module (available once the worker registers them)",
                    className="module-dropdown",
                ),
                ui.graph("run-importance", figures.empty_figure("Loading…")),
            ),
            html.Div(
                [
                    ui.card(title, ui.graph(f"run-{group}", figures.empty_figure("Loading…")))
                    for group, title, *_ in SCALAR_PLOTS
                ],
                className="grid-3",
            ),
            ui.card("Events", html.Div(id="run-events")),
            dcc.Store(id="run-state", data=run),
            dcc.Store(id="run-modules", data=modules),
            dcc.Store(id="run-latest", data=latest),
            dcc.Store(id="run-budget-cursor", data=None),
            dcc.Store(id="run-scalars-cursor", data=None),
            dcc.Store(id="run-scores-cursor", data=None),
            dcc.Interval(id="run-tick", interval=POLL_MS, disabled=not ui.is_live(run)),
            dcc.Interval(id="run-play", interval=PLAY_MS, disabled=True),
        ]
    )


def events_table(events: list[dict]) -> html.Div:
    """Events newest first (pruning, evaluations, checkpoints, status), as text."""
    if not events:
        return ui.empty_state(
            "No events yet.",
            "Pruning steps, evaluations and checkpoints are listed as they happen.",
        )
    rows = [
        html.Tr(
            [
                html.Td(str(event.get("step", "")), className="num"),
                html.Td(str(event.get("kind", "")).replace("_", " ")),
                html.Td(event.get("message") or ""),
            ]
        )
        for event in reversed(events)
    ]
    head = html.Thead(html.Tr([html.Th("step"), html.Th("event"), html.Th("message")]))
    return html.Div(html.Table([head, html.Tbody(rows)], className="table"), className="events")


# --- callbacks as plain functions (client first; registered below) ------------


def poll(client: ApiClient, state: dict) -> tuple[Any, bool, Any]:
    """(new run or no_update, tick disabled, banner). Stops once the run has
    ended and no step arrived since the last poll (late telemetry still lands)."""
    try:
        run = client.run(state["id"])
    except ApiError as err:
        return no_update, False, ui.api_error_state(err)
    disabled = not ui.is_live(run) and run.get("step") == state.get("step")
    return (no_update if run == state else run), disabled, None


def header(client: ApiClient, run: dict) -> tuple[Any, dict, dict, Any]:
    """Status line, cancel and download visibility, failure box."""
    log_lines: list[str] = []
    if run.get("status") == "failed":
        try:
            log_lines = client.job_log(run["id"], tail=LOG_TAIL)
        except ApiError:
            log_lines = []
    return (
        status_line(run),
        {} if ui.is_live(run) else {"display": "none"},
        {} if run.get("has_adapter") else {"display": "none"},
        failure_box(run, log_lines),
    )


def follow_slider(run: dict, value: int | None, old_latest: int | None) -> tuple[Any, ...]:
    """Slider range and position after a poll: (max, marks, value, latest)."""
    latest = run.get("step")
    top = max(run.get("total_steps") or 0, latest or 0, 1)
    new_value = live.slider_follow(value, old_latest, latest)
    return top, slider_marks(run), (no_update if new_value == value else new_value), latest


def heatmap(
    client: ApiClient,
    run: dict,
    step: int | None,
    latest: int | None,
    modules: list[dict] | None = None,
) -> tuple[Any, str]:
    """The rank heatmap at the slider's step (the nearest recorded one at or before
    it), and a line saying which step it is and what the adapter costs there."""
    if run.get("method") == "full":
        return figures.empty_figure(FULL_MESSAGE), ""
    try:
        matrix = client.rank_matrix(run["id"], step=step)
    except ApiError as err:
        if err.status == 404:
            return figures.empty_figure("No rank data yet: the run has not reported scores."), ""
        return figures.empty_figure(err.message), ""
    fig = figures.rank_heatmap(matrix, r_max=run.get("init_rank"))
    shown = matrix.get("step")
    if shown is None:
        return fig, ""
    where = "the latest" if latest is None or shown >= latest else f"latest is {latest}"
    label = f"Showing step {shown} ({where}). Colour scale 0…r' = {run.get('init_rank') or '?'}."
    live = live_adapter_params(run.get("method"), modules or [], matrix)
    if live is not None:
        start = (run.get("params") or {}).get("adapter")
        of = f" of {ui.fmt_count(start)} at r'" if start else ""
        label += f" Live adapter parameters: {ui.fmt_count(live)}{of}."
    return fig, label


def events(client: ApiClient, run: dict) -> Any:
    """The events card, refetched (a bounded page) whenever the polled run changed."""
    try:
        return events_table(client.events(run["id"], limit=EVENT_ROWS))
    except ApiError as err:
        return ui.api_error_state(err)


def budget(client: ApiClient, run: dict, cursor: int | None) -> tuple[Any, Any]:
    """Full budget figure the first time, then Patches with the new points."""
    try:
        data = client.budget(run["id"], since_step=cursor)
    except ApiError as err:
        return (
            (figures.empty_figure(err.message), None) if cursor is None else (no_update, no_update)
        )
    if cursor is None:
        if not data.get("steps"):
            message = (
                "No budget yet: it is reported from the first step."
                if run.get("method") in ("dora", "adalora")
                else f"{ui.method_label(run.get('method'))} keeps a fixed rank: no budget schedule."
            )
            return figures.empty_figure(message), None
        fig = figures.budget_figure(
            data, run.get("num_modules"), run.get("total_steps"), phase_of(run)
        )
        return fig, data["steps"][-1]
    delta = live.new_budget(data, cursor)
    if not delta["steps"]:
        return no_update, no_update
    return live.budget_patch(delta, run.get("num_modules")), delta["steps"][-1]


def scalars(client: ApiClient, run: dict, cursor: dict | None) -> tuple[Any, Any, Any, Any]:
    """Three curve figures (loss, metrics, optimiser) and the new cursor.

    The cursor holds the keys drawn and each key's last step; a new key (the
    first eval) redraws everything, otherwise only new points are appended.
    """
    keep = (no_update,) * 4
    try:
        keys = client.scalar_keys(run["id"])
    except ApiError as err:
        return (
            (*(figures.empty_figure(err.message) for _ in SCALAR_PLOTS), None)
            if cursor is None
            else keep
        )
    groups = figures.group_scalar_keys(keys)
    if cursor is None or cursor.get("keys") != keys:
        try:
            series = client.scalars(run["id"], keys, max_points=MAX_SCALAR_POINTS)
        except ApiError as err:
            return (*(figures.empty_figure(err.message) for _ in SCALAR_PLOTS), None)
        figs = [
            figures.curves_figure(series, groups[group], None, y_title, empty, RIGHT_AXIS)
            for group, _title, y_title, empty in SCALAR_PLOTS
        ]
        last = {k: s["steps"][-1] for k, s in series.items() if s["steps"]}
        drawn = {group: [k for k in groups[group] if k in series] for group, *_ in SCALAR_PLOTS}
        return (*figs, {"keys": keys, "last": last, "drawn": drawn})
    last = cursor.get("last") or {}
    since = min(last.values()) if last else None
    try:
        series = client.scalars(run["id"], keys, max_points=MAX_SCALAR_POINTS, since_step=since)
    except ApiError:
        return keep
    delta = live.new_series(series, last)
    if not delta:
        return keep
    if any(
        k not in cursor["drawn"].get(g, [])
        for g, *_ in SCALAR_PLOTS
        for k in groups[g]
        if k in delta
    ):
        # a key that had no points when the figure was drawn: redraw from scratch
        return scalars(client, run, None)
    patches = [
        live.curves_patch(delta, cursor["drawn"].get(group, [])) for group, *_ in SCALAR_PLOTS
    ]
    new_last = {**last, **{k: s["steps"][-1] for k, s in delta.items()}}
    return (*(p if p is not None else no_update for p in patches), {**cursor, "last": new_last})


def importance(
    client: ApiClient, run: dict, selection: str | None, cursor: dict | None
) -> tuple[Any, Any]:
    """Component-importance heatmap for the chosen layer/module; appended to live."""
    query = parse_selection(selection)
    if run.get("method") == "full":
        return figures.empty_figure(FULL_MESSAGE), None
    if not query:
        waiting = "No modules yet: they appear once the worker has built the model."
        pick = "Pick a layer or module above."
        return figures.empty_figure(pick if run.get("num_modules") else waiting), None
    fresh = cursor is None or cursor.get("selection") != selection or cursor.get("step") is None
    since = None if fresh else cursor["step"]
    try:
        data = client.scores(run["id"], max_points=MAX_SCORE_POINTS, since_step=since, **query)
    except ApiError as err:
        return (figures.empty_figure(err.message), None) if fresh else (no_update, no_update)
    title = f"Layer {query['layer']}" if "layer" in query else query["module"]
    if fresh:
        fig = figures.importance_heatmap(data, title=title)
        step = data["steps"][-1] if data.get("steps") else None
        return fig, {"selection": selection, "step": step}
    delta = live.new_scores(data, since)
    if not delta["steps"]:
        return no_update, no_update
    return live.importance_patch(delta), {"selection": selection, "step": delta["steps"][-1]}


def module_choices(
    client: ApiClient, run: dict, options: list[dict] | None
) -> tuple[Any, Any, Any]:
    """Fill the layer/module selector (and the module list) once the worker has
    registered its modules."""
    if options or not run.get("num_modules"):
        return no_update, no_update, no_update
    try:
        modules = client.modules(run["id"])
    except ApiError:
        return no_update, no_update, no_update
    new = module_options(modules)
    return new, (new[0]["value"] if new else None), modules


def cancel(client: ApiClient, run: dict) -> tuple[Any, Any]:
    try:
        updated = client.cancel_job(run["id"])
    except ApiError as err:
        return no_update, ui.error_state(f"Could not cancel: {err.message}")
    return updated, html.P("Cancel requested: the worker checkpoints and stops.", className="note")


def play_toggle(playing: bool, value: int | None, latest: int | None) -> tuple[bool, str, Any]:
    """Start/stop the replay: (interval disabled, button label, slider value)."""
    if playing:
        return True, "▶ Replay", no_update
    at_end = latest is None or value is None or value >= latest
    return False, "❚❚ Pause", (0 if at_end else no_update)


def play_step(value: int | None, latest: int | None) -> tuple[Any, bool, str]:
    """One replay frame: (slider value, interval disabled, button label)."""
    end = latest or 0
    nxt = live.replay_next(value, 0, end)
    done = nxt >= end
    return nxt, done, ("▶ Replay" if done else "❚❚ Pause")


def download_route(client: ApiClient, run_id: int) -> Response:
    """Serve the adapter zip through the dashboard, so a browser never needs
    to reach the API's address (in compose it is an internal host name)."""
    try:
        body = client.adapter_zip(run_id)
    except ApiError as err:
        return Response(err.message, status=err.status or 502, mimetype="text/plain")
    return Response(
        body,
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}-adapter.zip"'},
    )


# --- wiring -------------------------------------------------------------------


def register(app: Dash, client: ApiClient) -> None:
    server: Flask = app.server
    server.add_url_rule(
        "/download/runs/<int:run_id>/adapter.zip",
        "adapter_zip",
        lambda run_id: download_route(client, run_id),
    )

    @app.callback(
        Output("run-state", "data"),
        Output("run-tick", "disabled"),
        Output("run-banner", "children"),
        Input("run-tick", "n_intervals"),
        State("run-state", "data"),
        prevent_initial_call=True,
    )
    def _poll(_n, state):
        return poll(client, state)

    @app.callback(Output("run-events", "children"), Input("run-state", "data"))
    def _events(run):
        return events(client, run)

    @app.callback(
        Output("run-status", "children"),
        Output("run-cancel", "style"),
        Output("run-download", "style"),
        Output("run-failure", "children"),
        Input("run-state", "data"),
    )
    def _header(run):
        return header(client, run)

    @app.callback(
        Output("run-step", "max"),
        Output("run-step", "marks"),
        Output("run-step", "value"),
        Output("run-latest", "data"),
        Input("run-state", "data"),
        State("run-step", "value"),
        State("run-latest", "data"),
        prevent_initial_call=True,
    )
    def _slider(run, value, old_latest):
        return follow_slider(run, value, old_latest)

    @app.callback(
        Output("run-heatmap", "figure"),
        Output("run-step-label", "children"),
        Input("run-step", "value"),
        State("run-state", "data"),
        State("run-latest", "data"),
        State("run-modules", "data"),
    )
    def _heatmap(step, run, latest, modules):
        return heatmap(client, run, step, latest, modules)

    @app.callback(
        Output("run-budget", "figure"),
        Output("run-budget-cursor", "data"),
        Input("run-state", "data"),
        State("run-budget-cursor", "data"),
    )
    def _budget(run, cursor):
        return budget(client, run, cursor)

    @app.callback(
        *[Output(f"run-{group}", "figure") for group, *_ in SCALAR_PLOTS],
        Output("run-scalars-cursor", "data"),
        Input("run-state", "data"),
        State("run-scalars-cursor", "data"),
    )
    def _scalars(run, cursor):
        return scalars(client, run, cursor)

    @app.callback(
        Output("run-module", "options"),
        Output("run-module", "value"),
        Output("run-modules", "data"),
        Input("run-state", "data"),
        State("run-module", "options"),
        prevent_initial_call=True,
    )
    def _modules(run, options):
        return module_choices(client, run, options)

    @app.callback(
        Output("run-importance", "figure"),
        Output("run-scores-cursor", "data"),
        Input("run-module", "value"),
        Input("run-state", "data"),
        State("run-scores-cursor", "data"),
    )
    def _importance(selection, run, cursor):
        if ctx.triggered_id == "run-module":
            cursor = None
        return importance(client, run, selection, cursor)

    @app.callback(
        Output("run-state", "data", allow_duplicate=True),
        Output("run-message", "children", allow_duplicate=True),
        Input("run-cancel", "n_clicks"),
        State("run-state", "data"),
        prevent_initial_call=True,
    )
    def _cancel(n_clicks, run):
        if not n_clicks:  # drawn, not clicked
            return no_update, no_update
        return cancel(client, run)

    @app.callback(
        Output("run-play", "disabled"),
        Output("run-play-button", "children"),
        Output("run-step", "value", allow_duplicate=True),
        Input("run-play-button", "n_clicks"),
        State("run-play", "disabled"),
        State("run-step", "value"),
        State("run-latest", "data"),
        prevent_initial_call=True,
    )
    def _play_toggle(n_clicks, disabled, value, latest):
        if not n_clicks:
            return no_update, no_update, no_update
        return play_toggle(not disabled, value, latest)

    @app.callback(
        Output("run-step", "value", allow_duplicate=True),
        Output("run-play", "disabled", allow_duplicate=True),
        Output("run-play-button", "children", allow_duplicate=True),
        Input("run-play", "n_intervals"),
        State("run-step", "value"),
        State("run-latest", "data"),
        prevent_initial_call=True,
    )
    def _play(_n, value, latest):
        return play_step(value, latest)
