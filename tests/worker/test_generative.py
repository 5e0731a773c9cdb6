"""Generative jobs end to end on tiny models: causal-lm (Llama, GPT-2) and seq2seq (T5, BART).

What is checked against an independent computation: the exported PEFT adapter, loaded by
the real ``peft`` package onto a fresh base, gives the trained model's logits; the merged
model saved by ``dora merge`` loads with plain transformers and generates the same tokens;
the dev loss is a manual token-weighted cross-entropy; ROUGE in result.json is ROUGE of
samples.jsonl's texts; bad input is one line naming the field.
"""

from __future__ import annotations

import json
import math
import random
import signal
from pathlib import Path

import pytest
import torch

from dora_core.contracts.job import JobConfigError, parse_job_config
from dora_core.contracts.rundir import ADAPTER_DIR, SAMPLES_FILE
from dora_core.worker.cli import main
from dora_core.worker.gendata import IGNORE, GenEncoded
from dora_core.worker.rouge import rouge
from dora_core.worker.telemetry import read_metrics
from dora_core.worker.train.generation import dev_loss, left_pad, token_loss_sums
from dora_core.worker.train.loop import train
from tests.worker.conftest import FILLER, NEGATIVE, POSITIVE, _tokenizer, save_tiny

# --- data and models --------------------------------------------------------------------------


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """'<four filler words> <a sentiment word>' -> 'good' / 'bad': learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [*rng.sample(FILLER, 4), rng.choice(POSITIVE if label else NEGATIVE)]
        rows.append({"prompt": " ".join(words), "completion": "good" if label else "bad"})
    return rows


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(160)), encoding="utf-8")
    return path


def _seq2seq_tokenizer():
    """Word-level, [PAD] = 0, every sequence ends with [EOS] (as T5's and BART's do)."""
    from tokenizers import processors

    tok = _tokenizer(bos_eos=True)
    eos = tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A [EOS]", special_tokens=[("[EOS]", eos)]
    )
    tok.pad_token = "[PAD]"
    return tok


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _seq2seq_tokenizer()
    config = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",  # T5 v1.1: wi_0 / wi_1
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
        initializer_factor=3.0,
    )
    return save_tiny(tmp_path_factory, "tiny-t5", T5ForConditionalGeneration, config, tok)


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    tok = _seq2seq_tokenizer()
    config = BartConfig(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        forced_eos_token_id=None,
        init_std=0.3,
    )
    return save_tiny(tmp_path_factory, "tiny-bart", BartForConditionalGeneration, config, tok)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tokenizer(bos_eos=True)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        initializer_range=0.3,
    )
    return save_tiny(tmp_path_factory, "tiny-gpt2", GPT2LMHeadModel, config, tok)


def gen_job(model: Path, data: Path, out: Path, **overrides) -> dict:
    job = {
        "task": "causal-lm",
        "model": str(model),
        "dataset": str(data),
        "max_length": 16,
        "dev_fraction": 0.2,
        "method": "dora",
        "target_rank": 2,
        "max_steps": 30,
        "batch_size": 8,
        "lr": 0.01,
        "prune_interval": 2,
        "eval_every": 15,
        "seed": 3,
        "max_new_tokens": 3,
        "max_gen_samples": 12,
        "output_dir": str(out),
        "device": "cpu",
    }
    return {**job, **overrides}


def run(job: dict):
    return train(parse_job_config(job), progress=False)


# --- pure pieces ------------------------------------------------------------------------------


def test_token_loss_sums_shift_for_causal_and_weight_every_token_alike() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    labels = torch.tensor([[IGNORE, 2, 3, IGNORE], [IGNORE, IGNORE, 5, 1]])
    # Causal: position t predicts label t + 1 -> pairs (0,2) (1,3) for row 0, (1,5) (2,1) row 1.
    pairs = [(0, 0, 2), (0, 1, 3), (1, 1, 5), (1, 2, 1)]
    want = sum(-torch.log_softmax(logits[r, t], -1)[y] for r, t, y in pairs)
    total, count = token_loss_sums(logits, labels, causal=True)
    assert count == 4 and total == pytest.approx(float(want), rel=1e-5)
    # Seq2seq: logits and labels are aligned.
    aligned = [(0, 1, 2), (0, 2, 3), (1, 2, 5), (1, 3, 1)]
    want = sum(-torch.log_softmax(logits[r, t], -1)[y] for r, t, y in aligned)
    total, count = token_loss_sums(logits, labels, causal=False)
    assert count == 4 and total == pytest.approx(float(want), rel=1e-5)


def test_left_pad_puts_every_prompt_against_the_right_edge() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_dev_loss_weights_tokens_not_batches(tiny_llama) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    tok = _tokenizer(bos_eos=True)
    rows = [tok(t)["input_ids"] for t in ("the film was good", "a story", "quite bad really dull")]
    labels = [[IGNORE, *r[1:]] for r in rows]
    dev = GenEncoded(rows, labels, [1, 1, 1])
    # Per example, unpadded: sum of next-token losses, then one mean over all target tokens.
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            logp = torch.log_softmax(model(torch.tensor([r])).logits[0], -1)
            total += float(sum(-logp[t - 1, r[t]] for t in range(1, len(r))))
            count += len(r) - 1
    got = dev_loss(model, dev, tok.eos_token_id, 2, torch.device("cpu"), causal=True)
    assert got == pytest.approx(total / count, rel=1e-5)


# --- whole jobs -------------------------------------------------------------------------------


def peft_logits(base_dir: Path, adapter: Path, auto: str, batch: dict) -> torch.Tensor:
    import transformers
    from peft import PeftModel

    base = getattr(transformers, auto).from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        return model(**batch).logits


def trained_logits(run_dir: Path, batch: dict) -> torch.Tensor:
    from dora_core.worker.train.artifacts import trained_model

    model, _, _ = trained_model(run_dir)
    with torch.no_grad():
        return model.eval()(**batch).logits


def causal_batch(tok) -> dict:
    ids = [tok(t)["input_ids"] for t in ("the film was really", "a dull story plot")]
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(2, len(ids[0]), dtype=torch.long),
    }


@pytest.mark.parametrize("method", ["dora", "lora", "adalora"])
def test_a_causal_lm_job_trains_reports_rouge_and_exports_a_peft_adapter(
    method, tiny_llama, pairs_file, tmp_path
) -> None:
    out = run(gen_job(tiny_llama, pairs_file, tmp_path / "run", method=method))
    assert out.status == "completed"
    metrics = out.result["metrics"]
    assert set(metrics) == {"loss", "perplexity", "rouge1", "rouge2", "rougeL"}
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert out.result["task"] == "causal-lm"
    assert out.result["best"]["key"] == "eval/rougeL"
    assert out.result["params"]["head"] == 0  # the LM head stays frozen

    samples = [
        json.loads(line) for line in (tmp_path / "run" / SAMPLES_FILE).read_text().splitlines()
    ]
    assert len(samples) == 12 and {s["step"] for s in samples} == {30}
    assert {s["reference"] for s in samples} <= {"good", "bad"}
    # result.json's ROUGE is ROUGE of the samples' own texts.
    again = rouge([s["prediction"] for s in samples], [s["reference"] for s in samples])
    assert metrics["rougeL"] == pytest.approx(again["rougeL"])
    events = [r for r in read_metrics(tmp_path / "run") if r["type"] == "event"]
    sent = [e for e in events if e["kind"] == "samples"]
    assert len(sent) == 1 and sent[0]["data"]["samples"][0]["prompt"] == samples[0]["prompt"]

    adapter = tmp_path / "run" / ADAPTER_DIR
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"
    assert Path(config["base_model_name_or_path"]) == tiny_llama
    batch = causal_batch(_tokenizer(bos_eos=True))
    want = trained_logits(tmp_path / "run", batch)
    got = peft_logits(tiny_llama, adapter, "AutoModelForCausalLM", batch)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_completion_only_loss_learns_the_completion(tiny_llama, pairs_file, tmp_path) -> None:
    """Trained longer, the model answers from the prompt's sentiment word: ROUGE-L beats every
    answer that ignores the prompt (a constant "good" or "bad" scores its class's share)."""
    job = gen_job(tiny_llama, pairs_file, tmp_path / "run", method="lora", max_steps=200, lr=0.02)
    out = run({**job, "eval_every": 200})
    lines = (tmp_path / "run" / SAMPLES_FILE).read_text().splitlines()
    refs = [json.loads(line)["reference"] for line in lines]
    constant = max(refs.count("good"), refs.count("bad")) / len(refs)
    assert out.result["metrics"]["rougeL"] >= constant + 1 / len(refs)


def test_merge_loads_with_plain_transformers_and_generates_the_same_tokens(
    tiny_gpt2, pairs_file, tmp_path
) -> None:
    from transformers import AutoModelForCausalLM

    from dora_core.worker.train.artifacts import trained_model

    run(gen_job(tiny_gpt2, pairs_file, tmp_path / "run", max_steps=20))
    assert main(["merge", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    adapted = trained_model(tmp_path / "run")[0].eval()
    tok = _tokenizer(bos_eos=True)
    ids = torch.tensor([tok("the movie was really")["input_ids"]])
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tok.eos_token_id}
    with torch.no_grad():
        assert merged.generate(ids, **kwargs).tolist() == adapted.generate(ids, **kwargs).tolist()
    # GPT-2's Conv1D layers: the exported adapter (fan_in_fan_out) matches too.
    batch = causal_batch(tok)
    got = peft_logits(tiny_gpt2, tmp_path / "run" / ADAPTER_DIR, "AutoModelForCausalLM", batch)
    with torch.no_grad():
        torch.testing.assert_close(got, merged(**batch).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "method"), [("t5", "dora"), ("bart", "dora"), ("t5", "lora"), ("bart", "adalora")]
)
def test_a_seq2seq_job_trains_and_its_adapter_reloads_in_peft(
    family, method, tiny_t5, tiny_bart, pairs_file, tmp_path
) -> None:
    folder = {"t5": tiny_t5, "bart": tiny_bart}[family]
    job = gen_job(folder, pairs_file, tmp_path / "run", task="seq2seq", max_steps=20, eval_every=10)
    out = run({**job, "method": method})
    assert out.result["best"]["key"] == "eval/rougeL"
    adapter = tmp_path / "run" / ADAPTER_DIR
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    # Default targets: attention, cross-attention and FFN in both stacks.
    targets = {t.rsplit(".", 1)[-1] for t in config["target_modules"]}
    want = (
        {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
        if family == "t5"
        else {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    )
    assert targets <= want and len(targets) >= 4
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        adapted = [k for k in f.keys() if "lora_A" in k]  # noqa: SIM118
    assert any(".encoder." in k for k in adapted) and any(".decoder." in k for k in adapted)
    tok = _seq2seq_tokenizer()
    enc = tok(["the film was really good", "a dull plot"], padding=True, return_tensors="pt")
    labels = tok(["good", "bad"], return_tensors="pt")["input_ids"]
    # Decoder inputs rather than labels: PEFT's AdaLoRA, loaded for inference, fails on a
    # forward that computes a loss (it has no trainable adapter for its orthogonal penalty).
    from transformers import AutoModelForSeq2SeqLM

    shift = AutoModelForSeq2SeqLM.from_pretrained(folder).prepare_decoder_input_ids_from_labels
    batch = {**enc, "decoder_input_ids": shift(labels=labels)}
    want_logits = trained_logits(tmp_path / "run", batch)
    got = peft_logits(folder, adapter, "AutoModelForSeq2SeqLM", batch)
    torch.testing.assert_close(got, want_logits, rtol=1e-4, atol=1e-5)


def test_full_fine_tuning_of_a_causal_lm_merges_to_its_own_weights(
    tiny_llama, pairs_file, tmp_path
) -> None:
    from transformers import AutoModelForCausalLM

    out = run(
        gen_job(tiny_llama, pairs_file, tmp_path / "run", method="full", max_steps=10, lr=1e-3)
    )
    assert out.result["best"]["key"] == "eval/rougeL"
    assert out.result["params"]["trainable"] == out.result["params"]["total"]
    assert main(["merge", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    batch = causal_batch(_tokenizer(bos_eos=True))
    with torch.no_grad():
        assert not torch.allclose(merged(**batch).logits, base(**batch).logits)  # it trained
        torch.testing.assert_close(merged(**batch).logits, trained_logits(tmp_path / "run", batch))


def test_dora_generate_completes_a_prompt_and_refuses_the_other_task(
    tiny_llama, pairs_file, tmp_path, capsys
) -> None:
    run(
        gen_job(
            tiny_llama, pairs_file, tmp_path / "run", method="lora", max_steps=10, eval_every=10
        )
    )
    capsys.readouterr()
    code = main(
        [
            "generate",
            str(tmp_path / "run"),
            "--prompt",
            "the film was",
            "--json",
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 0
    [text] = json.loads(capsys.readouterr().out)
    assert (
        isinstance(text, str) and len(text.split()) <= 2
    )  # word-level vocabulary: 1 token = 1 word
    assert main(["predict", str(tmp_path / "run"), "--text", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a causal-lm run; use `dora generate" in err
    assert main(["generate", str(tmp_path / "run")]) == 2
    assert "give --prompt TEXT or --messages FILE.json" in capsys.readouterr().err


def test_generate_on_a_classification_run_is_one_line(
    tiny_bert, sentiment_csv, tmp_path, capsys
) -> None:
    from tests.worker.conftest import tiny_job

    train(
        parse_job_config(tiny_job(tiny_bert, sentiment_csv, tmp_path / "run", max_steps=4)),
        progress=False,
    )
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a classification run; use `dora predict" in err


# --- bad input: one line naming the field ------------------------------------------------------


def test_seq2seq_with_a_decoder_only_model_names_the_model(
    tiny_llama, pairs_file, tmp_path
) -> None:
    with pytest.raises(JobConfigError) as err:
        run(gen_job(tiny_llama, pairs_file, tmp_path / "run", task="seq2seq"))
    [(field, message)] = err.value.errors
    assert field == "model" and "cannot be loaded for task seq2seq" in message


def test_a_completion_longer_than_max_length_names_max_length(tiny_llama, tmp_path) -> None:
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "the film", "completion": " ".join(["good"] * 30)}] * 20
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(JobConfigError) as err:
        run(gen_job(tiny_llama, data, tmp_path / "run"))
    [(field, message)] = err.value.errors
    assert field == "max_length" and "completion needs 31 tokens" in message


def test_a_chat_row_without_messages_names_messages(tiny_llama, tmp_path) -> None:
    data = tmp_path / "chat.jsonl"
    good = {
        "messages": [
            {"role": "user", "content": "the film"},
            {"role": "assistant", "content": "good"},
        ]
    }
    data.write_text("".join(json.dumps(r) + "\n" for r in [good] * 10 + [{"messages": None}]))
    template = "{% for m in messages %}{{ m['content'] }} [EOS] {% endfor %}"
    with pytest.raises(JobConfigError) as err:
        run(gen_job(tiny_llama, data, tmp_path / "run", chat_template=template))
    [(field, message)] = err.value.errors
    assert field == "messages" and "chat row 10 has no 'messages' list" in message


def test_a_classification_preset_for_a_generative_task_names_the_dataset(
    tiny_llama, tmp_path
) -> None:
    with pytest.raises(JobConfigError) as err:
        run({**gen_job(tiny_llama, Path("x"), tmp_path / "run"), "dataset": "rt-snippets"})
    [(field, message)] = err.value.errors
    assert field == "dataset" and "bbc-summary" in message


def test_head_lr_on_a_generative_job_is_refused() -> None:
    with pytest.raises(
        JobConfigError, match="head_lr: a causal-lm job trains no classification head"
    ):
        parse_job_config({"task": "causal-lm", "model": "m", "dataset": "d", "head_lr": 0.01})


# --- resume -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_generative_run_resumes_to_the_same_result(
    tiny_llama, pairs_file, tmp_path
) -> None:
    from tests.worker.test_resume import assert_same_run, start, wait_for_checkpoint

    job = gen_job(
        tiny_llama,
        pairs_file,
        tmp_path / "x",
        max_steps=240,
        checkpoint_every=40,
        eval_every=80,
        generate_every=160,
    )
    for name in ("straight", "killed"):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({**job, "output_dir": str(tmp_path / name)})
        )
    proc = start(tmp_path / "straight.json")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = start(tmp_path / "killed.json")
    wait_for_checkpoint(tmp_path / "killed", 200, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert main(["train", "--resume", str(tmp_path / "killed"), "--no-progress"]) == 0
    assert_same_run(tmp_path / "killed", tmp_path / "straight")
    a = (tmp_path / "straight" / SAMPLES_FILE).read_text()
    assert (tmp_path / "killed" / SAMPLES_FILE).read_text() == a  # nothing twice, nothing lost
