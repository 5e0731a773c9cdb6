"""Figures as pure functions: API response data in, ``go.Figure`` out.

The inputs are shaped exactly like the API's answers (docs/protocol.md), so a
page passes them through untouched and the tests feed hand-written ones.
Arrays stay plain lists (never numpy): the run page extends them in place in
the browser with ``dash.Patch``, which needs JSON lists, not typed arrays.
Every label that comes from a user or a model goes through :func:`_text`,
because plotly renders a few HTML tags inside titles and hover labels.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Live components, from "none left" (pale) to "all r' left" (dark).
RANK_COLORSCALE = "YlGnBu"
SCORE_COLORSCALE = "Viridis"
DIFF_COLORSCALE = "RdBu"
# Drawn over pruned cells of the importance heatmap: washes them out.
PRUNED_OVERLAY = "rgba(255,255,255,0.72)"
PHASE_FILL = "rgba(255,153,51,0.14)"
# above the plot on the left, clear of the mode bar on the right
LEGEND = {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "xanchor": "left"}
SERIES_COLORS = ["#1f5fa8", "#d1495b", "#2a9d8f", "#e9a23b", "#6a4c93", "#5c677d"]


def _text(value: object) -> str:
    """A label plotly shows as text: its own markup (<b>, <a>, &amp;...) is escaped."""
    return html.escape(str(value), quote=False)


def _base_layout(
    fig: go.Figure, title: str | None = None, height: int = 380, uirevision: str = "data"
) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.01, "font": {"size": 15}} if title else None,
        height=height,
        margin={"l": 60, "r": 20, "t": 56 if title else 36, "b": 48},
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
        hoverlabel={"font": {"size": 12}},
        # live updates keep the user's zoom; a placeholder has another
        # revision, so the first real figure's axes (e.g. reversed) apply
        uirevision=uirevision,
    )
    fig.update_xaxes(automargin=True)  # room for rotated module-type labels
    fig.update_yaxes(automargin=True)
    return fig


def empty_figure(message: str, height: int = 260) -> go.Figure:
    """A blank plot area that says why it is blank (no data yet, API error...)."""
    fig = go.Figure()
    fig.add_annotation(
        text=_text(message),
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 14, "color": "#6b7280"},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _base_layout(fig, height=height, uirevision="placeholder")


# --- rank heatmap -------------------------------------------------------------


def layer_label(layer: int) -> str:
    return f"layer {layer}"


# "<...>.encoder.<block list>.<i>.<...>" / "decoder...": a block of one stack of an
# encoder-decoder (T5 "encoder.block.3", BART "model.decoder.layers.0"); the API numbers the
# decoder's blocks after the encoder's, the name keeps each stack's own index.
_STACK_BLOCK = re.compile(r"(?:^|\.)(encoder|decoder)\.[A-Za-z_]\w*\.(\d+)(?:\.|$)")


def layer_labels(matrix: dict) -> dict[int, str]:
    """Row label per layer of a ``/rank-matrix`` answer: "encoder 3" / "decoder 0" when its
    modules are an encoder-decoder's (both stacks among the names), else "layer N".

    A BERT encoder's names hold "encoder.layer.3" too, so one stack alone is not enough.
    """
    stacks: dict[int, tuple[str, int]] = {}
    for layer, names in zip(matrix.get("layers", []), matrix.get("modules", []), strict=False):
        for name in names:
            found = _STACK_BLOCK.search(name) if name else None
            if found:
                stacks[layer] = (found.group(1), int(found.group(2)))
                break
    both = {stack for stack, _ in stacks.values()} == {"encoder", "decoder"}
    return {
        layer: f"{stacks[layer][0]} {stacks[layer][1]}"
        if both and layer in stacks
        else layer_label(layer)
        for layer in matrix.get("layers", [])
    }


def _has_cells(matrix: dict) -> bool:
    """Whether a rank matrix has any reported cell (before the first scores it has none)."""
    return any(v is not None for row in matrix.get("live") or [] for v in row)


def _rank_max(matrix: dict) -> int:
    ranks = [r for row in matrix["rank"] for r in row if r is not None]
    return max(ranks, default=1)


def rank_hover(matrix: dict) -> list[list[str]]:
    """One hover line per cell: module name, live components out of r'."""
    labels = layer_labels(matrix)
    rows = []
    for i, layer in enumerate(matrix["layers"]):
        row = []
        for j, mtype in enumerate(matrix["types"]):
            name = matrix["modules"][i][j]
            if name is None:
                row.append(f"{labels[layer]} · {_text(mtype)}<br>not adapted")
                continue
            live, rank = matrix["live"][i][j], matrix["rank"][i][j]
            row.append(f"<b>{_text(name)}</b><br>live {live} of r'={rank} (pruned {rank - live})")
        rows.append(row)
    return rows


