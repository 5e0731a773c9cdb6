"""The method over a real training loop on a tiny BERT: scores, events, counts, phases."""

from __future__ import annotations

import math

import pytest
import torch

from dora_core import DoraConfig, inject
from dora_core.compaction import unwrap_optimizer
from tests.dora_core.reference import cubic_budget, naive_importance, top_k_lowest_index
from tests.dora_core.tiny_models import batch, tiny_bert

# T=40: t_i = 6, t_f = 20, freeze at 20; events every 3 steps from 6, plus 20.
CFG = {"total_steps": 40, "target_rank": 4, "prune_interval": 3, "dropout": 0.0}
EVENTS = [6, 9, 12, 15, 18, 20]


def make(seed=0, **overrides):
    model = tiny_bert(seed)
    tuner = inject(model, DoraConfig(**{**CFG, **overrides}))
    model.train()
    return model, tuner


def optimizer_for(tuner, lr=1e-2):
    return torch.optim.AdamW(tuner.parameters(), lr=lr, weight_decay=0.01)


def train_step(model, tuner, opt, t, accum=1, size=8):
    for k in range(accum):
        inputs = batch(1000 + t * accum + k, size=size)
        loss = model(**inputs).loss + tuner.regularization()
        (loss / accum).backward()
    torch.nn.utils.clip_grad_norm_(list(tuner.parameters()), 1.0)
    opt.step()


def test_scores_events_and_exact_counts_follow_the_definition():
    model, tuner = make()
    opt = optimizer_for(tuner)
    layers = list(tuner.layers.values())
    L, r0 = len(layers), 6
    ema = [torch.zeros(r0, dtype=torch.float64) for _ in layers]
    seen_events = []
    for t in range(1, 31):
        train_step(model, tuner, opt, t)
        if t <= 20:  # EMA runs until pruning ends
            for i, layer in enumerate(layers):
                ema[i] = 0.9 * ema[i] + 0.1 * naive_importance(
                    layer.dora_A.detach(), layer.dora_B.detach(), layer.dora_c.detach()
                )
        before = tuner.factors()
        info = tuner.step(opt)
        opt.zero_grad()
        scores = tuner.scores()
        for i, name in enumerate(tuner.layers):
            torch.testing.assert_close(scores[name].double(), ema[i], rtol=1e-4, atol=1e-7)
        b = cubic_budget(t, 6, 20, 6, 4)
        assert info.b == pytest.approx(b)
        assert info.target == math.floor(b * L + 0.5)
        if info.event is None:
            continue
        seen_events.append((t, info.event))
        flat = torch.cat(list(scores.values())).tolist()
        want = top_k_lowest_index(flat, info.target)
        got = torch.cat(list(tuner.masks().values())).tolist()
        assert got == want
        assert info.live == info.target == sum(want) == sum(tuner.rank_pattern().values())
        if info.event == "prune":  # soft: only c of pruned components is zeroed
            for name, (A, B, c, mask) in tuner.factors().items():
                A0, B0, c0, _ = before[name]
                assert torch.equal(A, A0) and torch.equal(B, B0)
                assert torch.equal(c[mask], c0[mask]) and not c[~mask].any()
    assert seen_events == [(t, "prune") for t in EVENTS[:-1]] + [(20, "mask_frozen")]
    assert tuner.budget() == {"step": 30, "target": 48, "live": 48, "b": 4.0}


def test_soft_pruned_components_can_recover():
    model, tuner = make()
    opt = optimizer_for(tuner)
    for t in range(1, 13):
        train_step(model, tuner, opt, t)
        tuner.step(opt)
        opt.zero_grad()
    pruned = {n: ~m for n, m in tuner.masks().items() if (~m).any()}
    assert pruned, "the event at step 12 pruned something"
    train_step(model, tuner, opt, 13)
    revived = sum(int(tuner.layers[n].dora_c.detach()[m].ne(0).sum()) for n, m in pruned.items())
    assert revived > 0  # the optimizer moves c_i off zero again


def test_frozen_mask_without_optimizer_contributes_and_learns_nothing():
    model, tuner = make(compact=True)
    opt = optimizer_for(tuner)
    for t in range(1, 21):
        train_step(model, tuner, opt, t)
        tuner.step()  # no optimizer: compaction waits, the frozen mask applies
        opt.zero_grad()
    assert tuner.frozen and not tuner.compacted
    frozen_scores = tuner.scores()
    for t in range(21, 24):
        train_step(model, tuner, opt, t)
        for layer in tuner.layers.values():
            dead = ~layer.mask
            assert not layer.dora_A.grad[dead].any() and not layer.dora_B.grad[:, dead].any()
            assert not layer.dora_c.grad[dead].any()
        tuner.step()
        opt.zero_grad()
    for name, score in tuner.scores().items():
        assert torch.equal(score, frozen_scores[name])
    # The forward equals W0 x + s * B_live diag(c_live) A_live x.
    layer = tuner.layers["bert.encoder.layer.1.intermediate.dense"]
    x = torch.randn(5, 32)
    live = layer.mask
    want = (
        layer.base_layer(x)
        + layer.scaling
        * ((x @ layer.dora_A[live].T) * layer.dora_c[live])
        @ layer.dora_B[:, live].T
    )
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want)


