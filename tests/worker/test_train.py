"""The training loop end to end on tiny models: learning, run directory, telemetry, baselines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dora_core.contracts.job import parse_job_config
from dora_core.worker.cli import main
from dora_core.worker.telemetry import read_metrics
from dora_core.worker.train.loop import Telemetry, train
from tests.conftest import BERT_TYPES, LLAMA_TYPES
from tests.worker.conftest import tiny_job
from tests.worker.fake_api import FakeApi

T = 300  # steps of the shared DoRA run below


def naive_budget(t: int, T: int, r0: int, rT: int) -> float:
    """Eq. 9 as DESIGN.md writes it, with whole-step phase boundaries (halves round up)."""
    t_i, t_f = math.floor(0.15 * T + 0.5), math.floor(0.5 * T + 0.5)
    xi = min(max((t - t_i) / (T - t_i - t_f), 0.0), 1.0)
    return rT + (r0 - rT) * (1 - xi**3)


@pytest.fixture(scope="module")
def dora_run(tiny_bert, sentiment_csv, tmp_path_factory):
    """One DoRA run streaming to a live (fake) API, shared by the checks below."""
    api = FakeApi().start()
    out = tmp_path_factory.mktemp("dora-run")
    torch.set_num_threads(1)
    job = parse_job_config(
        tiny_job(tiny_bert, sentiment_csv, out, lr=0.02, max_steps=T, eval_every=100)
    )
    try:
        outcome = train(job, telemetry=Telemetry(api_url=api.url), progress=False)
    finally:
        api.stop()
    return outcome, api


def test_dora_learns_the_task(dora_run) -> None:
    outcome, _ = dora_run
    assert outcome.status == "completed"
    assert outcome.result["metrics"]["accuracy"] >= 0.75  # chance is 0.5
    assert outcome.result["best"]["key"] == "eval/accuracy"


def test_run_directory_layout(dora_run) -> None:
    outcome, _ = dora_run
    run = outcome.run_dir
    for name in ["job.json", "split.json", "log.txt", "metrics.jsonl", "result.json"]:
        assert (run / name).is_file(), name
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "dora" / "dora_config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-100", "step-200"]
    assert (run / "telemetry-spool.jsonl").read_text() == ""
    assert json.loads((run / "job.json").read_text())["output_dir"] == str(run)
    split = json.loads((run / "split.json").read_text())
    assert split["seed"] == 7 and split["dev_size"] == len(split["dev_indices"]) == 48


def test_pruning_follows_the_budget_exactly(dora_run) -> None:
    outcome, _ = dora_run
    records = read_metrics(outcome.run_dir)
    layers, r0, rT = 12, 3, 2
    prunes = [r for r in records if r["type"] == "event" and r["kind"] in ("prune", "mask_frozen")]
    assert prunes and prunes[-1]["kind"] == "mask_frozen" and prunes[-1]["step"] == T // 2
    for event in prunes:
        expected = math.floor(naive_budget(event["step"], T, r0, rT) * layers + 0.5)
        assert event["data"]["target"] == event["data"]["live"] == expected
    scores = [r for r in records if r["type"] == "scores"]
    last = scores[-1]
    assert len(last["values"]) == layers
    assert all(len(v) == r0 for v in last["values"].values())
    assert sum(sum(m) for m in last["masks"].values()) == rT * layers
    assert {k: sum(m) for k, m in last["masks"].items()} == outcome.result["rank_pattern"]
    # Scores are sent every step while they move, then only at the end.
    steps = [r["step"] for r in scores]
    assert steps == [*range(0, T // 2 + 1), T]


def test_scalars_and_events_follow_the_protocol(dora_run) -> None:
    outcome, _ = dora_run
    records = read_metrics(outcome.run_dir)
    train_scalars = [r for r in records if r["type"] == "scalars" and "loss" in r["values"]]
    assert [r["step"] for r in train_scalars] == list(range(1, T + 1))
    assert set(train_scalars[0]["values"]) == {"loss", "task_loss", "dem", "lr", "grad_norm"}
    evals = [r for r in records if r["type"] == "scalars" and "eval/accuracy" in r["values"]]
    assert [r["step"] for r in evals] == [100, 200, 300]
    assert evals[-1]["values"]["eval/accuracy"] == outcome.result["metrics"]["accuracy"]
    kinds = [r["kind"] for r in records if r["type"] == "event"]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("checkpoint") == 2 and kinds.count("eval") == 3


def test_the_api_received_exactly_metrics_jsonl(dora_run) -> None:
    outcome, api = dora_run
    assert len(api.runs) == 1 and api.runs[0]["config"]["method"] == "dora"
    (run_id, body), *_ = api.registrations
    assert run_id == 1
    assert body["total_steps"] == T and (body["init_rank"], body["target_rank"]) == (3, 2)
    modules = body["modules"]
    assert [m["type"] for m in modules] == BERT_TYPES * 2
    assert [m["layer"] for m in modules] == [0] * 6 + [1] * 6
    assert modules[0]["name"] == "bert.encoder.layer.0.attention.self.query"
    assert [m["shape"] for m in modules[3:6]] == [[32, 32], [64, 32], [32, 64]]
    assert all(m["rank"] == 3 for m in modules)
    # 12 layers x 3 components x (d_in + d_out + 1) and the 2-class head on hidden 32
    assert body["params"]["adapter"] == 3 * (8 * 65 + 4 * 97)
    assert body["params"]["head"] == 2 * 32 + 2
    assert sorted(api.batches) == list(range(len(api.batches)))
    assert api.records() == _grouped(read_metrics(outcome.run_dir), api)


def _grouped(records, api):
    """metrics.jsonl reordered the way batches group records (by type within a batch)."""
    out, i = [], 0
    order = ["scores", "budget", "scalars", "event"]
    for seq in sorted(api.batches):
        n = sum(len(api.batches[seq].get(k, [])) for k in ("scores", "budget", "scalars", "events"))
        chunk = records[i : i + n]
        i += n
        out += sorted(chunk, key=lambda r: order.index(r["type"]))
    assert i == len(records)
    return out


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_peft_baselines_use_the_same_layers_and_budget(
    method, tiny_bert, sentiment_csv, tmp_path
) -> None:
    api = FakeApi().start()
    try:
        job = parse_job_config(
            tiny_job(tiny_bert, sentiment_csv, tmp_path, method=method, max_steps=40)
        )
        outcome = train(job, telemetry=Telemetry(api_url=api.url), progress=False)
    finally:
        api.stop()
    body = api.registrations[0][1]
    assert [m["type"] for m in body["modules"]] == BERT_TYPES * 2
    records = read_metrics(tmp_path)
    last_budget = [r for r in records if r["type"] == "budget"][-1]
    if method == "lora":
        assert all(m["rank"] == 2 for m in body["modules"])  # rank b(T)
        assert body["params"]["adapter"] == 2 * (8 * 64 + 4 * 96)
        assert last_budget["live"] == 24
    else:
        assert all(m["rank"] == 3 for m in body["modules"])  # init_r = r'
        assert last_budget["live"] == last_budget["target"] == 24  # target_r = b(T) per layer
        assert any(
            r["kind"] == "mask_frozen" and r["step"] == 20 for r in records if r["type"] == "event"
        )
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == method.upper()
    assert outcome.result["params"]["head"] == 66


def test_decoder_only_model_without_a_pad_token(tiny_llama, sentiment_csv, tmp_path) -> None:
    api = FakeApi().start()
    try:
        job = parse_job_config(tiny_job(tiny_llama, sentiment_csv, tmp_path, max_steps=20))
        outcome = train(job, telemetry=Telemetry(api_url=api.url), progress=False)
    finally:
        api.stop()
    assert outcome.status == "completed"
    body = api.registrations[0][1]
    types = [m["type"] for m in body["modules"]]
    assert types == LLAMA_TYPES * 2
    tokenizer_cfg = json.loads((tmp_path / "adapter" / "tokenizer_config.json").read_text())
    assert tokenizer_cfg.get("pad_token") == "[EOS]"


@pytest.mark.filterwarnings("ignore:.*rank_pattern keys did not match")  # PEFT reloading AdaLoRA
@pytest.mark.filterwarnings("ignore:.*have invalid shape")  # PEFT: AdaLoRA layers pruned to rank 0
@pytest.mark.parametrize("method", ["dora", "lora", "adalora"])
def test_export_and_merge_reproduce_the_reported_accuracy(
    method, tiny_bert, sentiment_csv, tmp_path, capsys
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dora_core.worker.data import load_dataset

    job = parse_job_config(
        tiny_job(
            tiny_bert,
            sentiment_csv,
            tmp_path / "run",
            method=method,
            lr=0.03,
            max_steps=60,
            dropout=0.0,
        )
    )
    outcome = train(job, progress=False)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "adapter")]) == 0
    assert main(["merge", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0

    data = load_dataset(job)
    dev = json.loads((tmp_path / "run" / "split.json").read_text())["dev_indices"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    batch = tokenizer(
        [data.texts[i] for i in dev],
        padding=True,
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    labels = torch.tensor([data.labels[i] for i in dev])

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert not any("lora" in n or "dora" in n for n, _ in merged.named_modules())
    with torch.no_grad():
        merged_logits = merged(**batch).logits
        peft_logits = peft_model(**batch).logits
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-4, atol=1e-5)
    accuracy = (merged_logits.argmax(-1) == labels).float().mean().item()
    assert accuracy == pytest.approx(outcome.result["metrics"]["accuracy"])
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    # `dora predict` answers what the merged model says, as label names and probabilities.
    texts = [data.texts[i] for i in dev[:2]]
    capsys.readouterr()
    assert (
        main(["predict", str(tmp_path / "run"), "--json", "--text", texts[0], "--text", texts[1]])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        probs = torch.softmax(
            merged(**tokenizer(texts, return_tensors="pt", padding=True)).logits, -1
        )
    for row, p in zip(rows, probs, strict=True):
        assert row["label"] == ["neg", "pos"][int(p.argmax())]
        assert [row["probabilities"][n] for n in ("neg", "pos")] == pytest.approx(
            p.tolist(), abs=1e-4
        )
