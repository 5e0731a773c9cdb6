"""Rank-heatmap row labels: "encoder i" / "decoder j" for encoder-decoders, "layer N" else.

The slow test lays out a rank matrix exactly as the API does (``rank_grid`` over the
worker's (block, type, name) per adapted module, ``dora_core.targets.block_position``)
from real T5 and BART models built from tiny configs; the expected labels are counted
by hand from the configs' layer counts.
"""

from __future__ import annotations

import pytest

from dashboard import figures
from dora_core.contracts.rankgrid import rank_grid


def _matrix(rows: list[tuple[int, str, str]]) -> dict:
    """A /rank-matrix answer for (layer, type, module name) rows, every module at r' = 4."""
    grid = rank_grid(rows)
    return {
        "step": 10,
        "layers": grid.layers,
        "types": grid.types,
        "modules": grid.matrix,
        "rank": [[None if n is None else 4 for n in row] for row in grid.matrix],
        "live": [[None if n is None else 2 for n in row] for row in grid.matrix],
    }


def test_bert_and_decoder_only_names_keep_layer_numbers() -> None:
    bert = _matrix(
        [
            (i, "attention.self.query", f"bert.encoder.layer.{i}.attention.self.query")
            for i in (0, 1)
        ]
    )
    llama = _matrix([(i, "self_attn.q_proj", f"model.layers.{i}.self_attn.q_proj") for i in (0, 1)])
    for matrix in (bert, llama):  # BERT's names hold "encoder.layer.i": one stack is no pair
        assert figures.layer_labels(matrix) == {0: "layer 0", 1: "layer 1"}
        assert list(figures.rank_heatmap(matrix).data[0].y) == ["layer 0", "layer 1"]


def test_peft_prefixed_bart_names_and_the_cross_attention_module_name() -> None:
    # "encoder_attn" inside a decoder block is no encoder block; a PEFT wrapper's prefix is fine
    rows = [
        (0, "fc1", "base_model.model.model.encoder.layers.0.fc1"),
        (1, "fc1", "base_model.model.model.decoder.layers.0.fc1"),
        (1, "encoder_attn.q_proj", "base_model.model.model.decoder.layers.0.encoder_attn.q_proj"),
    ]
    assert figures.layer_labels(_matrix(rows)) == {0: "encoder 0", 1: "decoder 0"}


def _real_matrix(model) -> dict:
    from dora_core.targets import block_position, default_targets, name_matches, supported_modules

    suffixes = default_targets(model)
    rows = []
    for name in supported_modules(model):
        if any(name_matches(name, s) for s in suffixes):
            layer, mtype = block_position(model, name)
            rows.append((layer, mtype, name))
    return _matrix(rows)


@pytest.mark.slow
def test_real_t5_and_bart_rows_are_named_by_stack() -> None:
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=32,
            d_model=8,
            d_kv=4,
            d_ff=16,
            num_heads=2,
            num_layers=2,
            num_decoder_layers=3,
        )
    )
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=32,
            d_model=8,
            encoder_layers=3,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=16,
            decoder_ffn_dim=16,
            max_position_embeddings=16,
        )
    )
    t5_matrix, bart_matrix = _real_matrix(t5), _real_matrix(bart)
    # T5: 2 encoder blocks (global 0-1), then 3 decoder blocks (global 2-4)
    assert t5_matrix["layers"] == [0, 1, 2, 3, 4]
    want_t5 = ["encoder 0", "encoder 1", "decoder 0", "decoder 1", "decoder 2"]
    assert list(figures.layer_labels(t5_matrix).values()) == want_t5
    fig = figures.rank_heatmap(t5_matrix)
    assert list(fig.data[0].y) == want_t5
    # an encoder block has no cross-attention: its hover says so under the block's own name
    cross = t5_matrix["types"].index("EncDecAttention.q")
    assert fig.data[0].text[1][cross] == "encoder 1 · EncDecAttention.q<br>not adapted"
    # BART: 3 encoder layers, then 2 decoder layers
    want_bart = ["encoder 0", "encoder 1", "encoder 2", "decoder 0", "decoder 1"]
    assert list(figures.layer_labels(bart_matrix).values()) == want_bart
    # the difference heatmap of two runs of one model names its rows the same way
    diff = figures.difference_heatmap("a", bart_matrix, "b", bart_matrix)
    assert list(diff.data[0].y) == want_bart
