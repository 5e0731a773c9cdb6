"""Files the dashboard serves itself: the exported adapter of a run, as a zip.

The browser downloads through the dashboard, so it never needs to reach the
API's address (in compose that is an internal host name). ``dashboard.app``
registers the route; the run page links to :func:`adapter_href`.
"""

from __future__ import annotations

from flask import Flask, Response

from dashboard.api import ApiClient, ApiError

ADAPTER_RULE = "/download/runs/<int:run_id>/adapter.zip"


def adapter_href(run_id: int) -> str:
    """Where the run page's "Download adapter" button points."""
    return ADAPTER_RULE.replace("<int:run_id>", str(run_id))


def adapter_zip(client: ApiClient, run_id: int) -> Response:
    """The run's adapter zip from the API, or the API's reason in plain text."""
    try:
        body = client.adapter_zip(run_id)
    except ApiError as err:
        return Response(err.message, status=err.status or 502, mimetype="text/plain")
    return Response(
        body,
        mimetype="application/zip",
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}-adapter.zip"'},
    )


def register(server: Flask, client: ApiClient) -> None:
    server.add_url_rule(ADAPTER_RULE, "adapter_zip", lambda run_id: adapter_zip(client, run_id))
