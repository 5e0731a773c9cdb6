"""Live updates: appending only new points must give the figure a full reload gives."""

from __future__ import annotations

from dashboard import figures, live
from tests.dashboard.helpers import apply_patch


def test_after_cuts_strictly_after_the_cursor() -> None:
    assert live.after([10, 20, 30], None) == 0
    assert live.after([10, 20, 30], 20) == 2  # an API that includes since_step itself
    assert live.after([21, 30], 20) == 0  # an API that starts after it
    assert live.after([10, 20], 30) == 2


BUDGET_ALL = {
    "steps": [0, 10, 20, 30],
    "target": [72, 66, 54, 48],
    "live": [72, 66, 55, 48],
    "b": [12, 11, 9, 8],
}


def _budget_slice(lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in BUDGET_ALL.items()}


def test_budget_patch_extends_to_the_full_figure() -> None:
    first = figures.budget_figure(_budget_slice(0, 2), num_modules=6).to_plotly_json()
    # the API answered since_step=10 including step 10 itself: it must not be drawn twice
    answer = _budget_slice(1, 4)
    delta = live.new_budget(answer, cursor=10)
    assert delta["steps"] == [20, 30]
    patched = apply_patch(first, live.budget_patch(delta, num_modules=6))
    assert patched["data"][0]["x"] == [0, 10, 20, 30]
    assert patched["data"][0]["y"] == [12.0, 11.0, 9.0, 8.0]
    assert patched["data"][1]["y"] == [12.0, 11.0, 55 / 6, 8.0]


def test_new_series_uses_a_cursor_per_key() -> None:
    # eval arrived for step 100 after loss had already been drawn up to step 105
    answer = {
        "loss": {"steps": [104, 105, 106], "values": [0.5, 0.4, 0.3]},
        "eval/accuracy": {"steps": [100], "values": [0.8]},
    }
    delta = live.new_series(answer, {"loss": 105, "eval/accuracy": 50})
    assert delta == {
        "loss": {"steps": [106], "values": [0.3]},
        "eval/accuracy": {"steps": [100], "values": [0.8]},
    }


def test_curves_patch_targets_the_trace_of_each_key() -> None:
    first = figures.curves_figure(
        {"loss": {"steps": [1], "values": [0.9]}, "dem": {"steps": [1], "values": [0.1]}},
        ["loss", "dem"],
        "Loss",
    ).to_plotly_json()
    patch = live.curves_patch({"dem": {"steps": [2], "values": [0.05]}}, ["loss", "dem"])
    patched = apply_patch(first, patch)
    assert patched["data"][0]["x"] == [1] and patched["data"][1]["x"] == [1, 2]
    assert patched["data"][1]["y"] == [0.1, 0.05]
    assert live.curves_patch({"other": {"steps": [2], "values": [1.0]}}, ["loss"]) is None


def _scores(steps: list[int]) -> dict:
    # component i of module m scores (m + 1) * 0.1 * (i + 1) + step / 1000; #1 of q is pruned from step 30
    def module(m: int, mtype: str) -> dict:
        return {
            "name": f"layer.0.{mtype}",
            "type": mtype,
            "scores": [[(m + 1) * 0.1 * (i + 1) + s / 1000 for i in range(2)] for s in steps],
            "masks": [[1, 0 if (m == 0 and s >= 30) else 1] for s in steps],
        }

    return {"steps": steps, "modules": [module(0, "q"), module(1, "v")]}


def test_importance_patch_extends_every_row_to_the_full_figure() -> None:
    first = figures.importance_heatmap(_scores([10, 20])).to_plotly_json()
    delta = live.new_scores(_scores([20, 30, 40]), cursor=20)
    assert delta["steps"] == [30, 40]
    patched = apply_patch(first, live.importance_patch(delta))
    full = figures.importance_heatmap(_scores([10, 20, 30, 40])).to_plotly_json()
    for trace in (0, 1):
        assert patched["data"][trace]["x"] == [10, 20, 30, 40]
        assert patched["data"][trace]["z"] == full["data"][trace]["z"]
    assert patched["data"][0]["customdata"] == full["data"][0]["customdata"]
    # hand check: q #1 is pruned at steps 30 and 40 only
    assert patched["data"][1]["z"][1] == [None, None, 1, 1]


def test_slider_follows_the_live_end_but_not_a_person_looking_back() -> None:
    assert live.slider_follow(None, None, 40) == 40
    assert live.slider_follow(40, 40, 50) == 50  # was at the end: follow
    assert live.slider_follow(12, 40, 50) == 12  # looking at step 12: stay
    assert live.slider_follow(12, 40, None) == 12


def test_replay_walks_from_start_to_end_in_even_frames() -> None:
    assert live.replay_next(None, 0, 400, frames=40) == 0
    assert live.replay_next(0, 0, 400, frames=40) == 10
    assert live.replay_next(395, 0, 400, frames=40) == 400
    assert live.replay_next(400, 0, 400, frames=40) == 0  # at the end: start over
    assert live.replay_next(0, 0, 7, frames=40) == 1  # never a zero stride
