"""report_to: TensorBoard event files and an MLflow run get the records of metrics.jsonl.

A real tiny training run writes both; the event files are read back with
TensorBoard's own EventAccumulator and the MLflow run with MlflowClient from a
real file store, and every value is compared with the run's ``metrics.jsonl``
(the live rank per module type recomputed here from the masks, module types
from the names). A tracker that cannot start, or whose writes fail later,
costs one warning and training finishes.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from dora_core.contracts.job import parse_job_config
from dora_core.worker.cli import main
from dora_core.worker.telemetry import read_metrics
from dora_core.worker.telemetry.trackers import Trackers
from dora_core.worker.train.loop import train
from tests.conftest import BERT_TYPES
from tests.worker.conftest import tiny_job

PNG = b"\x89PNG\r\n\x1a\n"
T = 40


def f32(value: float) -> float:
    """What TensorBoard keeps of a scalar (a float32)."""
    return float(np.float32(value))


def module_type(name: str) -> str:
    """'bert.encoder.layer.0.attention.self.query' -> 'attention.self.query'."""
    return name.split(".layer.", 1)[1].split(".", 1)[1]


def expected_scalars(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Every series a tracker should hold, computed from metrics.jsonl alone."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["type"] == "scalars":
            for key, value in r["values"].items():
                out[key].append((r["step"], value))
        elif r["type"] == "budget":
            for key in ("target", "live", "b"):
                out[f"budget/{key}"].append((r["step"], r[key]))
        elif r["type"] == "scores":
            live: dict[str, list[int]] = defaultdict(list)
            for name, mask in r["masks"].items():
                live[module_type(name)].append(sum(mask))
            for t, counts in live.items():
                out[f"live_rank/{t}"].append((r["step"], sum(counts) / len(counts)))
    return out


def heatmap_steps(records: list[dict]) -> list[int]:
    """A heatmap at each pruning event and at the end."""
    kinds = ("prune", "mask_frozen", "finished")
    return [r["step"] for r in records if r["type"] == "event" and r["kind"] in kinds]


def trackers_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dora.trackers"]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A real MLflow file store (MLflow 3 asks for an explicit opt-in to file stores)."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return uri


@pytest.mark.slow
def test_tensorboard_and_mlflow_hold_the_runs_records(
    tiny_bert, sentiment_csv, tmp_path, mlflow_store, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("DORA_API_URL", raising=False)
    run = tmp_path / "run"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job(tiny_bert, sentiment_csv, run, max_steps=T)))
    code = main(["train", str(job_file), "--report-to", "tensorboard,mlflow", "--no-progress"])
    assert code == 0
    assert json.loads((run / "job.json").read_text())["report_to"] == ["tensorboard", "mlflow"]
    records = read_metrics(run)
    expected = expected_scalars(records)
    assert {f"live_rank/{t}" for t in BERT_TYPES} <= set(expected)
    assert {"loss", "lr", "eval/accuracy", "budget/live"} <= set(expected)

    # --- TensorBoard: every series, value for value (as float32), and the heatmaps
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for key, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(step, f32(value)) for step, value in points], key
    images = events.Images("rank_heatmap")
    assert [i.step for i in images] == heatmap_steps(records)
    assert len(images) >= 3  # some prune events, the freeze, the end
    assert all(i.encoded_image_string.startswith(PNG) and i.width > 100 for i in images)

    # --- MLflow: one finished run, the config as params, the metrics, the artifacts
    client = MlflowClient(mlflow_store)
    (mlrun,) = client.search_runs(["0"])
    job = parse_job_config(json.loads((run / "job.json").read_text()))
    assert mlrun.info.run_name == job.display_name and mlrun.info.status == "FINISHED"
    params = mlrun.data.params
    assert params["method"] == "dora" and params["target_rank"] == "2"
    assert params["max_steps"] == str(T) and params["output_dir"] == str(run)
    assert json.loads(params["report_to"]) == ["tensorboard", "mlflow"]
    assert len(params) == len(job.model_fields)
    for key in ("loss", "eval/accuracy", "budget/live", "live_rank/intermediate.dense"):
        history = client.get_metric_history(mlrun.info.run_id, key)
        got = sorted((m.step, m.value) for m in history)
        assert got == sorted(expected[key]), key
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert artifacts == {"adapter", "rank-heatmap.png", "result.json"}
    adapter = {Path(a.path).name for a in client.list_artifacts(mlrun.info.run_id, "adapter")}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter
    local = client.download_artifacts(mlrun.info.run_id, "rank-heatmap.png", str(tmp_path))
    assert Path(local).read_bytes().startswith(PNG)
    assert Path(local).read_bytes() == (run / "rank-heatmap.png").read_bytes()


@pytest.mark.slow
def test_trackers_that_cannot_start_cost_one_warning_each(
    tiny_bert, sentiment_csv, tmp_path, caplog, monkeypatch
) -> None:
    """TensorBoard's folder is taken by a file; MLflow is not installed."""
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow...` raises ImportError
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").write_text("not a folder")
    job = parse_job_config(
        tiny_job(tiny_bert, sentiment_csv, run, max_steps=T, report_to=["tensorboard", "mlflow"])
    )
    with caplog.at_level(logging.WARNING, logger="dora"):
        outcome = train(job, progress=False)
    assert outcome.status == "completed" and (run / "result.json").is_file()
    warnings = trackers_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "report_to tensorboard is off" in warnings[0]
    assert "report_to mlflow is off: mlflow is not installed" in warnings[1]
    assert "pip install 'dora-toolkit[trackers]'" in warnings[1]
    assert heatmap_steps(read_metrics(run))  # metrics.jsonl is whole


@pytest.mark.slow
def test_a_tracker_whose_writes_fail_is_dropped_and_the_other_goes_on(
    tiny_bert, sentiment_csv, tmp_path, mlflow_store, caplog, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient
    from torch.utils.tensorboard import SummaryWriter

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_image", full_disk)
    run = tmp_path / "run"
    job = parse_job_config(
        tiny_job(tiny_bert, sentiment_csv, run, max_steps=T, report_to=["tensorboard", "mlflow"])
    )
    with caplog.at_level(logging.WARNING, logger="dora"):
        outcome = train(job, progress=False)
    assert outcome.status == "completed"
    warnings = trackers_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "report_to tensorboard is off for the rest of this run" in warnings[0]
    assert "No space left on device" in warnings[0]
    (mlrun,) = MlflowClient(mlflow_store).search_runs(["0"])
    assert mlrun.info.status == "FINISHED"
    loss = [
        (m.step, m.value)
        for m in MlflowClient(mlflow_store).get_metric_history(mlrun.info.run_id, "loss")
    ]
    assert sorted(loss) == expected_scalars(read_metrics(run))["loss"]


# --- the fan-out alone, with a recording tracker --------------------------------------------


class Recorder:
    def __init__(self, run_dir: Path, run_name: str, config: dict):
        self.calls: list[tuple] = []
        RECORDERS.append(self)

    def scalars(self, step, values):
        self.calls.append(("scalars", step, dict(values)))

    def image(self, step, rgb):
        self.calls.append(("image", step, rgb.shape))

    def end(self, status, final):
        self.calls.append(("end", status, final is not None))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


RECORDERS: list[Recorder] = []
MODULES = [
    {"name": f"enc.{layer}.{t}", "layer": layer, "type": t, "shape": [8, 8], "rank": 3}
    for layer in (0, 1)
    for t in ("q", "ffn")
]


def test_an_event_sees_the_masks_of_its_own_step(tmp_path) -> None:
    """A batch holding steps 4 and 5, the prune event at 4: the heatmap is drawn from step
    4's masks, and the live ranks per type are the means of the mask sums (hand-computed)."""
    RECORDERS.clear()
    trackers = Trackers(["rec"], tmp_path, "run", {}, factories={"rec": Recorder})
    trackers.register({"modules": MODULES})
    masks4 = {
        "enc.0.q": [1, 1, 0],
        "enc.0.ffn": [1, 1, 1],
        "enc.1.q": [1, 0, 0],
        "enc.1.ffn": [1, 1, 0],
    }
    masks5 = {
        "enc.0.q": [1, 0, 0],
        "enc.0.ffn": [1, 1, 1],
        "enc.1.q": [0, 0, 0],
        "enc.1.ffn": [1, 1, 0],
    }
    values = {name: [0.5, 0.3, 0.2] for name in masks4}
    body = {
        "seq": 3,
        "scores": [
            {"step": 4, "values": values, "masks": masks4},
            {"step": 5, "values": values, "masks": masks5},
        ],
        "budget": [{"step": 4, "target": 8, "live": 8, "b": 2.0}],
        "scalars": [{"step": 5, "values": {"loss": 0.25}}],
        "events": [{"step": 4, "kind": "prune", "message": "", "data": None}],
    }
    trackers.batch(body)
    (rec,) = RECORDERS
    assert rec.calls[:4] == [
        ("scalars", 4, {"live_rank/q": 1.5, "live_rank/ffn": 2.5}),
        ("scalars", 4, {"budget/target": 8.0, "budget/live": 8.0, "budget/b": 2.0}),
        ("image", 4, rec.calls[2][2]),
        ("scalars", 5, {"live_rank/q": 0.5, "live_rank/ffn": 2.5}),
    ]
    assert rec.calls[4:] == [("scalars", 5, {"loss": 0.25}), ("flush",)]
    height, width, channels = rec.calls[2][2]
    assert channels == 3 and height > 2 * 20 and width > 2 * 40
    trackers.batch(
        {"seq": 4, "events": [{"step": 6, "kind": "finished", "message": "", "data": {}}]}
    )
    trackers.close()
    assert rec.calls[-4:] == [
        ("image", 6, rec.calls[-4][2]),
        ("end", "finished", True),
        ("flush",),
        ("close",),
    ]
