"""Live adapter parameters from weight shapes, computed by hand."""

from __future__ import annotations

from dora_core.contracts.params import component_size, live_params

ATTN = [384, 384]  # [d_out, d_in] of a MiniLM attention projection
FFN_IN = [1536, 384]  # intermediate.dense
FFN_OUT = [384, 1536]  # output.dense


def test_a_component_is_a_row_of_a_a_column_of_b_and_the_gate() -> None:
    assert component_size(ATTN, gated=True) == 384 + 384 + 1 == 769
    assert component_size(ATTN, gated=False) == 768
    assert component_size(FFN_IN, gated=True) == 1536 + 384 + 1 == 1921
    assert component_size(FFN_OUT, gated=False) == 384 + 1536 == 1920


def test_live_params_sum_live_components_times_their_size() -> None:
    modules = [(3, ATTN), (0, ATTN), (2, FFN_IN), (1, FFN_OUT)]
    # gated: 3 x 769 + 0 + 2 x 1921 + 1 x 1921 = 2307 + 3842 + 1921
    assert live_params(modules, gated=True) == 8070
    # plain LoRA: 3 x 768 + 3 x 1920 = 2304 + 5760
    assert live_params(modules, gated=False) == 8064


def test_no_modules_or_nothing_live_cost_nothing() -> None:
    assert live_params([], gated=True) == 0
    assert live_params([(0, FFN_IN), (0, ATTN)], gated=True) == 0


def test_an_iterator_is_read_once() -> None:
    assert live_params(((r, ATTN) for r in (1, 2)), gated=True) == 3 * 769
