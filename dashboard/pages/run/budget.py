"""Budget card: the target and live component counts per step (as average rank),
with the pruning phase shaded; new points are appended while the run is live."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, no_update

from dashboard import components as ui
from dashboard import figures, live
from dashboard.api import ApiClient, ApiError, Method
from dashboard.pages.run.common import has_ranks, method_of, phase_of, prunes, target_rank


def card() -> Any:
    return ui.card("Budget", ui.graph("run-budget", figures.empty_figure("Loading…")))


def stores() -> list[Any]:
    """The last budget step drawn (None: draw the whole figure)."""
    return [dcc.Store(id="run-budget-cursor", data=None)]


def budget(
    client: ApiClient, run: dict, cursor: int | None, *, method: Method | None
) -> tuple[Any, Any]:
    """Full budget figure the first time, then Patches with the new points; a method that
    does not prune has no schedule to draw (its constant count would be a bare line)."""
    if not prunes(method):
        return figures.empty_figure(fixed_budget_message(run, method)), None
    try:
        data = client.budget(run["id"], since_step=cursor)
    except ApiError as err:
        return (
            (figures.empty_figure(err.message), None) if cursor is None else (no_update, no_update)
        )
    if cursor is None:
        if not data.get("steps"):
            return figures.empty_figure("No budget yet: it is reported from the first step."), None
        fig = figures.budget_figure(
            data, run.get("num_modules"), run.get("total_steps"), phase_of(run, method=method)
        )
        return fig, data["steps"][-1]
    delta = live.new_budget(data, cursor)
    if not delta["steps"]:
        return no_update, no_update
    return live.budget_patch(delta, run.get("num_modules")), delta["steps"][-1]


def fixed_budget_message(run: dict, method: Method | None) -> str:
    """What the card says instead of a figure for a method that does not prune."""
    if not has_ranks(method):
        return "Full fine-tuning has no rank budget."
    # short enough for a half-width card: plotly does not wrap an annotation
    return f"{ui.method_label(run.get('method'))} keeps rank {target_rank(run)} in every layer."


def register(app: Dash, client: ApiClient) -> None:
    @app.callback(
        Output("run-budget", "figure"),
        Output("run-budget-cursor", "data"),
        Input("run-state", "data"),
        State("run-budget-cursor", "data"),
    )
    def _budget(run, cursor):
        return budget(client, run, cursor, method=method_of(client, run))
