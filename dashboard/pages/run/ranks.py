"""Rank distribution card: the live rank heatmap at the step slider's step,
the slider that follows the live end, and the replay through the run's steps."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboard import components as ui
from dashboard import figures, live
from dashboard.api import ApiClient, ApiError, Method
from dashboard.downloads import ranks_href
from dashboard.pages.run.common import FULL_MESSAGE, has_ranks, method_of, phase_of
from dashboard.params import live_adapter_params

PLAY_MS = 600


def slider_marks(run: dict, *, method: Method | None) -> dict[int, str]:
    """Slider ticks: start, the pruning phase boundaries, the last step."""
    total = run.get("total_steps") or run.get("step") or 0
    marks = {0: "0"}
    phase = phase_of(run, method=method)
    if phase:
        marks[round(phase[0])] = "pruning starts"
        marks[round(phase[1])] = "mask frozen"
    if total:
        marks[int(total)] = str(total)
    return marks


# --- layout -----------------------------------------------------------------


def card(run: dict, *, method: Method | None) -> html.Div:
    latest = run.get("step")
    return ui.card(
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
                        marks=slider_marks(run, method=method),
                        updatemode="mouseup",
                        allow_direct_input=True,
                    ),
                    className="slider",
                ),
            ],
            className="replay",
        ),
        html.Div(
            [
                html.Span(id="run-step-label", className="muted small"),
                html.A(
                    "CSV",
                    id="run-rank-csv",
                    href=ranks_href(run["id"], latest),
                    className="btn btn-small btn-secondary",
                    title="This step's live components per module, as CSV (PNG: the camera above the plot)",
                ),
            ],
            className="step-line",
        ),
        ui.graph("run-heatmap", figures.empty_figure("Loading…")),
    )


def stores(run: dict) -> list[Any]:
    """The latest step seen (where the slider's live end is) and the replay's timer."""
    return [
        dcc.Store(id="run-latest", data=run.get("step")),
        dcc.Interval(id="run-play", interval=PLAY_MS, disabled=True),
    ]


# --- callbacks as plain functions (client first; registered below) ------------


def follow_slider(
    run: dict, value: int | None, old_latest: int | None, *, method: Method | None
) -> tuple[Any, ...]:
    """Slider range and position after a poll: (max, marks, value, latest)."""
    latest = run.get("step")
    top = max(run.get("total_steps") or 0, latest or 0, 1)
    new_value = live.slider_follow(value, old_latest, latest)
    marks = slider_marks(run, method=method)
    return top, marks, (no_update if new_value == value else new_value), latest


def heatmap(
    client: ApiClient,
    run: dict,
    step: int | None,
    latest: int | None,
    modules: list[dict] | None = None,
    *,
    method: Method | None,
) -> tuple[Any, str]:
    """The rank heatmap at the slider's step (the nearest recorded one at or before
    it), and a line saying which step it is and what the adapter costs there."""
    if not has_ranks(method):
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
    if latest is None or shown >= latest:
        where = "the latest"
    elif step is None or step >= latest:  # the slider is at the end; scores are older
        where = f"the last scored; the run is at step {latest}"
    else:
        where = f"latest is {latest}"
    label = f"Showing step {shown} ({where}). Colour scale 0…r' = {run.get('init_rank') or '?'}."
    count = live_adapter_params(run.get("method"), modules or [], matrix)
    if count is not None:
        start = (run.get("params") or {}).get("adapter")
        of = f" of {ui.fmt_count(start)} at r'" if start else ""
        label += f" Live adapter parameters: {ui.fmt_count(count)}{of}."
    return fig, label


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


# --- wiring -------------------------------------------------------------------


def register(app: Dash, client: ApiClient) -> None:
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
        return follow_slider(run, value, old_latest, method=method_of(client, run))

    @app.callback(
        Output("run-heatmap", "figure"),
        Output("run-step-label", "children"),
        Output("run-rank-csv", "href"),
        Input("run-step", "value"),
        State("run-state", "data"),
        State("run-latest", "data"),
        State("run-modules", "data"),
    )
    def _heatmap(step, run, latest, modules):
        figure, label = heatmap(client, run, step, latest, modules, method=method_of(client, run))
        return figure, label, ranks_href(run["id"], step) if run else no_update

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
