"""`dora plot RUN_DIR`: a run's figures without a server, drawn by the dashboard's own functions.

The run directory is read with ``dora_core.contracts.rundir`` (``metrics.jsonl``,
the module register, ``job.json``) and shaped like the API's answers (rank
matrix, budget, scores, scalar series), so ``dashboard.figures`` draws exactly
what the run page shows: the rank heatmap at a step, the budget curve, the
component importance of one layer, and the loss, dev-metric and optimiser
curves. HTML is one self-contained file (plotly.js inline) holding every
figure; PNG stacks the figures into one image through kaleido (the system
Chromium, as the study report's heatmaps).

The worker CLI runs this module in its own process (``dora plot``): the worker
may not import the dashboard. ``python -m dashboard.plot`` works the same way.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import plotly.graph_objects as go
import plotly.io as pio

from dashboard import figures
from dashboard.pages.run.curves import RIGHT_AXIS, SCALAR_PLOTS
from dora_core.contracts.job import JobConfigError, load_job_config
from dora_core.contracts.rankgrid import rank_matrix
from dora_core.contracts.rundir import JOB_FILE, METRICS_FILE, read_metrics, read_register
from dora_core.contracts.wire import METHODS, start_rank

WIDTH = 1000  # pixels of each figure in a PNG
MAX_SCORE_STEPS = 400  # importance heatmap columns (the run page's MAX_SCORE_POINTS)


class PlotError(ValueError):
    """A run directory or option that cannot be plotted (one line for the user)."""


@dataclass
class Run:
    """What a run directory holds, as the figures need it."""

    name: str
    method: str
    config: dict[str, Any]
    modules: list[dict[str, Any]]  # the register's (empty when the run never built a model)
    total_steps: int | None
    r_max: int | None
    records: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == kind]


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise PlotError(f"{run_dir} is not a run directory (no {METRICS_FILE})")
    try:
        job = load_job_config(run_dir / JOB_FILE)
    except JobConfigError as exc:
        raise PlotError(f"{run_dir / JOB_FILE}: {exc}") from None
    records = read_metrics(run_dir)
    if not records:
        raise PlotError(f"{run_dir / METRICS_FILE} holds no records yet")
    register = read_register(run_dir) or {}
    return Run(
        name=job.display_name,
        method=job.method,
        config=job.model_dump(mode="json"),
        modules=list(register.get("modules") or []),
        total_steps=register.get("total_steps") or job.max_steps,
        r_max=start_rank(job.method, job.target_rank, job.init_rank),
        records=records,
    )


# --- the API's answers, from the records ------------------------------------------------


def rank_matrix_at(run: Run, step: int | None) -> dict[str, Any]:
    """``/rank-matrix?step=S``: the masks of the last scores record at or before ``step``."""
    scores = run.of("scores")
    if step is not None:
        scores = [r for r in scores if r["step"] <= step]
    last = scores[-1] if scores else None
    return rank_matrix(run.modules, last["masks"] if last else None, last["step"] if last else None)


def budget_answer(run: Run) -> dict[str, list]:
    """``/budget``: target, live and b per reported step."""
    points = run.of("budget")
    return {
        "steps": [p["step"] for p in points],
        "target": [p["target"] for p in points],
        "live": [p["live"] for p in points],
        "b": [p["b"] for p in points],
    }


def scores_answer(run: Run, layer: int) -> dict[str, Any]:
    """``/scores?layer=L``: each module of the layer, its scores and masks per step (at most
    MAX_SCORE_STEPS steps, evenly picked, the last one always)."""
    names = [m for m in run.modules if m.get("layer") == layer]
    records = run.of("scores")
    if len(records) > MAX_SCORE_STEPS:
        stride = -(-len(records) // MAX_SCORE_STEPS)
        records = records[::stride] + ([records[-1]] if (len(records) - 1) % stride else [])
    return {
        "steps": [r["step"] for r in records],
        "modules": [
            {
                "name": m["name"],
                "type": m["type"],
                "scores": [r["values"][m["name"]] for r in records],
                "masks": [r["masks"][m["name"]] for r in records],
            }
            for m in names
        ],
    }


def scalar_series(run: Run) -> dict[str, dict[str, list]]:
    """``/scalars``: every scalar key's steps and values, in the order the keys appear."""
    series: dict[str, dict[str, list]] = {}
    for record in run.of("scalars"):
        for key, value in record["values"].items():
            entry = series.setdefault(key, {"steps": [], "values": []})
            entry["steps"].append(record["step"])
            entry["values"].append(value)
    return series


# --- the figures -------------------------------------------------------------------------


