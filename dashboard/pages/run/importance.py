"""Component importance card: each component's smoothed score per step for a
chosen layer or module, pruned components marked; appended to while live.

The card also keeps the run's module list (``run-modules``), filled once the
worker has registered its modules; the rank card reads it to count live
adapter parameters.
"""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, ctx, dcc, no_update

from dashboard import components as ui
from dashboard import figures, live
from dashboard.api import ApiClient, ApiError, Method
from dashboard.pages.run.common import FULL_MESSAGE, has_ranks, method_of

MAX_SCORE_POINTS = 400


def module_options(modules: list[dict]) -> list[dict]:
    """Importance selector: each layer as a whole (named as the heatmap's rows are: "decoder 0"
    in an encoder-decoder), then each module by name."""
    layers = sorted({m["layer"] for m in modules if m.get("layer") is not None})
    names = [[m["name"] for m in modules if m.get("layer") == layer] for layer in layers]
    labels = figures.layer_labels({"layers": layers, "modules": names})
    options = [
        {"label": f"{labels[layer]}: all modules", "value": f"layer:{layer}"} for layer in layers
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


# --- layout -----------------------------------------------------------------


def card(modules: list[dict]) -> Any:
    options = module_options(modules)
    return ui.card(
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
    )


def modules_store(modules: list[dict]) -> dcc.Store:
    """The run's adapted modules (names, layers, shapes)."""
    return dcc.Store(id="run-modules", data=modules)


def stores() -> list[Any]:
    """The selection drawn and its last step (None: draw the figure whole)."""
    return [dcc.Store(id="run-scores-cursor", data=None)]


# --- callbacks as plain functions (client first; registered below) ------------


def importance(
    client: ApiClient,
    run: dict,
    selection: str | None,
    cursor: dict | None,
    *,
    method: Method | None,
) -> tuple[Any, Any]:
    """Component-importance heatmap for the chosen layer/module; appended to live."""
    query = parse_selection(selection)
    if not has_ranks(method):
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


# --- wiring -------------------------------------------------------------------


def register(app: Dash, client: ApiClient) -> None:
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
        return importance(client, run, selection, cursor, method=method_of(client, run))
