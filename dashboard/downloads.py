"""Files the dashboard serves itself: a run's exported adapter (zip) and its rank matrix
at a step (CSV).

The browser downloads through the dashboard, so it never needs to reach the
API's address (in compose that is an internal host name). ``dashboard.app``
registers the route; the run page links to :func:`adapter_href`.
"""

from __future__ import annotations

import csv
import io

from flask import Flask, Response, request

from dashboard.api import ApiClient, ApiError

ADAPTER_RULE = "/download/runs/<int:run_id>/adapter.zip"
RANKS_RULE = "/download/runs/<int:run_id>/rank-matrix.csv"


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


def ranks_href(run_id: int, step: int | None) -> str:
    """The rank card's "CSV" link for the step shown."""
    path = RANKS_RULE.replace("<int:run_id>", str(run_id))
    return path if step is None else f"{path}?step={int(step)}"


def rank_matrix_csv(matrix: dict) -> str:
    """One row per adapted module: layer, module type, module name, live components, r'."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "layer", "type", "module", "live", "rank"])
    for i, layer in enumerate(matrix.get("layers", [])):
        for j, mtype in enumerate(matrix.get("types", [])):
            module = matrix["modules"][i][j]
            if module is not None:
                live, rank = matrix["live"][i][j], matrix["rank"][i][j]
                writer.writerow([matrix.get("step"), layer, mtype, module, live, rank])
    return out.getvalue()


def ranks_csv(client: ApiClient, run_id: int, step: int | None) -> Response:
    """The run's rank matrix at ``step`` (the latest when absent) as CSV."""
    try:
        matrix = client.rank_matrix(run_id, step)
    except ApiError as err:
        return Response(err.message, status=err.status or 502, mimetype="text/plain")
    name = f"run-{run_id}-ranks-step-{matrix.get('step')}.csv"
    return Response(
        rank_matrix_csv(matrix),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def register(server: Flask, client: ApiClient) -> None:
    server.add_url_rule(ADAPTER_RULE, "adapter_zip", lambda run_id: adapter_zip(client, run_id))
    server.add_url_rule(
        RANKS_RULE,
        "ranks_csv",
        lambda run_id: ranks_csv(client, run_id, request.args.get("step", type=int)),
    )
