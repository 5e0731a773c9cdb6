"""Small building blocks shared by the pages: cards, states, badges, formatting.

Text from the API (run names, error lines, log lines) only ever goes into
component *children* as strings: React escapes them, so a run named
``<script>`` is shown as that text, never run (issue 8).
"""

from __future__ import annotations

from datetime import datetime

from dash import dcc, html

from dashboard.api import ApiError
from dora_core.contracts.wire import FINAL_STATUSES, GENERATIVE_TASKS

METHOD_LABELS = {"dora": "DoRA", "lora": "LoRA", "adalora": "AdaLoRA", "full": "full fine-tuning"}
TASK_LABELS = {"classification": "classification", "causal-lm": "causal LM", "seq2seq": "seq2seq"}
# Dev metrics by their short key (what follows "eval/"), as a table header or label shows them.
METRIC_LABELS = {
    "macro_f1": "macro-F1",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
}
# Metrics that are not a share in 0..1: shown with fewer decimals, lower is better.
UNBOUNDED_METRICS = {"loss", "perplexity"}
GRAPH_CONFIG = {"displaylogo": False}


def card(title: str | None, *children, id: str | None = None, class_name: str = "") -> html.Div:
    """A white panel with an optional heading."""
    head = [html.H3(title, className="card-title")] if title else []
    kwargs = {"id": id} if id else {}
    return html.Div([*head, *children], className=f"card {class_name}".strip(), **kwargs)


def graph(id: str, figure=None, **kwargs) -> dcc.Graph:
    """A plot area with the dashboard's config (no logo; height from the figure)."""
    return dcc.Graph(id=id, figure=figure or {}, config=GRAPH_CONFIG, **kwargs)


def empty_state(title: str, detail: str | None = None, *extra) -> html.Div:
    """What a page shows when there is nothing yet (no runs, no data)."""
    return html.Div(
        [html.P(title, className="state-title"), *([html.P(detail)] if detail else []), *extra],
        className="state state-empty",
    )


def error_state(message: str, hint: str | None = None) -> html.Div:
    """A failed call, in words; ``message`` is shown as text."""
    return html.Div(
        [html.P(message, className="state-title"), *([html.P(hint)] if hint else [])],
        className="state state-error",
        role="alert",
    )


def api_error_state(err: ApiError) -> html.Div:
    """The API is down or said no: what happened and what to do next."""
    if err.unreachable:
        return error_state(
            err.message,
            "Start the API (`make run`, or `uvicorn backend.main:app`) or point "
            "DORA_API_URL at it; this page retries on its own.",
        )
    return error_state(err.message)


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def status_badge(status: str, queue_position: int | None = None) -> html.Span:
    """The status as a coloured badge; a job waiting for a worker slot also gets its place
    in the API's queue ("2nd in line"), next to the badge so ``.badge`` stays the status."""
    badge = html.Span(status, className=f"badge badge-{status}")
    if status != "queued" or not queue_position:
        return badge
    place = html.Span(
        f"{ordinal(queue_position)} in line",
        className="queue-place",
        title="waiting for one of the API's worker slots (DORA_MAX_JOBS); oldest job first",
    )
    return html.Span([badge, place], className="status-with-place")


def progress_bar(step: int | None, total: int | None) -> html.Div:
    """``step / total`` with a bar; a dash when the total is not known yet."""
    if not total:
        return html.Div(f"step {step}" if step else "–", className="progress-text")
    frac = max(0.0, min(1.0, (step or 0) / total))
    return html.Div(
        [
            html.Div(
                html.Div(className="progress-fill", style={"width": f"{frac:.1%}"}),
                className="progress",
            ),
            html.Span(f"{step or 0} / {total}", className="progress-text"),
        ],
        className="progress-wrap",
    )


def is_live(run: dict) -> bool:
    return run.get("status") not in FINAL_STATUSES


def fmt_count(n: int | float | None) -> str:
    """22713216 -> '22.7M'; readable parameter counts."""
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:g}"


def fmt_metric(value: float | None, key: str = "") -> str:
    """0.8512 for a share (accuracy, ROUGE); 12.35 for perplexity, which is not in 0..1."""
    if value is None:
        return "–"
    return f"{value:.2f}" if key == "perplexity" else f"{value:.4f}"


def fmt_time(iso: str | None) -> str:
    """ISO timestamp -> 'YYYY-MM-DD HH:MM' (what fits a table cell)."""
    if not iso:
        return "–"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def best_metric(run: dict) -> tuple[str, float] | None:
    """(short name, value) of the run's best dev metric, e.g. ('accuracy', 0.87)."""
    best = run.get("best")
    if not best or best.get("value") is None:
        return None
    return str(best.get("key", "")).removeprefix("eval/"), float(best["value"])


def metric_label(key: str) -> str:
    """'rougeL' -> 'ROUGE-L'; keys without a label are shown as they are."""
    return METRIC_LABELS.get(key, key)


def headline(run: dict) -> str:
    """The run's headline metric as one label, from its best eval: 'accuracy 0.8512',
    'ROUGE-L 0.3120', 'loss 2.4310 (lowest)'; a dash before the first evaluation."""
    best = best_metric(run)
    if best is None:
        return "–"
    key, value = best
    lowest = " (lowest)" if key in UNBOUNDED_METRICS else ""
    return f"{metric_label(key)} {fmt_metric(value, key)}{lowest}"


def task_of(run: dict) -> str:
    """The run's task as the API names it (runs from an older API: from the config)."""
    return run.get("task") or (run.get("config") or {}).get("task") or "classification"


def is_generative(run: dict) -> bool:
    """A causal-LM or seq2seq run: it has dev samples and ROUGE instead of accuracy."""
    return task_of(run) in GENERATIVE_TASKS


def task_label(task: str | None) -> str:
    return TASK_LABELS.get(task or "", task or "–")


def method_label(method: str | None) -> str:
    return METHOD_LABELS.get(method or "", method or "–")
