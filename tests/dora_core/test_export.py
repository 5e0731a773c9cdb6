"""Shipping: the real PEFT loads our export with the same logits; merge and unmerge."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from dora_core import DoraConfig, inject
from dora_core.layer import DoraLayer
from tests.dora_core.tiny_models import batch, tiny_bert, tiny_gpt2, tiny_llama

CFG = {"total_steps": 40, "target_rank": 4, "prune_interval": 3}  # freeze at 20


def trained(build, steps, labels=2, **overrides):
    model = build(0)
    tuner = inject(model, DoraConfig(**{**CFG, **overrides}))
    opt = torch.optim.AdamW(tuner.parameters(), lr=2e-2)
    model.train()
    for t in range(1, steps + 1):
        (model(**batch(t, labels=labels)).loss + tuner.regularization()).backward()
        opt.step()
        tuner.step(opt)
        opt.zero_grad()
    return model.eval(), tuner


def logits(model, labels=2):
    with torch.no_grad():
        return model(**batch(1234, labels=labels)).logits


@pytest.mark.parametrize(
    ("build", "steps", "labels"),
    [(tiny_bert, 14, 2), (tiny_bert, 24, 2), (tiny_gpt2, 24, 3), (tiny_llama, 24, 2)],
    ids=["bert-soft-phase", "bert-compacted", "gpt2-conv1d", "llama"],
)
def test_peft_loads_the_export_with_identical_logits(build, steps, labels, tmp_path):
    model, tuner = trained(build, steps, labels)
    want = logits(model, labels)
    out = tuner.export_peft(tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    ranks = {n: int((layer.dora_c * layer.gate != 0).sum()) for n, layer in tuner.layers.items()}
    assert config["rank_pattern"] == {n: r for n, r in ranks.items() if r > 0}
    assert config["fan_in_fan_out"] == (build is tiny_gpt2)
    if steps >= 20:
        assert ranks == tuner.rank_pattern()  # after the freeze: exactly the live counts

    peft_model = PeftModel.from_pretrained(build(0), out).eval()
    for name, rank in config["rank_pattern"].items():
        module = peft_model.get_submodule(f"base_model.model.{name}")
        assert module.lora_A["default"].weight.shape[0] == rank
        assert module.scaling["default"] == 1.0
    lora_layers = [m for m in peft_model.modules() if hasattr(m, "lora_A") and m.lora_A]
    assert len(lora_layers) == len(config["rank_pattern"])
    torch.testing.assert_close(logits(peft_model, labels), want, rtol=1e-4, atol=1e-5)
    # and the untrained base differs, so the comparison means something
    assert not torch.allclose(logits(build(0), labels), want, atol=1e-3)


def test_export_of_an_identity_adapter_is_refused(tmp_path):
    tuner = inject(tiny_bert(), DoraConfig(**CFG))
    with pytest.raises(ValueError, match="adapter is the identity; train before exporting"):
        tuner.export_peft(tmp_path)


@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2], ids=["linear", "conv1d"])
def test_merge_and_unmerge(build, tmp_path):
    labels = 3 if build is tiny_gpt2 else 2
    model, tuner = trained(build, 24, labels)
    want = logits(model, labels)
    base_weights = {n: layer.base_layer.weight.clone() for n, layer in tuner.layers.items()}
    tuner.merge()
    tuner.merge()  # idempotent
    assert not any(isinstance(m, DoraLayer) for m in model.modules())
    assert not any("dora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model, labels), want, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path / "merged")
    reloaded = type(model).from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, labels), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge"):
        tuner.step()

    tuner.unmerge()
    assert sum(isinstance(m, DoraLayer) for m in model.modules()) == len(tuner.layers)
    torch.testing.assert_close(logits(model, labels), want, rtol=1e-5, atol=1e-6)
    for name, layer in tuner.layers.items():
        torch.testing.assert_close(layer.base_layer.weight, base_weights[name], rtol=0, atol=1e-6)