def test_regularization_is_eta_times_dem_then_off_after_freeze():
    model, tuner = make(dem_weight=0.3)
    layers = list(tuner.layers.values())
    n = 6 * len(layers)
    want = sum((layer.dora_A.var(dim=1) + layer.dora_B.var(dim=0)).sum().item() for layer in layers)
    assert tuner.regularization().item() == pytest.approx(0.3 * want / n, rel=1e-5)
    opt = optimizer_for(tuner)
    for t in range(1, 21):
        train_step(model, tuner, opt, t)
        tuner.step(opt)
        opt.zero_grad()
    assert tuner.regularization().item() == 0.0
    _, keep = make(dem_weight=0.3, dem_after_freeze=True)
    assert keep.regularization().item() > 0
    _, off = make(dem_weight=0.0)
    assert off.regularization().item() == 0.0


def test_gradient_accumulation_advances_once_per_optimizer_step():
    # 2 micro-batches of 4 == 1 batch of 8 (no dropout): same scores and masks.
    runs = []
    for accum in (1, 2):
        model, tuner = make(seed=3, dem_weight=0.0)
        model.eval()  # no dropout anywhere: the two runs see the same function
        opt = optimizer_for(tuner)
        for t in range(1, 16):
            if accum == 1:
                train_step(model, tuner, opt, t, accum=1, size=8)
            else:  # the same 8 examples, split in two
                full = batch(1000 + t, size=8)
                for half in (slice(0, 4), slice(4, 8)):
                    micro = {k: v[half] for k, v in full.items()}
                    (model(**micro).loss / 2).backward()
                torch.nn.utils.clip_grad_norm_(list(tuner.parameters()), 1.0)
                opt.step()
            tuner.step(opt)
            opt.zero_grad()
        assert tuner.global_step == 15
        runs.append((tuner.scores(), tuner.masks()))
    (s1, m1), (s2, m2) = runs
    for name in s1:
        torch.testing.assert_close(s1[name], s2[name], rtol=1e-4, atol=1e-6)
        assert torch.equal(m1[name], m2[name])


