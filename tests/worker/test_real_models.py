"""The two model presets, loaded from their offline packages (slow: real weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dora_core.contracts.job import parse_job_config
from dora_core.contracts.presets import DATASETS, MODELS
from dora_core.worker.train.loop import Telemetry, train
from tests.worker.fake_api import FakeApi

pytestmark = pytest.mark.slow


def run_preset(model: str, tmp_path, **overrides):
    for preset in (MODELS[model], DATASETS["rt-snippets"]):
        if not preset.available:
            pytest.skip(f"{preset.name} is not installed ({preset.install_hint})")
    job = {
        "model": model,
        "dataset": "rt-snippets",
        "max_train_samples": 32,
        "max_dev_samples": 16,
        "max_length": 24,
        "batch_size": 4,
        "max_steps": 4,
        "target_rank": 2,
        "prune_interval": 1,
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        **overrides,
    }
    api = FakeApi().start()
    try:
        outcome = train(parse_job_config(job), telemetry=Telemetry(api_url=api.url), progress=False)
    finally:
        api.stop()
    return outcome, api.registrations[0][1]


def test_minilm_preset(tmp_path) -> None:
    outcome, body = run_preset("minilm", tmp_path)
    assert outcome.status == "completed"
    modules = body["modules"]
    assert len(modules) == 6 * 6  # 6 blocks x (q, k, v, attention.output, intermediate, output)
    assert {m["layer"] for m in modules} == set(range(6))
    shapes = {m["type"]: m["shape"] for m in modules}
    assert shapes["attention.self.query"] == [384, 384]
    assert shapes["intermediate.dense"] == [1536, 384] and shapes["output.dense"] == [384, 1536]
    assert body["params"]["total"] > 22_000_000
    assert sum(outcome.result["rank_pattern"].values()) == 2 * 36


@pytest.fixture(scope="module")
def smollm2_classifier_run(tmp_path_factory):
    """One short DoRA classification run of the GGUF preset, shared by the tests that read
    it (SmolLM2 costs about a minute per run on 2 cores)."""
    folder = tmp_path_factory.mktemp("smollm2-cls")
    outcome, body = run_preset("smollm2-135m", folder, max_steps=2, batch_size=2, max_length=16)
    return folder, outcome, body


def test_smollm2_gguf_preset_as_a_decoder_classifier(smollm2_classifier_run) -> None:
    tmp_path, outcome, body = smollm2_classifier_run
    assert outcome.status == "completed"
    modules = body["modules"]
    assert len(modules) == 30 * 7  # 30 blocks x (q, k, v, o, gate, up, down)
    assert modules[0]["name"] == "model.layers.0.self_attn.q_proj"
    assert modules[0]["shape"] == [576, 576]
    assert body["params"]["head"] == 576 * 2  # the score head, no bias
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_smollm2_run_merges_into_a_plain_float_model(smollm2_classifier_run, tmp_path) -> None:
    """`dora merge` of a GGUF preset's run: a folder from_pretrained loads without gguf_file,
    giving the adapted model's logits (the GGUF weights are dequantised on load)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dora_core.worker.cli import main

    trained, outcome, _ = smollm2_classifier_run
    assert outcome.status == "completed"
    out = tmp_path / "merged"
    assert main(["merge", str(trained / "run"), str(out)]) == 0
    assert not list(out.glob("*.gguf")) and (out / "config.json").is_file()
    assert "quantization_config" not in (out / "config.json").read_text()
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["a fine film", "a dull film"], return_tensors="pt", padding=True)
    from peft import PeftModel

    from dora_core.worker.models import load_model, load_tokenizer, resolve_model

    source = resolve_model("smollm2-135m")
    base = load_model(source, 2, load_tokenizer(source).pad_token_id)
    adapted = PeftModel.from_pretrained(base, trained / "run" / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, adapted(**batch).logits, rtol=1e-4, atol=1e-4
        )


def test_smollm2_causal_lm_on_bbc_summary_then_dora_generate(tmp_path, capsys) -> None:
    """Three optimizer steps of SFT on bbc-summary; the PEFT adapter reloads onto the GGUF
    base with the same logits, the merged folder generates the same tokens, and
    `dora generate` completes a prompt."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dora_core.worker.cli import main
    from dora_core.worker.models import load_model, load_tokenizer, resolve_model

    for preset in (MODELS["smollm2-135m"], DATASETS["bbc-summary"]):
        if not preset.available:
            pytest.skip(f"{preset.name} is not installed ({preset.install_hint})")
    job = {
        "task": "causal-lm",
        "model": "smollm2-135m",
        "dataset": "bbc-summary",
        "max_train_samples": 12,
        "max_dev_samples": 2,
        "max_length": 128,
        "batch_size": 4,
        "max_steps": 3,
        "target_rank": 2,
        "prune_interval": 1,
        "max_gen_samples": 2,
        "max_new_tokens": 8,
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
    }
    outcome = train(parse_job_config(job), progress=False)
    assert outcome.status == "completed"
    assert {"rouge1", "rouge2", "rougeL", "perplexity", "loss"} <= set(outcome.result["metrics"])
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"

    source = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(source)
    base = load_model(source, 0, tokenizer.pad_token_id, task="causal-lm")
    adapted = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    assert main(["merge", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    batch = tokenizer(["The film was"], return_tensors="pt")
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, adapted(**batch).logits, rtol=1e-4, atol=1e-4
        )
        assert (
            merged.generate(**batch, **kwargs).tolist()
            == adapted.generate(**batch, **kwargs).tolist()
        )

    capsys.readouterr()
    code = main(
        [
            "generate",
            str(tmp_path / "run"),
            "--prompt",
            "The film was",
            "--json",
            "--max-new-tokens",
            "4",
        ]
    )
    assert code == 0
    [text] = json.loads(capsys.readouterr().out)
    assert text and len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 5


def test_a_gguf_preset_is_converted_once_into_the_same_float_model(tmp_path, monkeypatch) -> None:
    """The cached float copy gives the GGUF file's logits and tokens, and is made only once."""
    import time

    import torch

    from dora_core.worker.models import ModelSource, load_model, load_tokenizer, resolve_model

    if not MODELS["smollm2-135m"].available:
        pytest.skip("smollm2-135m is not installed")
    monkeypatch.setenv("DORA_CACHE_DIR", str(tmp_path / "cache"))
    copy = resolve_model("smollm2-135m")
    assert copy.gguf_file is None and Path(copy.location).is_relative_to(tmp_path / "cache")
    started = time.monotonic()
    assert resolve_model("smollm2-135m") == copy  # found, not converted again
    assert time.monotonic() - started < 5
    preset = MODELS["smollm2-135m"].path()
    gguf = ModelSource(str(preset.parent), preset.name)
    tok_gguf, tok_copy = load_tokenizer(gguf), load_tokenizer(copy)
    text = "Summarize the article.\n\nSummary: a fine film"
    assert tok_copy(text)["input_ids"] == tok_gguf(text)["input_ids"]
    assert tok_copy.chat_template == tok_gguf.chat_template and tok_copy.chat_template
    batch = tok_gguf([text], return_tensors="pt")
    a = load_model(gguf, 0, tok_gguf.pad_token_id, task="causal-lm").eval()
    b = load_model(copy, 0, tok_copy.pad_token_id, task="causal-lm").eval()
    with torch.no_grad():
        torch.testing.assert_close(a(**batch).logits, b(**batch).logits, rtol=0, atol=0)
