"""Events card: pruning steps, evaluations, checkpoints and status changes,
newest first, refetched (a bounded page) whenever the polled run changed."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, html

from dashboard import components as ui
from dashboard.api import ApiClient, ApiError

EVENT_ROWS = 50  # the events card lists the latest this many


def card() -> html.Div:
    return ui.card("Events", html.Div(id="run-events"))


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


def events(client: ApiClient, run: dict) -> Any:
    """The events card's content for the polled run."""
    try:
        return events_table(client.events(run["id"], limit=EVENT_ROWS))
    except ApiError as err:
        return ui.api_error_state(err)


def register(app: Dash, client: ApiClient) -> None:
    @app.callback(Output("run-events", "children"), Input("run-state", "data"))
    def _events(run):
        return events(client, run)
