"""The methods behind one interface: the head's own learning rate, r' per method, registry."""

from __future__ import annotations

import pytest
import torch

from dora_core.contracts.job import parse_job_config
from dora_core.contracts.wire import METHODS
from dora_core.worker.train.methods import METHOD_CLASSES, build_method
from dora_core.worker.train.plan import resolve_method
from tests.dora_core.tiny_models import batch, tiny_bert

# A job must name both; these tests build the model themselves.
PRESETS = {"model": "minilm", "dataset": "rt-snippets"}


def test_every_contract_method_has_a_class() -> None:
    assert set(METHOD_CLASSES) == set(METHODS)


@pytest.mark.parametrize("method", ["dora", "lora", "adalora", "full"])
def test_head_lr_puts_exactly_the_classifier_in_its_own_group(method: str) -> None:
    model = tiny_bert()
    job = parse_job_config(
        {**PRESETS, "method": method, "target_rank": 2, "lr": 0.01, "head_lr": 0.001}
    )
    built = build_method(model, resolve_method(job, total_steps=20))
    groups = built.param_groups(job.lr, job.head_lr)
    assert [g["lr"] for g in groups] == [0.01, 0.001]
    names = {id(p): n for n, p in built.model.named_parameters()}
    head = [names[id(p)] for p in groups[1]["params"]]
    assert len(head) == 2 and all("classifier" in n for n in head)  # weight and bias
    assert not any("classifier" in names[id(p)] for p in groups[0]["params"])
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in built.parameters())
    # Without head_lr: one group, every parameter at lr (the optimizer state stays as before).
    [single] = built.param_groups(job.lr, None)
    assert single["lr"] == 0.01 and len(single["params"]) == len(everything)


def test_a_head_lr_step_moves_the_head_by_its_own_rate() -> None:
    """Plain SGD makes the update size readable: delta = -lr * grad per parameter."""
    model = tiny_bert()
    job = parse_job_config(
        {**PRESETS, "method": "lora", "target_rank": 2, "lr": 0.1, "head_lr": 1e-4}
    )
    built = build_method(model, resolve_method(job, total_steps=20))
    opt = torch.optim.SGD(built.param_groups(job.lr, job.head_lr))
    head = built.head_parameters()[0]
    before = head.detach().clone()
    built.model(**batch(0)).loss.backward()
    grad = head.grad.detach().clone()
    opt.step()
    torch.testing.assert_close(head.detach(), before - 1e-4 * grad)


@pytest.mark.parametrize(
    ("method", "init_rank", "expected"),
    [("dora", None, 3), ("adalora", 5, 5), ("lora", None, 2), ("full", None, None)],
)
def test_start_rank_per_method(method: str, init_rank: int | None, expected: int | None) -> None:
    job = parse_job_config({**PRESETS, "method": method, "target_rank": 2, "init_rank": init_rank})
    spec = resolve_method(job, total_steps=20)
    assert spec.start_rank == expected
    assert job.start_rank == expected
