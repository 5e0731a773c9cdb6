"""The run's job config as submitted (text, never HTML), and Clone job: the New job form
prefilled from it."""

from __future__ import annotations

import json

from dash import dcc, html

from dashboard import components as ui


def clone_href(run_id: int) -> str:
    """The New job form, prefilled from run ``run_id``'s config."""
    return f"/?new=1&clone={run_id}"


def card(run: dict) -> html.Div:
    config = run.get("config") or {}
    text = json.dumps(config, indent=2, sort_keys=True) if config else "(no config recorded)"
    return ui.card(
        "Job config",
        html.Div(
            dcc.Link("Clone job", href=clone_href(run["id"]), className="btn btn-secondary"),
            className="actions",
        ),
        html.Pre(text, id="run-config", className="config"),
        class_name="config-card",
    )
