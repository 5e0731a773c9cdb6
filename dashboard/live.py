"""Live updates without re-downloading: keep only the new points and append them.

The run page remembers, per stream, the last step it has drawn (a *cursor*),
asks the API for ``since_step=<cursor>`` and extends the figures already in
the browser with ``dash.Patch``. These helpers are the pure part: what is
new, and which Patch appends it to the trace layout the figure functions in
``dashboard.figures`` produce.
"""

from __future__ import annotations

from dash import Patch

from dashboard import figures


def after(steps: list[int], cursor: int | None) -> int:
    """Index of the first step strictly after ``cursor`` (steps ascending).

    The API's ``since_step`` may or may not include the step itself; cutting
    here makes either reading draw every point exactly once.
    """
    if cursor is None:
        return 0
    for i, step in enumerate(steps):
        if step > cursor:
            return i
    return len(steps)


def new_budget(budget: dict, cursor: int | None) -> dict:
    """The part of a ``/budget`` answer after ``cursor``."""
    start = after(budget.get("steps", []), cursor)
    return {key: list(budget.get(key, []))[start:] for key in ("steps", "target", "live", "b")}


def budget_patch(delta: dict, num_modules: int | None) -> Patch:
    """Append new budget points to trace 0 (target) and trace 1 (live)."""
    series = figures.budget_series(delta, num_modules)
    patch = Patch()
    patch["data"][0]["x"].extend(series["x"])
    patch["data"][0]["y"].extend(series["target"])
    patch["data"][1]["x"].extend(series["x"])
    patch["data"][1]["y"].extend(series["live"])
    return patch


def new_series(series: dict[str, dict], cursors: dict[str, int]) -> dict[str, dict]:
    """Per scalar key, the points after that key's own cursor (eval and loss
    arrive at different steps, so one shared cursor could skip points)."""
    out = {}
    for key, s in series.items():
        start = after(s["steps"], cursors.get(key))
        if start < len(s["steps"]):
            out[key] = {"steps": list(s["steps"][start:]), "values": list(s["values"][start:])}
    return out


def curves_patch(delta: dict[str, dict], drawn: list[str]) -> Patch | None:
    """Append to the traces of ``curves_figure`` (trace i = drawn[i]); None if nothing new."""
    patch = Patch()
    touched = False
    for i, key in enumerate(drawn):
        if key in delta:
            patch["data"][i]["x"].extend(delta[key]["steps"])
            patch["data"][i]["y"].extend(delta[key]["values"])
            touched = True
    return patch if touched else None


def new_scores(scores: dict, cursor: int | None) -> dict:
    """The part of a ``/scores`` answer after ``cursor``."""
    start = after(scores.get("steps", []), cursor)
    return {
        "steps": list(scores.get("steps", []))[start:],
        "modules": [
            {**m, "scores": m["scores"][start:], "masks": m["masks"][start:]}
            for m in scores.get("modules", [])
        ],
    }


def importance_patch(delta: dict) -> Patch:
    """Append new step columns to both traces of ``importance_heatmap``, row by row."""
    rows = figures.importance_rows(delta)
    patch = Patch()
    for trace in (0, 1):
        patch["data"][trace]["x"].extend(rows["x"])
    for i in range(len(rows["labels"])):
        patch["data"][0]["z"][i].extend(rows["z"][i])
        patch["data"][0]["customdata"][i].extend(rows["status"][i])
        patch["data"][1]["z"][i].extend(rows["pruned"][i])
    return patch


def slider_follow(value: int | None, old_latest: int | None, new_latest: int | None) -> int | None:
    """Where the step slider goes when new steps arrive: it follows the live
    end if it was there (or unset); a person looking at the past stays put."""
    if new_latest is None:
        return value
    if value is None or old_latest is None or value >= old_latest:
        return new_latest
    return value


def replay_next(value: int | None, start: int, end: int, frames: int = 40) -> int:
    """The next frame of the replay: ``frames`` even steps from ``start`` to ``end``."""
    if value is None or value >= end:
        return start
    stride = max(1, round((end - start) / frames))
    return min(end, value + stride)
