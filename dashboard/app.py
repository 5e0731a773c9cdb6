"""Dash application shell: `python -m dashboard.app`.

Only the frame lives here: the top bar, the URL router and the wiring of the
pages (``dashboard/pages``), which own their layouts and callbacks, and of the
download route (``dashboard/downloads``). Every URL is bookmarkable: ``/``,
``/runs/<id>``, ``/compare?runs=1,2``. Settings come from the environment
(``dashboard.settings``); a bad value stops the process with one line, exit 2.
Beyond loopback (or with DORA_DASH_AUTH) every request needs a login
(``dashboard.auth``); with nobody configured to sign in it does not start.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import flask
from dash import Dash, Input, Output, dcc, html
from pydantic import ValidationError

from dashboard import auth, downloads, livestream
from dashboard import components as ui
from dashboard.api import ApiClient, ApiError
from dashboard.pages import compare, run, runs
from dashboard.settings import DEFAULT_POLL_MS, DashboardSettings, settings_error
from dora_core.contracts.hosts import is_loopback_host

HEALTH_MS = 10_000
_RUN_PATH = re.compile(r"^/runs/(\d+)/?$")


def route(
    client: ApiClient,
    pathname: str | None,
    search: str | None,
    poll_ms: int = DEFAULT_POLL_MS,
    live: str = "stream",
) -> tuple[Any, str]:
    """(page content, document title) for a URL."""
    path = pathname or "/"
    if path in ("/", "/runs", "/runs/"):
        query = parse_qs((search or "").lstrip("?"))
        clone = next((int(v) for v in query.get("clone", []) if v.isdigit()), None)
        new_job = query.get("new") == ["1"] or clone is not None
        return runs.layout(client, new_job=new_job, clone=clone), "Runs · DoRA"
    match = _RUN_PATH.match(path)
    if match:
        page = run.layout(client, int(match.group(1)), poll_ms, live)
        return page, f"Run {match.group(1)} · DoRA"
    if path.rstrip("/") == "/compare":
        return compare.layout(client, search), "Compare · DoRA"
    return (
        ui.empty_state(
            f"No page at {path}.",
            "The dashboard has Runs, a page per run and Compare.",
            dcc.Link("Go to all runs", href="/"),
        ),
        "Not found · DoRA",
    )


def api_status(client: ApiClient) -> html.Span:
    """The top bar's indicator: is the API answering."""
    try:
        client.health()
    except ApiError as err:
        return html.Span("API unreachable", className="api-status api-down", title=err.message)
    return html.Span("API connected", className="api-status api-up", title=client.base_url)


def allowed_host(host: str, extra: frozenset[str] = frozenset()) -> bool:
    """Is ``host`` (a Host header) a loopback name, or one of ``extra``?

    DNS rebinding: a web page whose own name is pointed at 127.0.0.1 is "same
    origin" with the dashboard for the browser, and could drive its forms,
    which act on the API with the dashboard's access. Its requests still name
    that page's host, so only loopback names (and the names listed in
    DORA_DASH_ALLOWED_HOSTS) are served. The API checks the same for itself
    (backend.security) with the same rule (``dora_core.contracts.hosts``).
    """
    try:
        name = (urlsplit(f"//{host}").hostname or "").rstrip(".")
    except ValueError:
        return False
    return name in extra or is_loopback_host(name)


def create_app(
    api_url: str | None = None,
    client: ApiClient | None = None,
    settings: DashboardSettings | None = None,
) -> Dash:
    """The dashboard; raises auth.LoginSetupError when a login is needed and nobody may sign in."""
    settings = settings or DashboardSettings()
    users = auth.load_users(settings)  # refuses before anything is built
    client = client or ApiClient(api_url or settings.api_url, settings.api_token)
    app = Dash(
        __name__,
        title="DoRA dashboard",
        update_title=None,
        suppress_callback_exceptions=True,  # page components appear after routing
        # the page side of the login: only served when there is one
        assets_ignore="" if settings.auth_required else r"session\.js",
    )
    extra_hosts = settings.dash_allowed_hosts

    @app.server.before_request
    def _named_hosts_only() -> tuple[str, int] | None:
        if allowed_host(flask.request.host, extra_hosts):
            return None
        return (
            f"This dashboard is not served as {flask.request.host!r}: open it as "
            "http://127.0.0.1:<port> or http://localhost:<port>, or list that name in "
            "DORA_DASH_ALLOWED_HOSTS.",
            403,
        )

    # after the host check: a page named by a foreign Host is 403, not a login form
    login = auth.Login(users) if settings.auth_required else None
    if login is not None:
        login.install(app.server, settings)
    else:  # in case the server listens wider than DORA_DASH_HOST says
        app.server.before_request(auth.loopback_peers_only)
    # a full page load (not dcc.Link): the server ends the session
    sign_out = (
        [html.A("Sign out", href=auth.LOGOUT_PATH, id="sign-out", className="nav-link")]
        if login is not None
        else []
    )

    app.layout = html.Div(
        [
            dcc.Location(id="url", refresh="callback-nav"),
            html.Header(
                [
                    dcc.Link(
                        [html.Span("DoRA", className="brand-mark"), " dashboard"],
                        href="/",
                        className="brand",
                    ),
                    html.Nav(
                        [
                            dcc.Link("Runs", href="/", className="nav-link"),
                            dcc.Link("New job", href="/?new=1", className="nav-link"),
                            dcc.Link("Compare", href="/compare", className="nav-link"),
                        ]
                    ),
                    html.Div(id="api-status", className="api-status-wrap"),
                    dcc.Interval(id="api-health-tick", interval=HEALTH_MS),
                    *sign_out,
                ],
                className="topbar",
            ),
            dcc.Loading(
                html.Main(id="page", className="page"),
                type="dot",
                delay_show=400,
                target_components={"page": "children"},
                overlay_style={"visibility": "visible", "opacity": 0.6},
            ),
            html.Div(id="doc-title", style={"display": "none"}),
        ]
    )

    @app.callback(
        Output("page", "children"),
        Output("doc-title", "children"),
        Input("url", "pathname"),
        Input("url", "search"),
    )
    def _route(pathname, search):
        return route(client, pathname, search, settings.dash_poll_ms, settings.dash_live)

    @app.callback(Output("api-status", "children"), Input("api-health-tick", "n_intervals"))
    def _health(_n):
        return api_status(client)

    app.clientside_callback(
        "function(title) { if (title) { document.title = title; } return ''; }",
        Output("doc-title", "title"),
        Input("doc-title", "children"),
    )

    downloads.register(app.server, client)
    if settings.dash_live == "stream":
        livestream.register(app.server, client, settings.dash_max_streams)
    runs.register(app, client)
    run.register(app, client)
    compare.register(app, client)
    return app


def main() -> int:
    try:
        settings = DashboardSettings()
        app = create_app(settings=settings)
    except ValidationError as err:
        print(f"error: {settings_error(err)}", file=sys.stderr)
        return 2
    except auth.LoginSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # one request log line per live-update callback would bury `make run`'s output
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host=settings.dash_host, port=settings.dash_port, debug=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
