"""Exact resume: N steps straight == N/2, save, fresh model + optimizer, N/2 more."""

from __future__ import annotations

import pytest
import torch

from dora_core import DoraConfig, inject
from tests.dora_core.tiny_models import batch, tiny_bert

CFG = DoraConfig(total_steps=40, target_rank=4, prune_interval=3)  # freeze at 20


def run(model, tuner, opt, steps):
    model.train()
    for t in steps:
        (model(**batch(500 + t)).loss + tuner.regularization()).backward()
        torch.nn.utils.clip_grad_norm_(list(tuner.parameters()), 1.0)
        opt.step()
        tuner.step(opt)
        opt.zero_grad()


def fresh(seed_for_adapters):
    model = tiny_bert(0)  # the same base weights, as from_pretrained would give
    torch.manual_seed(seed_for_adapters)  # different adapter init: must be overwritten
    tuner = inject(model, CFG)
    return model, tuner


def outcome(model, tuner):
    model.eval()
    with torch.no_grad():
        logits = model(**batch(77)).logits
    return tuner.scores(), tuner.masks(), logits, tuner.budget()


@pytest.mark.parametrize(("split", "via_files"), [(12, False), (26, True)])
def test_split_run_equals_straight_run(split, via_files, tmp_path):
    total = 32
    model, tuner = fresh(1)
    opt = torch.optim.AdamW(tuner.parameters(), lr=1e-2, weight_decay=0.01)
    torch.manual_seed(5)
    run(model, tuner, opt, range(1, total + 1))
    straight = outcome(model, tuner)

    model, tuner = fresh(1)
    opt = torch.optim.AdamW(tuner.parameters(), lr=1e-2, weight_decay=0.01)
    torch.manual_seed(5)
    run(model, tuner, opt, range(1, split + 1))
    rng, opt_state = torch.get_rng_state(), opt.state_dict()
    if via_files:
        tuner.save(tmp_path / "dora")
    else:
        saved = tuner.state_dict()
    del model, tuner, opt

    model, tuner = fresh(2)
    if via_files:
        tuner = tuner.load(tmp_path / "dora")
    else:
        tuner.load_state_dict(saved)
    assert tuner.global_step == split and tuner.compacted == (split >= 20)
    opt = torch.optim.AdamW(tuner.parameters(), lr=1e-2, weight_decay=0.01)
    opt.load_state_dict(opt_state)
    torch.set_rng_state(rng)
    run(model, tuner, opt, range(split + 1, total + 1))
    resumed = outcome(model, tuner)

    for name in straight[0]:
        assert torch.equal(straight[0][name], resumed[0][name])
        assert torch.equal(straight[1][name], resumed[1][name])
    torch.testing.assert_close(straight[2], resumed[2], rtol=0, atol=0)
    assert straight[3] == resumed[3]


def test_load_checks_config_and_state(tmp_path):
    _, tuner = fresh(0)
    tuner.save(tmp_path)
    other = inject(tiny_bert(0), DoraConfig(total_steps=80, target_rank=4, prune_interval=3))
    with pytest.raises(ValueError, match=r"config differs in total_steps \(saved 40, here 80\)"):
        other.load(tmp_path)
    with pytest.raises(ValueError, match=r"no dora_state\.safetensors"):
        inject(tiny_bert(0), CFG).load(tmp_path / "missing")
    sd = tuner.state_dict()
    sd["weights"].pop(next(iter(sd["weights"])))
    with pytest.raises(ValueError, match="missing or has another shape"):
        inject(tiny_bert(0), CFG).load_state_dict(sd)
    assert DoraConfig.load(tmp_path) == CFG
