"""The run page's frame: title and actions (compare, download, cancel), the
status line, banners, the failure box, and the refresh that drives every card.

One refresh (``GET /api/runs/<id>``) writes the run into ``run-state``; the
cards listen to that store. A live run's page follows the API's event stream
(``dashboard.livestream``, ``assets/live.js``): a refresh per notice of a new
step or status, none while nothing happens. Without the stream (refused,
broken, ``DORA_DASH_LIVE=poll``) a timer refreshes every poll interval. Either
stops once the run has ended and its last step has been seen.
"""

from __future__ import annotations

from typing import Any

from dash import ClientsideFunction, Dash, Input, Output, State, ctx, dcc, html, no_update

from dashboard import components as ui
from dashboard.api import ApiClient, ApiError, Method
from dashboard.downloads import adapter_href
from dashboard.livestream import stream_href
from dashboard.pages.run.common import method_of, prunes, target_rank
from dashboard.settings import DEFAULT_POLL_MS
from dora_core.contracts.wire import FINAL_STATUSES

LOG_TAIL = 15


def summary_items(run: dict, *, method: Method | None) -> list[tuple[str, str]]:
    """(label, value) pairs under the title: method, task (a generative one), data, budget,
    params, best metric."""
    items = [("method", ui.method_label(run.get("method")))]
    if ui.is_generative(run):
        items.append(("task", ui.task_label(ui.task_of(run))))
    items += [("model", run.get("model") or "–"), ("dataset", run.get("dataset") or "–")]
    if prunes(method):
        items.append(
            (
                "b(T) / r'",
                f"{target_rank(run)} / {run.get('init_rank') or '–'}",
            )
        )
    elif method and method["adapter"]:
        items.append(("rank", target_rank(run)))
    budget = run.get("budget")
    if budget and run.get("num_modules"):
        items.append(("live avg rank", f"{budget['live'] / run['num_modules']:.2f}"))
    params = run.get("params") or {}
    if params.get("adapter") is not None:
        items.append(("adapter params", ui.fmt_count(params["adapter"])))
    best = ui.best_metric(run)
    if best:
        items.append((f"best {ui.metric_label(best[0])}", ui.fmt_metric(best[1], best[0])))
    items.append(("created", ui.fmt_time(run.get("created_at"))))
    return items


def status_line(run: dict, *, method: Method | None) -> html.Div:
    return html.Div(
        [
            ui.status_badge(run.get("status", "?"), run.get("queue_position")),
            ui.progress_bar(run.get("step"), run.get("total_steps")),
            html.Div(
                [
                    html.Div(
                        [html.Span(label, className="k"), html.Span(value, className="v")],
                        className="kv",
                    )
                    for label, value in summary_items(run, method=method)
                ],
                className="summary",
            ),
        ],
        className="status-line",
    )


def failure_box(run: dict, log_lines: list[str]) -> html.Div | None:
    """Why a run failed: its error line, exit status and the worker's last log lines."""
    if run.get("status") != "failed":
        return None
    exit_code = run.get("exit_code")
    title = run.get("error") or "The run failed without an error line."
    parts: list[Any] = [html.P(title, className="state-title")]
    if exit_code is not None:
        parts.append(html.P(f"Worker exit status {exit_code}."))
    if log_lines:
        parts.append(
            html.Details(
                [html.Summary("Last log lines"), html.Pre("\n".join(log_lines), className="log")],
                open=True,
            )
        )
    return html.Div(parts, className="state state-error", role="alert")


# --- layout -----------------------------------------------------------------


def not_found(run_id: int, err: ApiError) -> html.Div:
    if err.status == 404:
        return ui.empty_state(
            f"Run {run_id} does not exist.",
            "It may have been deleted.",
            dcc.Link("Back to all runs", href="/"),
        )
    return ui.api_error_state(err)


def head(run: dict, *, method: Method | None) -> list[Any]:
    """Title, actions, status line and the message areas above the cards."""
    run_id = run["id"]
    return [
        html.Div(
            [
                html.Div(
                    [
                        html.Div(dcc.Link("← all runs", href="/"), className="crumb"),
                        html.H2(
                            [
                                html.Span(f"#{run_id} "),
                                html.Span(run.get("name") or "", id="run-name"),
                            ]
                        ),
                    ]
                ),
                html.Div(
                    [
                        dcc.Link(
                            "Compare…",
                            href=f"/compare?runs={run_id}",
                            className="btn btn-secondary",
                        ),
                        html.A(
                            "Download adapter",
                            id="run-download",
                            href=adapter_href(run_id),
                            className="btn btn-secondary",
                            style={} if run.get("has_adapter") else {"display": "none"},
                        ),
                        html.Button(
                            "Cancel run",
                            id="run-cancel",
                            className="btn btn-danger-outline",
                            style={} if ui.is_live(run) else {"display": "none"},
                        ),
                    ],
                    className="actions",
                ),
            ],
            className="page-head",
        ),
        html.Div(status_line(run, method=method), id="run-status"),
        html.Div(id="run-banner", role="status"),
        html.Div(id="run-message", role="status"),
        html.Div(failure_box(run, []), id="run-failure"),
    ]


