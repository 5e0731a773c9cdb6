"""Samples card (generative runs): the dev examples the worker generated at an evaluation,
prompt / reference / prediction side by side, the latest generating evaluation by default
and any earlier one from the step selector.

Every text is a model's output or a user's data, so it only ever goes into component
children as a string (React escapes it): never Markdown, never raw HTML. A long prompt
shows its start, and the whole of it opens below (``html.Details``). The card is hidden
for classification runs. It follows the live run cheaply: on each refresh it asks only
whether a newer ``samples`` event exists, and reads the samples when one does.
"""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboard import components as ui
from dashboard.api import ApiClient, ApiError

PROMPT_CHARS = 160  # a longer prompt is shown cut here, the full text one click away
HIDDEN = {"display": "none"}
NO_SAMPLES = (
    "No samples yet.",
    "A generative run generates dev samples at its generating evaluations "
    "(every generate_every steps, and at the end); they appear here.",
)


# --- layout -----------------------------------------------------------------


def card(run: dict) -> html.Div:
    """The card, hidden unless the run is generative."""
    return html.Div(
        ui.card(
            "Samples",
            html.Div(
                [
                    html.Span("Generated at", className="muted small"),
                    dcc.Dropdown(
                        id="run-samples-step",
                        options=[],
                        value=None,
                        clearable=False,
                        searchable=False,
                        className="samples-step",
                    ),
                ],
                id="run-samples-picker",
                className="samples-picker",
                style=HIDDEN,
            ),
            html.Div(id="run-samples"),
            class_name="samples-card",
        ),
        id="run-samples-card",
        style={} if ui.is_generative(run) else HIDDEN,
    )


def stores() -> list[Any]:
    """The latest step with samples seen so far (None: not looked yet)."""
    return [dcc.Store(id="run-samples-cursor", data=None)]


def _text(text: str, class_name: str = "sample-text") -> html.Div:
    return html.Div(text, className=class_name)


def prompt_cell(prompt: str) -> Any:
    """The prompt, cut to PROMPT_CHARS with the whole text below when it is longer."""
    if len(prompt) <= PROMPT_CHARS:
        return _text(prompt)
    return html.Details(
        [html.Summary(prompt[: PROMPT_CHARS - 1] + "…"), _text(prompt)],
        className="sample-prompt",
    )


def samples_table(answer: dict) -> Any:
    """One evaluation's samples as a table of text; an empty state without any."""
    rows = answer.get("samples") or []
    if not rows:
        return ui.empty_state(*NO_SAMPLES)
    head = html.Thead(
        html.Tr([html.Th("#"), html.Th("Prompt"), html.Th("Reference"), html.Th("Prediction")])
    )
    body = html.Tbody(
        [
            html.Tr(
                [
                    html.Td(str(i), className="num"),
                    html.Td(prompt_cell(row.get("prompt") or "")),
                    html.Td(_text(row.get("reference") or "")),
                    html.Td(_text(row.get("prediction") or "", "sample-text prediction")),
                ]
            )
            for i, row in enumerate(rows, start=1)
        ]
    )
    caption = f"Step {answer.get('step')}: {len(rows)} dev samples, greedy."
    return html.Div(
        [html.P(caption, className="muted small"), html.Table([head, body], className="table")],
        className="samples",
    )


# --- callbacks as plain functions (client first; registered below) ------------


def step_options(steps: list[int]) -> list[dict]:
    return [
        {"label": f"step {s}" + (" (latest)" if i == len(steps) - 1 else ""), "value": s}
        for i, s in enumerate(steps)
    ]


def follow(
    client: ApiClient, run: dict, value: int | None, cursor: dict | None
) -> tuple[Any, Any, Any, Any, Any]:
    """(card style, picker style, step options, chosen step, cursor) after a refresh.

    The chosen step follows the latest samples if it was there (or unset); a person
    reading an earlier step stays on it. Nothing is sent while no newer samples exist.
    """
    keep = (no_update,) * 5
    if not ui.is_generative(run):
        return HIDDEN, no_update, no_update, no_update, no_update
    if cursor is not None:
        try:
            newer = client.events(run["id"], kind="samples", since_step=cursor["latest"], limit=1)
        except ApiError:
            return keep
        if not newer:
            return keep
    try:
        answer = client.samples(run["id"])
    except ApiError:
        return {}, no_update, no_update, no_update, cursor
    steps, latest = answer.get("steps") or [], answer.get("step")
    if latest is None:
        return {}, HIDDEN, [], no_update, {"latest": None}
    old = (cursor or {}).get("latest")
    chosen = latest if value is None or value == old or value not in steps else value
    return (
        {},
        {} if len(steps) > 1 else HIDDEN,
        step_options(steps),
        chosen if chosen != value else no_update,
        {"latest": latest},
    )


def table(client: ApiClient, run: dict, step: int | None) -> Any:
    """The samples of the chosen step (none chosen: the run has none yet)."""
    if not ui.is_generative(run):
        return None
    if step is None:
        return ui.empty_state(*NO_SAMPLES)
    try:
        return samples_table(client.samples(run["id"], step=step))
    except ApiError as err:
        return ui.api_error_state(err)


# --- wiring -------------------------------------------------------------------


def register(app: Dash, client: ApiClient) -> None:
    @app.callback(
        Output("run-samples-card", "style"),
        Output("run-samples-picker", "style"),
        Output("run-samples-step", "options"),
        Output("run-samples-step", "value"),
        Output("run-samples-cursor", "data"),
        Input("run-state", "data"),
        State("run-samples-step", "value"),
        State("run-samples-cursor", "data"),
    )
    def _follow(run, value, cursor):
        return follow(client, run, value, cursor)

    @app.callback(
        Output("run-samples", "children"),
        Input("run-samples-step", "value"),
        State("run-state", "data"),
    )
    def _table(step, run):
        return table(client, run, step)