def _rank_trace(matrix: dict, **kwargs) -> go.Heatmap:
    labels = layer_labels(matrix)
    return go.Heatmap(
        z=[list(row) for row in matrix["live"]],
        x=list(matrix["types"]),
        y=[labels[layer] for layer in matrix["layers"]],
        text=rank_hover(matrix),
        hovertemplate="%{text}<extra></extra>",
        texttemplate="%{z}",
        xgap=2,
        ygap=2,
        **kwargs,
    )


def rank_heatmap(matrix: dict, r_max: int | None = None, title: str | None = None) -> go.Figure:
    """Layers x module types, cell = live components, colour fixed to 0..r'.

    ``matrix`` is a ``/rank-matrix`` answer. ``r_max`` (the run's r') pins the
    colour scale so frames of a replay, and runs, compare; default: the
    largest r' in the matrix.
    """
    if not _has_cells(matrix):
        return empty_figure("No rank data yet: the run has not reported scores.")
    zmax = r_max if r_max is not None else _rank_max(matrix)
    fig = go.Figure(
        _rank_trace(
            matrix,
            zmin=0,
            zmax=zmax,
            colorscale=RANK_COLORSCALE,
            colorbar={"title": {"text": "live"}, "dtick": 1 if zmax <= 16 else None},
        )
    )
    fig.update_yaxes(autorange="reversed", title=None)
    fig.update_xaxes(tickangle=-25, title=None)
    step = matrix.get("step")
    return _base_layout(
        fig,
        title or (f"Live components per module, step {step}" if step is not None else None),
        height=max(300, 90 + 38 * len(matrix["layers"])),
    )


# --- budget -----------------------------------------------------------------


def pruning_phase(
    total_steps: int | None, warmup_frac: float, final_frac: float
) -> tuple[float, float] | None:
    """[t_i, T - t_f]: the steps in which components are pruned (DESIGN.md, Eq. 9)."""
    if not total_steps:
        return None
    return warmup_frac * total_steps, total_steps - final_frac * total_steps


def budget_series(budget: dict, num_modules: int | None) -> dict[str, list]:
    """The budget answer as per-layer averages (what b(T) in the form means).

    ``target``/``live`` are counts over all adapted layers; divided by the
    number of layers L they read as an average rank. Without L, counts.
    """
    scale = 1.0 / num_modules if num_modules else 1.0
    return {
        "x": list(budget.get("steps", [])),
        "target": [t * scale for t in budget.get("target", [])],
        "live": [v * scale for v in budget.get("live", [])],
    }


