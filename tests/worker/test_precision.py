"""Mixed precision and gradient checkpointing, tested on CPU (bf16 autocast runs there).

What trains stays fp32 whatever the forward's precision: adapter factors,
the head, AdamW's state, the importance maths and the exported adapter.
Expectations come from the model without adapters (identity at init), the
schedule's own numbers (b(T) x L live components at the end), PEFT loading
the exported folder, and gradients computed without checkpointing.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from dora_core import DoraConfig, inject
from dora_core.contracts.job import JobConfigError, parse_job_config
from dora_core.contracts.rundir import read_metrics
from dora_core.layer import DoraLayer
from dora_core.worker.cli import main
from dora_core.worker.models import enable_checkpointing, load_model, resolve_model
from dora_core.worker.train.loop import Telemetry, train
from dora_core.worker.train.methods import build_method
from dora_core.worker.train.plan import MethodPlan, prepare
from dora_core.worker.train.precision import Amp, keep_trainable_fp32, resolve_precision
from tests.dora_core import tiny_models
from tests.worker.conftest import tiny_job

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}
SETTINGS = parse_job_config({"model": "m", "dataset": "d", "target_rank": 2}).dora_settings()


def _spec(method: str, total_steps: int = 20) -> MethodPlan:
    return MethodPlan(method, total_steps, {**SETTINGS, "prune_interval": 2})


# --- the job's fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"device": "cpu", "precision": "fp16"}, "precision", "CUDA GPUs"),
        ({"device": "mps", "precision": "bf16"}, "precision", "fp32"),
        ({"device": "cpu", "gpus": 1}, "gpus", "set gpus to 0"),
        ({"device": "mps", "processes": 2}, "processes", "one process"),
        ({"gpus": 2, "processes": 3}, "processes", "one process per GPU"),
        ({"device": "cuda", "processes": 2}, "processes", "set gpus to 2"),
        ({"gpus": 65}, "gpus", "less than or equal to 64"),
        ({"precision": "fp8"}, "precision", "'auto', 'fp32', 'bf16' or 'fp16'"),
    ],
)
def test_placement_fields_that_cannot_go_together_are_named(fields, field, fragment) -> None:
    with pytest.raises(JobConfigError) as info:
        parse_job_config({"model": "m", "dataset": "d", **fields})
    [(named, message)] = info.value.errors
    assert named == field and fragment in message, message


@pytest.mark.parametrize(
    ("fields", "gpus", "processes"),
    [
        ({}, 0, 1),
        ({"device": "cuda"}, 1, 1),  # a cuda job names no count: it gets one GPU
        ({"gpus": 2}, 2, 2),  # one rank per GPU
        ({"gpus": 3, "device": "cuda", "processes": 3}, 3, 3),
        ({"processes": 2}, 0, 2),  # gloo ranks without GPUs
        ({"device": "cpu", "processes": 4}, 0, 4),
    ],
)
def test_what_a_launcher_reserves_and_starts(fields, gpus, processes) -> None:
    job = parse_job_config({"model": "m", "dataset": "d", **fields})
    assert (job.gpu_count, job.process_count) == (gpus, processes)


def test_precision_resolves_against_the_device(monkeypatch) -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "mps") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    from dora_core.worker.train import precision

    monkeypatch.setattr(precision, "_bf16_on_cuda", lambda: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("fp16", "cuda") == "fp16"
    monkeypatch.setattr(precision, "_bf16_on_cuda", lambda: False)  # e.g. a V100
    assert resolve_precision("auto", "cuda") == "fp32"
    with pytest.raises(JobConfigError, match="does not support bf16"):
        resolve_precision("bf16", "cuda")
    with pytest.raises(JobConfigError, match="CUDA GPUs"):
        resolve_precision("fp16", "cpu")  # device auto that found no GPU


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"device": "auto", "precision": "fp16"}, "precision", "CUDA GPUs"),
        ({"device": "mps"}, "device", "mps is not available"),
        ({"device": "cpu", "precision": "fp16"}, "precision", "emulated"),
    ],
)
def test_a_device_or_precision_this_machine_lacks_is_one_line(
    tiny_bert, sentiment_csv, tmp_path, capsys, fields, field, fragment
) -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(tiny_job(tiny_bert, sentiment_csv, tmp_path / "run", **fields)))
    assert main(["train", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"dora train: error: {field}: ") and fragment in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- the library under autocast ----------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_models.tiny_bert, tiny_models.tiny_llama])
def test_identity_at_init_under_bf16_autocast(build) -> None:
    base = build()
    adapted = copy.deepcopy(base)
    tuner = inject(adapted, DoraConfig(total_steps=20, target_rank=2))
    batch = tiny_models.batch(0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), torch.autocast(**BF16):
        want, got = base(**inputs).logits, adapted(**inputs).logits
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)  # c = 0: exactly the base model, also in bf16
    with torch.no_grad():  # and the comparison can fail: a non-zero gate changes the output
        next(iter(tuner.layers.values())).dora_c.fill_(1.0)
        with torch.autocast(**BF16):
            assert not torch.equal(adapted(**inputs).logits, want)


@pytest.mark.parametrize("method", ["dora", "lora", "adalora"])
def test_a_bf16_base_trains_fp32_adapters_head_and_optimizer_state(tiny_bert, method) -> None:
    """The frozen base loaded in bf16 (what a GPU run does): everything that trains is fp32."""
    model = load_model(resolve_model(str(tiny_bert)), 2, 0, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    torch.manual_seed(0)
    trained = build_method(model, _spec(method))
    keep_trainable_fp32(trained.model)
    trainable = [p for p in trained.model.parameters() if p.requires_grad]
    frozen = [p for p in trained.model.parameters() if not p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    assert {p.dtype for p in frozen} == {torch.bfloat16}  # the base keeps its memory saving
    assert {id(p) for p in trained.head_parameters()} <= {id(p) for p in trainable}
    assert trained.head_parameters()  # the head trains, in fp32 too
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)  # ids within the tiny tokenizer's 31 words
    batch = {
        "input_ids": torch.randint(5, 31, (8, 10), generator=gen),
        "attention_mask": torch.ones(8, 10, dtype=torch.long),
        "labels": torch.randint(0, 2, (8,), generator=gen),
    }
    with torch.autocast(**BF16):
        loss = trained.model(**batch).loss
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
    optimizer.step()
    trained.step(1, optimizer)
    states = [s for s in optimizer.state.values() if s]
    assert states and {s["exp_avg"].dtype for s in states} == {torch.float32}


def test_importance_of_a_bf16_base_layer_is_fp32() -> None:
    layer = DoraLayer(torch.nn.Linear(8, 6).to(torch.bfloat16), 4, 8.0, 0.0)
    assert {p.dtype for p in (layer.dora_A, layer.dora_B, layer.dora_c)} == {torch.float32}
    assert layer.ema.dtype == torch.float32


# --- a whole run -------------------------------------------------------------------------


def test_a_bf16_dora_run_on_cpu_prunes_and_exports_an_fp32_adapter(
    tiny_bert, sentiment_csv, tmp_path
) -> None:
    from peft import PeftModel

    from dora_core.worker.train.artifacts import trained_model

    job = parse_job_config(
        tiny_job(tiny_bert, sentiment_csv, tmp_path / "run", precision="bf16", max_steps=40)
    )
    outcome = train(job, telemetry=Telemetry(api_url=None), progress=False)
    assert outcome.status == "completed"
    run = outcome.run_dir
    assert "precision bf16" in (run / "log.txt").read_text()
    records = read_metrics(run)
    losses = [
        r["values"]["loss"] for r in records if r["type"] == "scalars" and "loss" in r["values"]
    ]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    # Pruning decisions were made: r' = 3 on 12 layers at the start, b(T) = 2 each at the end.
    masks = [r["masks"] for r in records if r["type"] == "scores"]
    assert sum(map(sum, masks[0].values())) == 36
    assert sum(map(sum, masks[-1].values())) == 24
    assert any(r["type"] == "event" and r["kind"] == "prune" for r in records)
    assert sum(outcome.result["rank_pattern"].values()) == 24
    # The adapter ships in fp32.
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert weights and {t.dtype for t in weights.values()} == {torch.float32}
    # PEFT's model from the exported folder (fp32) gives the trained model's logits, as the
    # run computed them (bf16 autocast), within bf16's precision.
    labels = json.loads((run / "split.json").read_text())["label_names"]
    base = load_model(resolve_model(str(tiny_bert)), len(labels), 0, labels)
    exported = PeftModel.from_pretrained(base, run / "adapter").eval()
    model, tokenizer, _ = trained_model(run)
    inputs = tokenizer(
        ["good film", "a dull boring plot", "the acting was superb"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        want = exported(**inputs).logits
        with torch.autocast(**BF16):
            got = model.eval()(**inputs).logits.float()
    assert want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-7 * want.abs().max().item())


# --- fp16's loss scaling (the machinery, device-agnostic) ----------------------------------


def test_fp16_scaler_unscales_before_the_clip_and_skips_an_overflowing_step() -> None:
    amp = Amp("fp16", torch.device("cpu"))
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scale = amp.scaler.get_scale()
    amp.backward((param**2).sum())
    assert torch.equal(param.grad, 2 * param.detach() * scale)  # scaled by the backward
    amp.unscale(optimizer)
    torch.testing.assert_close(param.grad, 2 * param.detach())  # the true gradient to clip
    amp.step(optimizer)
    torch.testing.assert_close(param.detach(), torch.tensor([0.8, -1.6, 2.4]))
    optimizer.zero_grad()
    before = param.detach().clone()
    amp.backward(param.sum() * float("inf"))  # overflow
    amp.unscale(optimizer)
    amp.step(optimizer)
    assert torch.equal(param.detach(), before)  # the step was skipped
    assert amp.scaler.get_scale() == scale / 2  # and the scale backed off
    restored = Amp("fp16", torch.device("cpu"))
    restored.load_state_dict(amp.state_dict())  # a resumed run goes on at the same scale
    assert restored.scaler.get_scale() == scale / 2


# --- gradient checkpointing --------------------------------------------------------------


def _grads(model_fn, method: str, checkpointing: bool) -> tuple[dict, int]:
    """Adapter and head gradients of one training forward/backward, and how many times the
    adapted layers ran (checkpointing recomputes them during the backward pass)."""
    model = model_fn().train()
    torch.manual_seed(1)
    trained = build_method(model, _spec(method))
    if checkpointing:
        enable_checkpointing(trained.model)
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    for module in trained.model.modules():
        if isinstance(module, DoraLayer) or (
            type(module).__name__ == "Linear" and hasattr(module, "lora_A")
        ):
            module.register_forward_hook(count)
    with torch.no_grad():  # non-zero gates, so every factor gets a gradient
        for name, param in trained.model.named_parameters():
            if "dora_c" in name or "lora_B" in name:
                param.normal_(0, 0.5)
    torch.manual_seed(2)  # the same dropout masks in both runs
    trained.model(**tiny_models.batch(3)).loss.backward()
    grads = {n: p.grad.clone() for n, p in trained.model.named_parameters() if p.requires_grad}
    return grads, calls[0]


@pytest.mark.parametrize("method", ["dora", "lora"])
@pytest.mark.parametrize("model_fn", [tiny_models.tiny_bert, tiny_models.tiny_llama])
def test_checkpointing_gives_the_same_adapter_gradients(model_fn, method) -> None:
    plain, plain_calls = _grads(model_fn, method, checkpointing=False)
    checked, checked_calls = _grads(model_fn, method, checkpointing=True)
    # It is on: adapted layers ran again during the backward pass (non-reentrant
    # checkpointing stops recomputing once it has what the backward needs).
    assert checked_calls > plain_calls > 0
    assert plain.keys() == checked.keys()
    adapters = [n for n in plain if "dora_" in n or "lora_" in n]
    assert adapters and all(plain[n].abs().sum() > 0 for n in adapters)
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=1e-5, atol=1e-7)


def test_the_job_field_turns_checkpointing_on_in_the_worker(
    tiny_bert, sentiment_csv, tmp_path
) -> None:
    from dora_core.worker.telemetry import NullReporter
    from dora_core.worker.train.loop import Worker

    for flag in (False, True):
        job = tiny_job(tiny_bert, sentiment_csv, tmp_path / str(flag), gradient_checkpointing=flag)
        plan = prepare(parse_job_config(job))
        assert (plan.precision, plan.gradient_checkpointing) == ("fp32", flag)
        worker = Worker(plan, torch.device("cpu"), NullReporter(), 1)
        model = worker.method.model
        on = getattr(type(model), "is_activation_checkpointing", None)  # transformers >= 5
        assert (on.__get__(model) if on else model.is_gradient_checkpointing) is flag
