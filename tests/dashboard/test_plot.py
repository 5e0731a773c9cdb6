"""`dora plot`: a run directory's figures as one HTML page or one PNG, no server.

The run directory is written here by hand (a job, a module register and
metrics.jsonl records shaped as docs/protocol.md says), so every number the
figures must show is known: the HTML is read back (each figure's JSON) and
compared with those numbers.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.plot import main
from tests.conftest import REPO_ROOT

LAYERS, TYPES, RANK = (0, 1), ("query", "ffn"), 3
NAMES = [f"enc.layer.{layer}.{t}" for layer in LAYERS for t in TYPES]
# live components per module at each scores step (hand-made: pruning from 3 to 2 on average)
LIVE = {
    0: [3, 3, 3, 3],
    2: [3, 2, 3, 3],
    4: [2, 2, 3, 1],
    6: [2, 2, 3, 1],
}
LOSS = {1: 0.9, 2: 0.7, 3: 0.65, 4: 0.5, 5: 0.45, 6: 0.4}
ACCURACY = {3: 0.625, 6: 0.75}


def mask(live: int) -> list[int]:
    return [1] * live + [0] * (RANK - live)


def score(step: int, i: int, j: int) -> float:
    return round(0.1 * (i + 1) + 0.01 * j + 0.001 * step, 6)


def write_run(run: Path, method: str = "dora") -> Path:
    run.mkdir(parents=True)
    job = {"model": "tiny", "dataset": "reviews.csv", "method": method, "target_rank": 2}
    job |= {"max_steps": 6, "name": "hand-made <b>run</b>", "output_dir": str(run)}
    (run / "job.json").write_text(json.dumps(job))
    modules = [
        {"name": n, "layer": layer, "type": t, "shape": [8, 8], "rank": RANK}
        for n, (layer, t) in zip(NAMES, [(la, t) for la in LAYERS for t in TYPES], strict=True)
    ]
    (run / "register.json").write_text(json.dumps({"modules": modules, "total_steps": 6}))
    records: list[dict] = [
        {"type": "event", "step": 0, "kind": "started", "message": "", "data": None}
    ]
    for step in range(7):
        if step in LIVE:
            records.append(
                {
                    "type": "scores",
                    "step": step,
                    "values": {
                        n: [score(step, i, j) for j in range(RANK)] for i, n in enumerate(NAMES)
                    },
                    "masks": {n: mask(v) for n, v in zip(NAMES, LIVE[step], strict=True)},
                }
            )
            live = sum(LIVE[step])
            records.append(
                {"type": "budget", "step": step, "target": live, "live": live, "b": live / 4}
            )
        if step in LOSS:
            records.append(
                {"type": "scalars", "step": step, "values": {"loss": LOSS[step], "lr": 0.01}}
            )
        if step in ACCURACY:
            values = {"eval/accuracy": ACCURACY[step], "eval/loss": 1 - ACCURACY[step]}
            records.append({"type": "scalars", "step": step, "values": values})
    records.append({"type": "event", "step": 6, "kind": "finished", "message": "", "data": {}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def figures_in(page: str) -> list[tuple[list, dict]]:
    """(data, layout) of every Plotly.newPlot call in the page, decoded from its JSON."""
    decoder = json.JSONDecoder()
    out = []
    start = 0
    while (at := page.find("Plotly.newPlot(", start)) >= 0:
        pos = page.index(",", at) + 1  # past the div id
        data, end = decoder.raw_decode(page, pos + len(page[pos:]) - len(page[pos:].lstrip()))
        pos = page.index(",", end) + 1
        layout, end = decoder.raw_decode(page, pos + len(page[pos:]) - len(page[pos:].lstrip()))
        out.append((data, layout))
        start = end
    return out


def test_the_html_page_holds_every_figure_with_the_runs_numbers(tmp_path, capsys) -> None:
    run = write_run(tmp_path / "run")
    out = tmp_path / "plots.html"
    assert main([str(run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    page = out.read_text()
    assert "<script src=" not in page  # self-contained: plotly.js inline, once
    assert page.count("Plotly.newPlot(") == 6 and page.count("plotly.js v") == 1
    assert "<b>run</b>" not in page  # the user's run name is escaped
    heat, budget, importance, loss, metrics, optimizer = figures_in(page)

    # rank heatmap at the last scores step: rows = layers, columns = types
    assert heat[0][0]["z"] == [LIVE[6][0:2], LIVE[6][2:4]]
    assert heat[0][0]["x"] == list(TYPES) and heat[0][0]["zmax"] == RANK
    # the budget as an average rank per layer (4 layers)
    assert budget[0][0]["x"] == list(LIVE) and budget[0][1]["y"] == [
        sum(v) / 4 for v in LIVE.values()
    ]
    # layer 0's components: one row per component, one column per scores step
    rows = importance[0][0]["z"]
    assert importance[0][0]["x"] == list(LIVE) and len(rows) == 2 * RANK
    assert rows[0] == [score(s, 0, 0) for s in LIVE] and rows[5] == [score(s, 1, 2) for s in LIVE]
    # the pruned cells of layer 0 (module 'query' lost component 2 at step 4)
    assert importance[0][1]["z"][2] == [None, None, 1, 1]
    # curves
    assert loss[0][0]["x"] == list(LOSS) and loss[0][0]["y"] == list(LOSS.values())
    by_name = {t["name"]: t for t in metrics[0]}
    assert by_name["eval/accuracy"]["y"] == list(ACCURACY.values())
    assert {t["name"] for t in optimizer[0]} == {"lr"}


def test_step_picks_the_heatmap_and_layer_the_importance(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    out = tmp_path / "at-3.html"
    assert main([str(run), "-o", str(out), "--step", "3", "--layer", "1"]) == 0
    heat, _, importance, *_ = figures_in(out.read_text())
    assert heat[0][0]["z"] == [LIVE[2][0:2], LIVE[2][2:4]]  # the last scores at or before 3
    assert importance[0][0]["z"][0] == [score(s, 2, 0) for s in LIVE]


def test_a_method_without_pruning_has_no_budget_figure(tmp_path) -> None:
    run = write_run(tmp_path / "run", method="lora")
    out = tmp_path / "lora.html"
    assert main([str(run), "-o", str(out)]) == 0
    assert out.read_text().count("Plotly.newPlot(") == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "is not a run directory (no metrics.jsonl)"),
        (["{run}", "--step", "7"], "--step 7: the run's steps go from 0 to 6"),
        (["{run}", "--step", "-1"], "--step -1: the run's steps go from 0 to 6"),
        (["{run}", "--layer", "5"], "--layer 5: the run's adapted layers are 0..1"),
        (["{run}", "-o", "{tmp}/plots.pdf"], "give a .html or .png file"),
        (["{run}", "-o", "{tmp}/nowhere/plots.html"], "does not exist"),
    ],
    ids=["no-run", "step-past-end", "negative-step", "layer", "format", "folder"],
)
def test_a_bad_run_or_option_is_one_line(tmp_path, capsys, args, message) -> None:
    run = write_run(tmp_path / "run")
    argv = [a.format(run=run, tmp=tmp_path, missing=tmp_path / "missing") for a in args]
    assert main(argv, "dora plot") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dora plot: error: ") and message in err[0]


@pytest.mark.slow
def test_the_png_stacks_every_figure_through_kaleido(tmp_path) -> None:
    """Through the `dora` command, as a user runs it (the worker CLI hands over to this module)."""
    run = write_run(tmp_path / "run")
    out = tmp_path / "plots.png"
    done = subprocess.run(
        [sys.executable, "-m", "dora_core.worker.cli", "plot", str(run), "-o", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1000 and height > 6 * 300  # six figures, one below the other
    assert len(data) > 50_000


def test_dora_plot_help_and_errors_come_from_the_plot_module() -> None:
    cmd = [sys.executable, "-m", "dora_core.worker.cli", "plot"]
    shown = subprocess.run(
        [*cmd, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and shown.stdout.startswith("usage: dora plot")
    assert "--step" in shown.stdout and "out.png" in shown.stdout
    bad = subprocess.run(
        [*cmd, "/nonexistent/run"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "dora plot: error: /nonexistent/run is not a run directory (no metrics.jsonl)"
    ]


def test_a_kaleido_page_script_failure_is_drawn_again_other_errors_are_not() -> None:
    from kaleido.errors import JavascriptError

    from dashboard.plot import KALEIDO_TRIES, with_kaleido_retry

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < KALEIDO_TRIES:
            raise JavascriptError("ReferenceError: kaleido_scopes is not defined")
        return "png"

    assert with_kaleido_retry(flaky) == "png" and len(calls) == KALEIDO_TRIES

    def always() -> None:
        calls.append(1)
        raise JavascriptError("still failing")

    calls.clear()
    with pytest.raises(JavascriptError):
        with_kaleido_retry(always)
    assert len(calls) == KALEIDO_TRIES

    def broken() -> None:
        calls.append(1)
        raise ValueError("not kaleido's")

    calls.clear()
    with pytest.raises(ValueError):
        with_kaleido_retry(broken)
    assert len(calls) == 1


def test_png_without_kaleido_is_one_line_that_offers_html(monkeypatch, tmp_path) -> None:
    """kaleido is an optional extra: without it, asking for a PNG is a user's one-line error."""
    from dashboard.plot import PlotError, with_kaleido_retry

    monkeypatch.setitem(sys.modules, "kaleido.errors", None)  # what a missing package looks like
    drawn: list[int] = []
    with pytest.raises(PlotError, match=r"PNG output needs kaleido .*write \.html"):
        with_kaleido_retry(lambda: drawn.append(1))
    assert drawn == []
