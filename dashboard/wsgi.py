"""The dashboard for a production WSGI server: ``gunicorn 'dashboard.wsgi:create_server()'``.

``python -m dashboard.app`` runs Flask's development server, one process;
gunicorn runs the same Flask ``server`` of the same Dash app (built by
``dashboard.app.create_app`` from the same ``DORA_*`` variables) in several
worker processes. gunicorn's own ``--bind`` says where it listens; keep
``DORA_DASH_HOST`` / ``DORA_DASH_PORT`` equal to it, since the login rule
(a login whenever the dashboard is exposed beyond loopback) and the session
cookie's name read them.

Start it with ``--preload``: the app is then built once, in gunicorn's master
process, so that

- a bad variable or a login nobody can use stops gunicorn with one line and
  exit status 2, as it stops ``python -m dashboard.app``, instead of every
  worker failing to boot over and over;
- the workers share one session-signing key even when ``DORA_DASH_SECRET`` is
  unset (a random key made per process would sign a user out whenever a
  request reached another worker). Set ``DORA_DASH_SECRET`` to keep sessions
  across restarts.
"""

from __future__ import annotations

import sys

import flask
from dash import Dash
from pydantic import ValidationError

from dashboard import auth
from dashboard.app import create_app
from dashboard.settings import DashboardSettings, settings_error


def create_server() -> flask.Flask:
    """The dashboard's Flask (WSGI) app; a setting it cannot use stops the process (exit 2)."""
    try:
        settings = DashboardSettings()
        app = create_app(settings=settings)
    except ValidationError as err:
        print(f"error: {settings_error(err)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except auth.LoginSetupError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    warm_up(app)
    return app.server


def warm_up(app: Dash) -> None:
    """Let Dash finish setting itself up now, before any worker serves a request.

    Dash registers its scripts at the first request a process serves, and marks
    that done before doing it: under gunicorn, a worker's first few requests
    arrive together (a browser fetches all scripts at once), and the ones served
    meanwhile failed with 500 ("dash is not a registered library"). One request
    through Flask's test client here runs that set-up once; with ``--preload``
    the workers inherit it (without, each worker runs it as it loads the app).
    """
    with app.server.test_client() as client:
        client.get("/", headers={"Host": "127.0.0.1"})
