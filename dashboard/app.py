"""Dash application shell: `python -m dashboard.app`."""

from __future__ import annotations

import os

from dash import Dash, html


def create_app(api_url: str | None = None) -> Dash:
    api_url = api_url or os.environ.get("DORA_API_URL", "http://127.0.0.1:8000")
    app = Dash(__name__, title="DoRA dashboard")
    app.layout = html.Div(
        [
            html.H1("DoRA dashboard"),
            html.P(f"API: {api_url}"),
            html.P("Pages arrive with the dashboard issue."),
        ]
    )
    return app


def main() -> None:
    host = os.environ.get("DORA_DASH_HOST", "127.0.0.1")
    port = int(os.environ.get("DORA_DASH_PORT", "8050"))
    create_app().run(host=host, port=port, debug=False)


if __name__ == "__main__":
    main()
