"""Figure functions against hand-computed expectations, fed protocol-shaped data."""

from __future__ import annotations

import pytest

from dashboard import figures

Q, V, OUT = "attention.self.query", "attention.self.value", "output.dense"


def _name(layer: int, mtype: str) -> str:
    return f"bert.encoder.layer.{layer}.{mtype}"


# A /rank-matrix answer: 2 layers x 3 types, r' = 12, layer 1 has no value adapter.
MATRIX = {
    "step": 120,
    "layers": [0, 1],
    "types": [Q, V, OUT],
    "live": [[5, 12, 0], [9, None, 3]],
    "rank": [[12, 12, 12], [12, None, 12]],
    "modules": [[_name(0, Q), _name(0, V), _name(0, OUT)], [_name(1, Q), None, _name(1, OUT)]],
}


def _annotation_texts(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def test_rank_heatmap_cells_axes_and_fixed_colour_range() -> None:
    fig = figures.rank_heatmap(MATRIX)
    (trace,) = fig.data
    assert [list(row) for row in trace.z] == [[5, 12, 0], [9, None, 3]]
    assert list(trace.x) == [Q, V, OUT]
    assert list(trace.y) == ["layer 0", "layer 1"]
    assert (trace.zmin, trace.zmax) == (0, 12)  # r' of the run, not the largest live count
    assert fig.layout.yaxis.autorange == "reversed"  # layer 0 on top
    assert "step 120" in fig.layout.title.text


def test_rank_heatmap_colour_range_is_pinned_by_r_max_even_when_all_cells_are_low() -> None:
    low = {**MATRIX, "live": [[1, 2, 0], [1, None, 0]]}
    assert figures.rank_heatmap(low, r_max=12).data[0].zmax == 12
    assert figures.rank_heatmap(low).data[0].zmax == 12  # from the rank matrix, not from live


def test_rank_heatmap_hover_names_module_and_counts() -> None:
    hover = figures.rank_heatmap(MATRIX).data[0].text
    assert _name(0, Q) in hover[0][0]
    assert "live 5 of r'=12" in hover[0][0] and "pruned 7" in hover[0][0]
    assert "live 0 of r'=12" in hover[0][2] and "pruned 12" in hover[0][2]
    assert "not adapted" in hover[1][1]


def test_rank_heatmap_without_data_says_so() -> None:
    empty = {"step": None, "layers": [], "types": [], "live": [], "rank": [], "modules": []}
    registered = {**MATRIX, "step": None, "live": [[None, None, None], [None, None, None]]}
    for matrix in (empty, registered):
        fig = figures.rank_heatmap(matrix)
        assert len(fig.data) == 0
        assert any("no rank data" in t.lower() for t in _annotation_texts(fig))


def test_pruning_phase_matches_the_schedule() -> None:
    # T = 1000, t_i = 0.15 T = 150, t_f = 0.5 T = 500 -> pruning in [150, 500]
    assert figures.pruning_phase(1000, 0.15, 0.5) == pytest.approx((150.0, 500.0))
    assert figures.pruning_phase(None, 0.15, 0.5) is None


# A /budget answer for L = 6 adapted layers, r' = 12, b(T) = 8.
BUDGET = {"steps": [0, 10, 20], "target": [72, 60, 48], "live": [72, 61, 48], "b": [12, 10, 8]}


def test_budget_figure_plots_per_layer_averages_and_shades_the_pruning_phase() -> None:
    fig = figures.budget_figure(BUDGET, num_modules=6, total_steps=100, phase=(15.0, 50.0))
    target, live = fig.data
    assert list(target.x) == [0, 10, 20] and list(live.x) == [0, 10, 20]
    assert list(target.y) == pytest.approx([12.0, 10.0, 8.0])
    assert list(live.y) == pytest.approx([12.0, 61 / 6, 8.0])
    (shade,) = fig.layout.shapes
    assert (shade.x0, shade.x1) == (15.0, 50.0)
    assert list(fig.layout.xaxis.range) == [0, 100]  # whole schedule visible mid-run
    assert "average rank" in fig.layout.yaxis.title.text


def test_budget_figure_without_layer_count_plots_counts_and_no_shade() -> None:
    fig = figures.budget_figure(BUDGET)
    assert list(fig.data[1].y) == [72, 61, 48]
    assert len(fig.layout.shapes) == 0


def test_budget_figure_empty() -> None:
    fig = figures.budget_figure({"steps": [], "target": [], "live": [], "b": []})
    assert len(fig.data) == 0 and _annotation_texts(fig)


# A /scores?module=... answer: 3 steps, r' = 3; component 2 pruned from step 20.
SCORES = {
    "steps": [10, 20, 30],
    "modules": [
        {
            "name": _name(0, Q),
            "type": Q,
            "scores": [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.7, 0.3, 0.0]],
            "masks": [[1, 1, 1], [1, 1, 0], [1, 1, 0]],
        }
    ],
}