def budget_figure(
    budget: dict,
    num_modules: int | None = None,
    total_steps: int | None = None,
    phase: tuple[float, float] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Target b(t) and the live count over steps, the pruning phase shaded.

    Trace 0 is the target, trace 1 the live count (the run page extends both).
    """
    if not budget.get("steps"):
        return empty_figure("No budget yet: it is reported from the first step.")
    series = budget_series(budget, num_modules)
    unit = "average rank per layer" if num_modules else "live components"
    fig = go.Figure(
        [
            go.Scatter(
                x=series["x"],
                y=series["target"],
                name="target b(t)",
                mode="lines",
                line={"dash": "dash", "color": "#6b7280", "width": 2},
                hovertemplate="step %{x}<br>target %{y:.2f}<extra></extra>",
            ),
            go.Scatter(
                x=series["x"],
                y=series["live"],
                name="live",
                mode="lines",
                line={"color": SERIES_COLORS[0], "width": 2.5},
                hovertemplate="step %{x}<br>live %{y:.2f}<extra></extra>",
            ),
        ]
    )
    if phase is not None:
        fig.add_vrect(
            x0=phase[0],
            x1=phase[1],
            fillcolor=PHASE_FILL,
            line_width=0,
            layer="below",
            annotation_text="pruning phase",
            annotation_position="top left",
            annotation_font={"size": 11, "color": "#b45309"},
        )
    if total_steps:
        fig.update_xaxes(range=[0, total_steps])
    fig.update_xaxes(title="step")
    fig.update_yaxes(title=unit, rangemode="tozero")
    fig.update_layout(legend=LEGEND)
    return _base_layout(fig, title)


# --- component importance -----------------------------------------------------


def importance_rows(scores: dict) -> dict[str, list]:
    """Reshape a ``/scores`` answer to components (rows) x steps (columns).

    ``z`` holds the smoothed scores, ``pruned`` 1 where the mask is 0 (else
    None, so the overlay leaves the cell alone), ``status`` a word per cell
    for the hover label.
    """
    modules = scores.get("modules", [])
    several = len(modules) > 1
    labels: list[str] = []
    z: list[list[float]] = []
    pruned: list[list[int | None]] = []
    status: list[list[str]] = []
    for module in modules:
        rank = len(module["scores"][0]) if module["scores"] else 0
        for i in range(rank):
            labels.append(f"{module['type']} #{i}" if several else f"#{i}")
            z.append([step_scores[i] for step_scores in module["scores"]])
            masks = [step_masks[i] for step_masks in module["masks"]]
            pruned.append([1 if m == 0 else None for m in masks])
            status.append(["pruned" if m == 0 else "live" for m in masks])
    return {
        "x": list(scores.get("steps", [])),
        "labels": labels,
        "z": z,
        "pruned": pruned,
        "status": status,
    }


def importance_heatmap(scores: dict, title: str = "Component importance") -> go.Figure:
    """Smoothed importance of each component over steps; pruned cells washed out.

    Trace 0: scores (customdata = live/pruned per cell); trace 1: the
    overlay, z = 1 on pruned cells. The run page extends both per row.
    """
    rows = importance_rows(scores)
    if not rows["x"] or not rows["labels"]:
        return empty_figure("No importance scores for this selection yet.")
    fig = go.Figure(
        [
            go.Heatmap(
                z=rows["z"],
                x=rows["x"],
                y=rows["labels"],
                customdata=rows["status"],
                zmin=0,
                colorscale=SCORE_COLORSCALE,
                colorbar={"title": {"text": "score"}},
                hovertemplate="%{y}, step %{x}<br>score %{z:.4f} (%{customdata})<extra></extra>",
            ),
            go.Heatmap(
                z=rows["pruned"],
                x=rows["x"],
                y=rows["labels"],
                zmin=0,
                zmax=1,
                colorscale=[[0, PRUNED_OVERLAY], [1, PRUNED_OVERLAY]],
                showscale=False,
                hoverinfo="skip",
                name="pruned",
            ),
        ]
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="step")
    return _base_layout(
        fig,
        f"{_text(title)} <span style='font-size:11px;color:#6b7280'>(faded = pruned)</span>",
        height=max(300, 110 + 14 * len(rows["labels"])),
    )


# --- scalar curves --------------------------------------------------------------


def group_scalar_keys(keys: Sequence[str]) -> dict[str, list[str]]:
    """Split scalar keys into the run page's plots: losses, dev metrics, optimiser."""
    groups: dict[str, list[str]] = {"loss": [], "metrics": [], "optimizer": []}
    for key in keys:
        if "loss" in key or key == "dem":
            groups["loss"].append(key)
        elif key.startswith("eval/"):
            groups["metrics"].append(key)
        else:
            groups["optimizer"].append(key)
    return groups


def curves_figure(
    series: dict[str, dict],
    keys: Sequence[str],
    title: str | None = None,
    y_title: str = "",
    empty_message: str = "No data yet.",
    right_axis: Sequence[str] = (),
) -> go.Figure:
    """One line per key that has data, in ``keys`` order (the run page extends
    trace i with the i-th such key). Keys in ``right_axis`` (a learning rate
    next to gradient norms) get their own scale on the right."""
    present = [k for k in keys if k in series]
    if not present:
        return empty_figure(empty_message)
    traces = []
    for i, key in enumerate(present):
        points = len(series[key]["steps"])
        traces.append(
            go.Scatter(
                x=list(series[key]["steps"]),
                y=list(series[key]["values"]),
                name=_text(key),
                mode="lines+markers" if points <= 30 else "lines",
                line={"color": SERIES_COLORS[i % len(SERIES_COLORS)], "width": 2},
                hovertemplate=f"{_text(key)}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
                yaxis="y2" if key in right_axis else "y",
            )
        )
    fig = go.Figure(traces)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title=y_title)
    right = [k for k in present if k in right_axis]
    if right:
        fig.update_layout(
            yaxis2={
                "title": ", ".join(_text(k) for k in right),
                "overlaying": "y",
                "side": "right",
                "showgrid": False,
                "exponentformat": "e",
            }
        )
    fig.update_layout(legend=LEGEND)
    return _base_layout(fig, title, height=320)


# --- compare --------------------------------------------------------------------