def test_compacted_training_matches_masked_training():
    runs = {}
    for compact in (True, False):
        model, tuner = make(seed=5, compact=compact, dropout=0.1)
        opt = optimizer_for(tuner)
        torch.manual_seed(11)  # same dropout draws in both runs
        for t in range(1, 31):
            train_step(model, tuner, opt, t)
            info = tuner.step(opt)
            opt.zero_grad()
            if t == 20:
                assert info.compacted is compact
                if compact:
                    with torch.no_grad():
                        model.eval()
                        after = model(**batch(7)).logits
                        model.train()
                    runs["at_freeze"] = after
            if t == 20 and not compact:
                with torch.no_grad():
                    model.eval()
                    torch.testing.assert_close(model(**batch(7)).logits, runs["at_freeze"])
                    model.train()
        model.eval()
        with torch.no_grad():
            runs[compact] = (model(**batch(99)).logits, tuner.factors(), tuner.param_counts())
    (logits_c, factors_c, counts_c), (logits_m, factors_m, counts_m) = runs[True], runs[False]
    torch.testing.assert_close(logits_c, logits_m, rtol=1e-5, atol=1e-6)
    for name, (A, B, c, mask) in factors_c.items():
        A_m, B_m, c_m, mask_m = factors_m[name]
        assert mask.all() and A.shape[0] == int(mask_m.sum())
        torch.testing.assert_close(A, A_m[mask_m], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(B, B_m[:, mask_m], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, c_m[mask_m], rtol=1e-5, atol=1e-6)
    assert counts_c["adapter"] < counts_m["adapter"]


def test_compaction_slices_optimizer_state_and_keeps_parameter_identity():
    model, tuner = make(seed=2)
    opt = optimizer_for(tuner)
    for t in range(1, 20):
        train_step(model, tuner, opt, t)
        tuner.step(opt)
        opt.zero_grad()
    layer = tuner.layers["bert.encoder.layer.0.output.dense"]
    A_obj = layer.dora_A
    ids_before = [id(p) for p in opt.param_groups[0]["params"]]
    train_step(model, tuner, opt, 20)
    exp_avg = opt.state[layer.dora_B]["exp_avg"].clone()
    info = tuner.step(opt)
    assert info.event == "mask_frozen" and info.compacted
    live = layer.index  # original ids of the rows kept
    assert layer.dora_A is A_obj and [id(p) for p in opt.param_groups[0]["params"]] == ids_before
    assert layer.rank == int(layer.mask.sum()) == live.numel()
    assert torch.equal(opt.state[layer.dora_B]["exp_avg"], exp_avg[:, live])
    assert layer.dora_A.grad is None
    assert tuner.param_counts()["adapter"] == sum(
        int(m.sum()) * (d_in + d_out + 1)
        for m, (d_out, d_in) in zip(
            tuner.masks().values(), (r["shape"] for r in tuner.modules_info()), strict=True
        )
    )
    with pytest.raises(RuntimeError, match="merged"):
        tuner.merge()
        tuner.step(opt)
    tuner.unmerge()


def test_compact_before_freeze_and_unsliceable_state_are_errors():
    model, tuner = make()
    with pytest.raises(RuntimeError, match="freezes at step 20"):
        tuner.compact()
    opt = torch.optim.Adafactor(tuner.parameters(), lr=1e-2)
    for t in range(1, 21):
        train_step(model, tuner, opt, t)
        if t < 20:
            tuner.step(opt)
        opt.zero_grad()
    with pytest.raises(ValueError, match="cannot slice Adafactor state"):
        tuner.step(opt)


def test_compaction_while_the_last_loss_graph_is_still_referenced():
    # A typical loop keeps `loss` alive across tuner.step(); its graph still
    # holds autograd's per-parameter gradient accumulators with the old shapes.
    model, tuner = make()
    opt = optimizer_for(tuner)
    for t in range(1, 25):
        loss = model(**batch(t)).loss + tuner.regularization()
        loss.backward()
        opt.step()
        info = tuner.step(opt)
        opt.zero_grad()
        assert info.compacted == (t == 20)
    assert tuner.compacted and torch.isfinite(loss)


def test_compaction_through_accelerates_optimizer_wrapper():
    from accelerate import Accelerator

    model, tuner = make(seed=4)
    opt = Accelerator(cpu=True).prepare(optimizer_for(tuner))
    for t in range(1, 21):
        train_step(model, tuner, opt, t)
        info = tuner.step(opt)
        opt.zero_grad()
    assert info.compacted
    inner = opt.optimizer
    for layer in tuner.layers.values():
        assert inner.state[layer.dora_A]["exp_avg"].shape == layer.dora_A.shape
    train_step(model, tuner, opt, 21)  # AdamW keeps going on the sliced state
    assert unwrap_optimizer(opt) is inner
    with pytest.raises(TypeError, match=r"not a torch\.optim\.Optimizer"):
        unwrap_optimizer(object())


def test_init_rank_equal_to_target_prunes_nothing():
    """b(0) = b(T) (the paper's Table 6 baseline): a flat budget, every component stays live."""
    model, tuner = make(init_rank=4)
    opt = optimizer_for(tuner)
    L = len(tuner.layers)
    events = []
    for t in range(1, 41):
        train_step(model, tuner, opt, t)
        info = tuner.step(opt)
        opt.zero_grad()
        assert info.b == 4.0 and info.target == 4 * L
        if info.event is not None:
            events.append(info.event)
    assert events[-1] == "mask_frozen"
    assert all(mask.all() for mask in tuner.masks().values())
    assert tuner.rank_pattern() == dict.fromkeys(tuner.layers, 4)


@pytest.mark.parametrize("how", ["compact=False", "step() without optimizer"])
def test_pruned_components_read_zero_after_the_freeze_under_momentum(how, tmp_path):
    """AdamW's momentum moves c of pruned rows after the freeze (their gradient is 0 but
    exp_avg is not); the gate hides them, and factors / state / export must read c == 0."""
    model, tuner = make(compact=how != "compact=False")
    opt = optimizer_for(tuner, lr=5e-2)
    for t in range(1, 31):
        train_step(model, tuner, opt, t)
        if how == "compact=False":
            tuner.step(opt)
        else:
            tuner.step()
        opt.zero_grad()
    # One more optimizer step without tuner.step(): the parameter itself has moved, the
    # premise of the bug (without momentum this test would prove nothing).
    train_step(model, tuner, opt, 31)
    moved = any(layer.dora_c[~layer.mask].abs().sum() > 0 for layer in tuner.layers.values())
    assert moved and tuner.frozen and not tuner.compacted
    x = batch(7)
    model.eval()  # no BERT dropout: two forwards must agree
    with torch.no_grad():
        logits = model(**x).logits
    factors = tuner.factors()
    assert sum(int((~mask).sum()) for *_, mask in factors.values()) == 6 * 12 - 4 * 12
    for name, (_, _, c, mask) in factors.items():
        assert not c[~mask].any(), name
    weights = tuner.state_dict()["weights"]
    for name, layer in tuner.layers.items():
        assert not weights[f"{name}.dora_c"][~layer.mask].any()
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, logits)  # outputs unchanged
    tuner.export_peft(tmp_path / "adapter")
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    ranks = {k: v.shape for k, v in exported.items() if "lora_A" in k}
    assert sum(s[0] for s in ranks.values()) == sum(tuner.rank_pattern().values())