def state_store(run: dict) -> dcc.Store:
    """The polled run, which every card listens to."""
    return dcc.Store(id="run-state", data=run)


def poll_timer(run: dict, poll_ms: int = DEFAULT_POLL_MS) -> dcc.Interval:
    """Refreshes a live run's page when it does not follow the stream (assets/live.js turns
    it off while the stream is open)."""
    return dcc.Interval(id="run-tick", interval=poll_ms, disabled=not ui.is_live(run))


def live_follow(run: dict, poll_ms: int = DEFAULT_POLL_MS, live: str = "stream") -> list[Any]:
    """What the page's script needs to follow a live run's stream (nothing to follow for an
    ended run or with ``DORA_DASH_LIVE=poll``), the store a notice sets, and a marker that
    says which it does ("stream" or "poll") and for which run."""
    follow = live == "stream" and ui.is_live(run)
    config = (
        {
            "run": run["id"],
            "url": stream_href(run["id"]),
            "step": run.get("step"),
            "status": run.get("status"),
            "gap": poll_ms,
            "final": sorted(FINAL_STATUSES),
        }
        if follow
        else None
    )
    return [
        dcc.Store(id="run-live", data=config),
        dcc.Store(id="run-notice"),
        html.Span(id="run-live-follow", hidden=True, **{"data-run": str(run["id"])}),
    ]


# --- callbacks as plain functions (client first; registered below) ------------


def poll(client: ApiClient, state: dict, *, notice: bool = False) -> tuple[Any, Any, Any]:
    """(new run or no_update, tick disabled, banner). Stops once the run has
    ended and no step arrived since the last poll (late telemetry still lands).
    After a stream ``notice`` the timer is left as the page's script set it,
    unless the run is over or the API failed (then the timer takes over)."""
    try:
        run = client.run(state["id"])
    except ApiError as err:
        return no_update, False, ui.api_error_state(err)
    disabled = not ui.is_live(run) and run.get("step") == state.get("step")
    if notice and not disabled:
        disabled = no_update
    return (no_update if run == state else run), disabled, None


def header(client: ApiClient, run: dict, *, method: Method | None) -> tuple[Any, dict, dict, Any]:
    """Status line, cancel and download visibility, failure box."""
    log_lines: list[str] = []
    if run.get("status") == "failed":
        try:
            log_lines = client.job_log(run["id"], tail=LOG_TAIL)
        except ApiError:
            log_lines = []
    return (
        status_line(run, method=method),
        {} if ui.is_live(run) else {"display": "none"},
        {} if run.get("has_adapter") else {"display": "none"},
        failure_box(run, log_lines),
    )


def cancel(client: ApiClient, run: dict) -> tuple[Any, Any]:
    try:
        updated = client.cancel_job(run["id"])
    except ApiError as err:
        return no_update, ui.error_state(f"Could not cancel: {err.message}")
    return updated, html.P("Cancel requested: the worker checkpoints and stops.", className="note")


# --- wiring -------------------------------------------------------------------


def register(app: Dash, client: ApiClient) -> None:
    @app.callback(
        Output("run-state", "data"),
        Output("run-tick", "disabled"),
        Output("run-banner", "children"),
        Input("run-tick", "n_intervals"),
        Input("run-notice", "data"),
        State("run-state", "data"),
        prevent_initial_call=True,
    )
    def _poll(_n, _notice, state):
        return poll(client, state, notice=ctx.triggered_id == "run-notice")

    app.clientside_callback(
        ClientsideFunction(namespace="dora_live", function_name="follow"),
        Output("run-live-follow", "children"),
        Input("run-live", "data"),
    )

    @app.callback(
        Output("run-status", "children"),
        Output("run-cancel", "style"),
        Output("run-download", "style"),
        Output("run-failure", "children"),
        Input("run-state", "data"),
    )
    def _header(run):
        return header(client, run, method=method_of(client, run))

    @app.callback(
        Output("run-state", "data", allow_duplicate=True),
        Output("run-message", "children", allow_duplicate=True),
        Input("run-cancel", "n_clicks"),
        State("run-state", "data"),
        prevent_initial_call=True,
    )
    def _cancel(n_clicks, run):
        if not n_clicks:  # drawn, not clicked
            return no_update, no_update
        return cancel(client, run)