def build_figures(
    run: Run, step: int | None = None, layer: int | None = None
) -> list[tuple[str, go.Figure]]:
    """(title, figure) in the run page's order; ``step`` for the heatmap, ``layer`` for the
    importance (default: the first layer)."""
    steps = [r["step"] for r in run.records]
    if step is not None and not 0 <= step <= max(steps):
        raise PlotError(f"--step {step}: the run's steps go from 0 to {max(steps)}")
    layers = sorted({m["layer"] for m in run.modules if m.get("layer") is not None})
    if layer is not None and layer not in layers:
        have = f"{layers[0]}..{layers[-1]}" if layers else "none (no module register)"
        raise PlotError(f"--layer {layer}: the run's adapted layers are {have}")
    info = METHODS.get(run.method)
    out: list[tuple[str, go.Figure]] = []
    if info is None or info.adapter:
        matrix = rank_matrix_at(run, step)
        out.append(("Rank heatmap", figures.rank_heatmap(matrix, r_max=run.r_max)))
    if info is None or info.prunes:
        phase = figures.pruning_phase(
            run.total_steps, run.config.get("warmup_frac", 0.15), run.config.get("final_frac", 0.5)
        )
        fig = figures.budget_figure(
            budget_answer(run), len(run.modules) or None, run.total_steps, phase, title="Budget"
        )
        out.append(("Budget", fig))
    if layers and (info is None or info.adapter):
        chosen = layers[0] if layer is None else layer
        title = f"Component importance, layer {chosen}"
        fig = figures.importance_heatmap(scores_answer(run, chosen), title=title)
        out.append(("Component importance", fig))
    series = scalar_series(run)
    groups = figures.group_scalar_keys(list(series))
    for group, title, y_title, empty in SCALAR_PLOTS:
        fig = figures.curves_figure(series, groups[group], title, y_title, empty, RIGHT_AXIS)
        out.append((title, fig))
    return out


def write_html(path: Path, name: str, figs: list[tuple[str, go.Figure]]) -> None:
    """One self-contained page: plotly.js inline once, then each figure (titled by itself)."""
    parts = []
    for i, (_, fig) in enumerate(figs):
        div = fig.to_html(full_html=False, include_plotlyjs=i == 0, default_width="100%")
        parts.append(f"<section>{div}</section>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(name)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}"
        "h1{font-size:20px}</style></head><body>"
        f"<h1>{html.escape(name)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")


T = TypeVar("T")
KALEIDO_TRIES = 3


def with_kaleido_retry(draw: Callable[[], T], tries: int = KALEIDO_TRIES) -> T:
    """``draw()``, again when kaleido's headless Chromium failed in its own page script:
    on a busy machine it can run a figure before that script has loaded (``kaleido_scopes
    is not defined``). Any other error, and the last try's, goes to the caller."""
    try:
        from kaleido.errors import JavascriptError
    except ImportError as exc:  # an optional extra: the HTML output needs nothing
        raise PlotError(
            "PNG output needs kaleido (pip install 'dora-toolkit[bench]'); "
            "or write .html, which needs nothing more"
        ) from exc

    for _ in range(tries - 1):
        try:
            return draw()
        except JavascriptError:
            continue
    return draw()  # the last try: its error, whatever it is, goes to the caller


def write_png(path: Path, figs: list[tuple[str, go.Figure]]) -> None:
    """The figures one below the other in one PNG: kaleido draws each (one browser for
    all), then one more plotly figure lays them out as images, so no imaging library is
    needed."""
    heights = [int(fig.layout.height or 400) for _, fig in figs]
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"{i}.png" for i in range(len(figs))]
        with_kaleido_retry(
            lambda: pio.write_images([fig for _, fig in figs], files, width=WIDTH, height=heights)
        )
        images = [f.read_bytes() for f in files]
    total = sum(heights)
    sheet = go.Figure()
    top = 0
    for image, h in zip(images, heights, strict=True):
        sheet.add_layout_image(
            source="data:image/png;base64," + base64.b64encode(image).decode(),
            xref="paper",
            yref="paper",
            x=0,
            y=1 - top / total,
            sizex=1,
            sizey=h / total,
            xanchor="left",
            yanchor="top",
            sizing="stretch",
        )
        top += h
    sheet.update_xaxes(visible=False)
    sheet.update_yaxes(visible=False)
    sheet.update_layout(
        width=WIDTH,
        height=total,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        paper_bgcolor="white",
        plot_bgcolor="white",
    )
    with_kaleido_retry(lambda: sheet.write_image(str(path), width=WIDTH, height=total))


def plot(
    run_dir: str | Path,
    out: str | Path | None = None,
    step: int | None = None,
    layer: int | None = None,
) -> Path:
    """Draw ``run_dir``'s figures to ``out`` (.html or .png; default RUN_DIR/plots.html)."""
    run = load_run(run_dir)
    path = Path(out) if out else Path(run_dir) / "plots.html"
    if path.suffix.lower() not in (".html", ".png"):
        raise PlotError(f"-o {path}: give a .html or .png file")
    if not path.parent.is_dir():
        raise PlotError(f"-o {path}: folder {path.parent} does not exist")
    figs = build_figures(run, step, layer)
    if path.suffix.lower() == ".html":
        write_html(path, run.name, figs)
    else:
        write_png(path, figs)
    return path


def main(argv: list[str] | None = None, prog: str = "python -m dashboard.plot") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Draw a run directory's rank heatmap, budget curve, component importance "
        "and loss/metric curves (the dashboard's figures) without a server.",
    )
    parser.add_argument("run_dir", help="a run directory (finished or not)")
    parser.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="out.html (one self-contained page, the default: RUN_DIR/plots.html) or out.png",
    )
    parser.add_argument(
        "--step", type=int, metavar="S", help="the rank heatmap at step S (default: the last)"
    )
    parser.add_argument(
        "--layer", type=int, metavar="L", help="component importance of layer L (default: first)"
    )
    args = parser.parse_args(argv)
    try:
        path = plot(args.run_dir, args.out, args.step, args.layer)
    except PlotError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
