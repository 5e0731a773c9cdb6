"""Tiny transformers built from configs (no downloads) and random batches for them."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

VOCAB = 64


def tiny_bert(seed: int = 0, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_distilbert(seed: int = 0) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=48, max_position_embeddings=64
    )
    return DistilBertForSequenceClassification(cfg).eval()


# Decoder-only tiny models: the vocabulary and special token ids they share.
DECODER = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}


def tiny_gpt2(seed: int = 0) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=3, **DECODER)
    return GPT2ForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=2,
        **DECODER,
    )
    return LlamaForSequenceClassification(cfg).eval()


def batch(seed: int, size: int = 8, length: int = 12, labels: int = 2) -> dict[str, torch.Tensor]:
    """Random token ids (no padding) with labels."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(2, VOCAB, (size, length), generator=gen),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "labels": torch.randint(0, labels, (size,), generator=gen),
    }
