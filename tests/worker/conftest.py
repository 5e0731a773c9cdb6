"""Tiny models and data built in the test session: no downloads, seconds to train.

A word-level tokenizer over a small vocabulary, a 2-layer BERT and a 2-layer
Llama saved as ordinary transformers folders (so they go through the same
"local folder" path as any user model), and a synthetic sentiment CSV whose
label is learnable from the words.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

POSITIVE = ["good", "great", "fine", "superb", "lovely", "brilliant", "warm", "funny"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "poor", "cold", "flat"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "really", "quite", "a", "story"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "sentiment": "pos" if label else "neg"})
    return rows


def _tokenizer(bos_eos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + POSITIVE + NEGATIVE + FILLER)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if not bos_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    # Decoder style: no pad token of its own (the worker must fall back to EOS).
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


# Both tiny models: 2 layers of width 32; a large init range gives random features that
# differ between inputs.
SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "initializer_range": 0.3,
}


def save_tiny(tmp_path_factory, name: str, model_class, config, tokenizer) -> Path:
    """A model built from ``config`` (seed 0) and its tokenizer, saved as a transformers
    folder: the tiny stand-ins for the families no preset ships offline."""
    import torch

    folder = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level tokenizer, as a transformers folder."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _tokenizer(bos_eos=False)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=0, **SIZES)
    return save_tiny(
        tmp_path_factory, "tiny-bert", BertForSequenceClassification, config, tokenizer
    )


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama-style decoder whose tokenizer has no pad token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(bos_eos=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=1,
        eos_token_id=tokenizer.eos_token_id,
        **SIZES,
    )
    return save_tiny(tmp_path_factory, "tiny-llama", LlamaForCausalLM, config, tokenizer)


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(sentiment_rows(240))
    return path


def tiny_job(model: Path, data: Path, out: Path, **overrides) -> dict:
    """A job dict that trains the tiny model on the tiny data in a few seconds."""
    job = {
        "model": str(model),
        "dataset": str(data),
        "text_column": "review",
        "label_column": "sentiment",
        "max_length": 16,
        "dev_fraction": 0.2,
        "method": "dora",
        "target_rank": 2,
        "max_steps": 40,
        "batch_size": 8,
        "lr": 0.01,
        "prune_interval": 2,
        "eval_every": 10,
        "dropout": 0.1,
        "seed": 7,
        "output_dir": str(out),
        "device": "cpu",
    }
    job.update(overrides)
    return job


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and the machine is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