def compare_rank_heatmaps(items: Sequence[tuple[str, dict]], r_max: int | None = None) -> go.Figure:
    """Final rank heatmaps of several runs side by side on one colour scale 0..r'."""
    items = [(label, m) for label, m in items if _has_cells(m)]
    if not items:
        return empty_figure("None of these runs has rank data.")
    zmax = r_max if r_max is not None else max(_rank_max(m) for _, m in items)
    fig = make_subplots(
        rows=1,
        cols=len(items),
        subplot_titles=[_text(label) for label, _ in items],
        horizontal_spacing=0.06,
    )
    for col, (_, matrix) in enumerate(items, start=1):
        fig.add_trace(_rank_trace(matrix, coloraxis="coloraxis"), row=1, col=col)
    fig.update_layout(
        coloraxis={
            "cmin": 0,
            "cmax": zmax,
            "colorscale": RANK_COLORSCALE,
            "colorbar": {"title": {"text": "live"}, "dtick": 1 if zmax <= 16 else None},
        }
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-35)
    layers = max(len(m["layers"]) for _, m in items)
    return _base_layout(fig, None, height=max(320, 150 + 38 * layers))


def rank_difference(a: dict, b: dict) -> dict:
    """b - a on the cells both matrices have (layers and types matched by name)."""
    layers = [layer for layer in a["layers"] if layer in b["layers"]]
    types = [t for t in a["types"] if t in b["types"]]
    ai = {layer: i for i, layer in enumerate(a["layers"])}
    bi = {layer: i for i, layer in enumerate(b["layers"])}
    aj = {t: j for j, t in enumerate(a["types"])}
    bj = {t: j for j, t in enumerate(b["types"])}
    delta, live_a, live_b = [], [], []
    for layer in layers:
        row, row_a, row_b = [], [], []
        for t in types:
            va = a["live"][ai[layer]][aj[t]]
            vb = b["live"][bi[layer]][bj[t]]
            row.append(None if va is None or vb is None else vb - va)
            row_a.append(va)
            row_b.append(vb)
        delta.append(row)
        live_a.append(row_a)
        live_b.append(row_b)
    return {"layers": layers, "types": types, "delta": delta, "a": live_a, "b": live_b}


def difference_heatmap(label_a: str, a: dict, label_b: str, b: dict) -> go.Figure:
    """Where run B kept more (blue) or fewer (red) components than run A."""
    diff = rank_difference(a, b)
    if not diff["layers"] or not diff["types"]:
        return empty_figure("These runs share no adapted modules to compare.")
    values = [abs(v) for row in diff["delta"] for v in row if v is not None]
    bound = max(values, default=0) or 1
    labels = layer_labels(a)
    hover = [
        [
            f"{labels[layer]} · {_text(t)}<br>{diff['a'][i][j]} → {diff['b'][i][j]}"
            for j, t in enumerate(diff["types"])
        ]
        for i, layer in enumerate(diff["layers"])
    ]
    fig = go.Figure(
        go.Heatmap(
            z=diff["delta"],
            x=diff["types"],
            y=[labels[layer] for layer in diff["layers"]],
            zmin=-bound,
            zmax=bound,
            zmid=0,
            colorscale=DIFF_COLORSCALE,
            text=hover,
            texttemplate="%{z:+d}",
            hovertemplate="%{text}<br>difference %{z:+d}<extra></extra>",
            colorbar={"title": {"text": "Δ live"}},
            xgap=2,
            ygap=2,
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-25)
    return _base_layout(
        fig,
        f"{_text(label_b)} minus {_text(label_a)}",
        height=max(300, 110 + 38 * len(diff["layers"])),
    )


def type_totals(matrix: dict) -> dict[str, int]:
    """Live components per module type, summed over layers."""
    return {
        t: sum(row[j] for row in matrix["live"] if row[j] is not None)
        for j, t in enumerate(matrix["types"])
    }


def type_totals_figure(items: Sequence[tuple[str, dict]], title: str | None = None) -> go.Figure:
    """Grouped bars: where each run spent its budget, by module type."""
    items = [(label, m) for label, m in items if _has_cells(m)]
    if not items:
        return empty_figure("None of these runs has rank data.")
    types: list[str] = []
    for _, matrix in items:
        types.extend(t for t in matrix["types"] if t not in types)
    fig = go.Figure()
    for i, (label, matrix) in enumerate(items):
        totals = type_totals(matrix)
        fig.add_trace(
            go.Bar(
                x=types,
                y=[totals.get(t) for t in types],
                name=_text(label),
                marker_color=SERIES_COLORS[i % len(SERIES_COLORS)],
                hovertemplate=f"{_text(label)}<br>%{{x}}: %{{y}} live<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(tickangle=-25)
    fig.update_yaxes(title="live components (all layers)")
    fig.update_layout(legend=LEGEND)
    return _base_layout(fig, title, height=340)