def test_importance_heatmap_is_components_by_steps_with_pruned_cells_marked() -> None:
    fig = figures.importance_heatmap(SCORES)
    scores, overlay = fig.data
    assert list(scores.x) == [10, 20, 30]
    assert list(scores.y) == ["#0", "#1", "#2"]
    assert [list(r) for r in scores.z] == [[0.5, 0.6, 0.7], [0.3, 0.3, 0.3], [0.2, 0.1, 0.0]]
    assert [list(r) for r in overlay.z] == [
        [None, None, None],
        [None, None, None],
        [None, 1, 1],
    ]
    assert [list(r) for r in scores.customdata][2] == ["live", "pruned", "pruned"]
    assert overlay.showscale is False and overlay.hoverinfo == "skip"


def test_importance_heatmap_for_a_layer_labels_rows_by_module_type() -> None:
    two = {
        "steps": [10],
        "modules": [
            {"name": _name(0, Q), "type": Q, "scores": [[0.9, 0.1]], "masks": [[1, 0]]},
            {"name": _name(0, V), "type": V, "scores": [[0.4, 0.6]], "masks": [[1, 1]]},
        ],
    }
    fig = figures.importance_heatmap(two)
    assert list(fig.data[0].y) == [f"{Q} #0", f"{Q} #1", f"{V} #0", f"{V} #1"]
    assert [list(r) for r in fig.data[0].z] == [[0.9], [0.1], [0.4], [0.6]]
    assert [list(r) for r in fig.data[1].z] == [[None], [1], [None], [None]]


def test_importance_heatmap_empty() -> None:
    fig = figures.importance_heatmap({"steps": [], "modules": []})
    assert len(fig.data) == 0


def test_group_scalar_keys() -> None:
    keys = ["loss", "task_loss", "dem", "lr", "grad_norm", "eval/accuracy", "eval/loss"]
    assert figures.group_scalar_keys(keys) == {
        "loss": ["loss", "task_loss", "dem", "eval/loss"],
        "metrics": ["eval/accuracy"],
        "optimizer": ["lr", "grad_norm"],
    }


def test_curves_figure_keeps_key_order_and_skips_missing_keys() -> None:
    series = {
        "task_loss": {"steps": [1, 2], "values": [0.7, 0.6]},
        "loss": {"steps": [1, 2], "values": [0.8, 0.65]},
    }
    fig = figures.curves_figure(series, ["loss", "dem", "task_loss"], "Loss")
    assert [t.name for t in fig.data] == ["loss", "task_loss"]
    assert list(fig.data[0].y) == [0.8, 0.65]
    assert fig.data[0].mode == "lines+markers"  # few points: show them
    assert len(figures.curves_figure({}, ["loss"], "Loss").data) == 0


def test_curves_figure_puts_small_series_on_a_right_axis() -> None:
    series = {
        "grad_norm": {"steps": [1, 2], "values": [0.9, 1.1]},
        "lr": {"steps": [1, 2], "values": [1e-4, 2e-4]},
    }
    fig = figures.curves_figure(series, ["grad_norm", "lr"], right_axis=("lr",))
    assert [t.yaxis for t in fig.data] == ["y", "y2"]
    assert fig.layout.yaxis2.overlaying == "y" and fig.layout.yaxis2.side == "right"
    assert fig.layout.yaxis2.title.text == "lr"
    assert "yaxis2" not in figures.curves_figure(series, ["grad_norm"]).to_plotly_json()["layout"]


def test_compare_heatmaps_share_one_colour_scale() -> None:
    small = {
        "step": 50,
        "layers": [0],
        "types": [Q],
        "live": [[4]],
        "rank": [[6]],
        "modules": [[_name(0, Q)]],
    }
    fig = figures.compare_rank_heatmaps([("#1 dora", MATRIX), ("#2 lora", small)])
    assert len(fig.data) == 2
    assert all(t.coloraxis == "coloraxis" for t in fig.data)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 12)
    assert [list(r) for r in fig.data[1].z] == [[4]]


def test_rank_difference_matches_cells_by_layer_and_type() -> None:
    other = {  # the same model, types in another order, only layer 0 reported
        "step": 90,
        "layers": [0],
        "types": [OUT, Q],
        "live": [[2, 7]],
        "rank": [[12, 12]],
        "modules": [[_name(0, OUT), _name(0, Q)]],
    }
    diff = figures.rank_difference(MATRIX, other)
    assert diff["layers"] == [0] and diff["types"] == [Q, OUT]
    assert diff["delta"] == [[7 - 5, 2 - 0]]
    fig = figures.difference_heatmap("A", MATRIX, "B", other)
    assert [list(r) for r in fig.data[0].z] == [[2, 2]]
    assert (fig.data[0].zmin, fig.data[0].zmax, fig.data[0].zmid) == (-2, 2, 0)


def test_type_totals_sum_live_over_layers() -> None:
    assert figures.type_totals(MATRIX) == {Q: 14, V: 12, OUT: 3}
    fig = figures.type_totals_figure([("a", MATRIX)])
    assert list(fig.data[0].x) == [Q, V, OUT] and list(fig.data[0].y) == [14, 12, 3]


def test_labels_from_users_are_escaped_for_plotly_markup() -> None:
    evil = '<img src=x onerror="alert(1)"><b>run</b>'
    fig = figures.compare_rank_heatmaps([(evil, MATRIX)])
    title = _annotation_texts(fig)[0]
    assert "<img" not in title and "<b>" not in title
    assert "&lt;img" in title
    bars = figures.type_totals_figure([(evil, MATRIX)])
    assert "<img" not in bars.data[0].name
