"""Run page (``/runs/<id>``): status, live rank heatmap with replay, budget,
component importance, loss and metric curves, events, cancel and adapter download.

One module per card, each with its layout fragment and its own callbacks:
``shell`` (title, actions, status line, failure box, the poll), ``ranks``
(rank heatmap, step slider, replay), ``budget``, ``importance``, ``curves``
(loss, metrics, optimiser), ``samples`` (generative runs: generated dev samples),
``events`` and ``config`` (the job config, Clone job). One refresh (``GET /api/runs/<id>``),
per notice from the run's event stream or per poll tick without one, drives
everything: when the run changed, each card fetches only what is new
(``since_step``) and appends it to its figure with a Patch. The refresh
stops once the run has ended and its last step has been drawn.
"""

from __future__ import annotations

from dash import Dash, html

from dashboard.api import ApiClient, ApiError
from dashboard.pages.run import (
    budget,
    config,
    curves,
    events,
    importance,
    ranks,
    samples,
    shell,
)
from dashboard.pages.run.common import method_of
from dashboard.settings import DEFAULT_POLL_MS

__all__ = [
    "budget",
    "config",
    "curves",
    "events",
    "importance",
    "layout",
    "ranks",
    "register",
    "samples",
    "shell",
]


def layout(
    client: ApiClient, run_id: int, poll_ms: int = DEFAULT_POLL_MS, live: str = "stream"
) -> html.Div:
    try:
        run = client.run(run_id)
    except ApiError as err:
        return shell.not_found(run_id, err)
    try:
        modules = client.modules(run_id)
    except ApiError:
        modules = []
    method = method_of(client, run)
    return html.Div(
        [
            *shell.head(run, method=method),
            html.Div([ranks.card(run, method=method), budget.card()], className="grid-2"),
            importance.card(modules),
            curves.cards(),
            samples.card(run),
            events.card(),
            config.card(run),
            shell.state_store(run),
            importance.modules_store(modules),
            *ranks.stores(run),
            *budget.stores(),
            *curves.stores(),
            *importance.stores(),
            *samples.stores(),
            shell.poll_timer(run, poll_ms),
            *shell.live_follow(run, poll_ms, live),
        ]
    )


def register(app: Dash, client: ApiClient) -> None:
    for card in (shell, events, ranks, budget, curves, importance, samples):
        card.register(app, client)
