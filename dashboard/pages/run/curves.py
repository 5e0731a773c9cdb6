"""Loss and metric curve cards: loss, dev metrics and optimiser scalars, one
figure each; a key's new points are appended, a new key redraws all three."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboard import components as ui
from dashboard import figures, live
from dashboard.api import ApiClient, ApiError

MAX_SCALAR_POINTS = 1000
# (scalar group, card title, y axis, empty message): the curve cards
SCALAR_PLOTS = (
    ("loss", "Loss", "loss", "No loss reported yet."),
    ("metrics", "Dev metrics", "", "No evaluation yet: metrics appear at each eval step."),
    ("optimizer", "Optimiser", "gradient norm", "No optimiser scalars yet."),
)
# on another scale than the others of their plot: drawn on their own axis on the right
# (dem and lr are small next to gradient norms; perplexity is large next to ROUGE's 0..1)
RIGHT_AXIS = ("dem", "lr", "eval/perplexity")


def cards() -> html.Div:
    return html.Div(
        [
            ui.card(title, ui.graph(f"run-{group}", figures.empty_figure("Loading…")))
            for group, title, *_ in SCALAR_PLOTS
        ],
        className="grid-3",
    )


def stores() -> list[Any]:
    """The keys drawn and each key's last step (None: draw the figures whole)."""
    return [dcc.Store(id="run-scalars-cursor", data=None)]


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


def register(app: Dash, client: ApiClient) -> None:
    @app.callback(
        *[Output(f"run-{group}", "figure") for group, *_ in SCALAR_PLOTS],
        Output("run-scalars-cursor", "data"),
        Input("run-state", "data"),
        State("run-scalars-cursor", "data"),
    )
    def _scalars(run, cursor):
        return scalars(client, run, cursor)
