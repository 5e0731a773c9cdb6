"""Live adapter parameters from module shapes, checked by hand."""

from __future__ import annotations

from dashboard.params import component_size, live_adapter_params

MODULES = [
    {"index": 0, "name": "l0.q", "layer": 0, "type": "q", "shape": [384, 384], "rank": 3},
    {"index": 1, "name": "l0.ffn", "layer": 0, "type": "ffn", "shape": [1536, 384], "rank": 3},
    {"index": 2, "name": "l1.q", "layer": 1, "type": "q", "shape": [384, 384], "rank": 3},
    {"index": 3, "name": "l1.ffn", "layer": 1, "type": "ffn", "shape": [1536, 384], "rank": 3},
]
MATRIX = {
    "step": 10,
    "layers": [0, 1],
    "types": ["q", "ffn"],
    "live": [[2, 3], [0, 1]],
    "rank": [[3, 3], [3, 3]],
    "modules": [["l0.q", "l0.ffn"], ["l1.q", "l1.ffn"]],
}


def test_component_size_counts_a_b_and_the_gate() -> None:
    assert component_size([1536, 384], gated=True) == 1536 + 384 + 1
    assert component_size([1536, 384], gated=False) == 1920


def test_live_params_sum_live_components_times_their_size() -> None:
    # q: 384 + 384 (+1 gate), ffn: 1536 + 384 (+1); live q 2 + 0, ffn 3 + 1
    assert live_adapter_params("dora", MODULES, MATRIX) == 2 * 769 + 4 * 1921
    assert live_adapter_params("lora", MODULES, MATRIX) == 2 * 768 + 4 * 1920


def test_live_params_unknown_when_the_matrix_cannot_cover_every_module() -> None:
    pooler = {"index": 4, "name": "pooler", "layer": None, "type": "pooler", "shape": [384, 384]}
    assert live_adapter_params("dora", [*MODULES, pooler], MATRIX) is None
    before_scores = {**MATRIX, "step": None, "live": [[None, None], [None, None]]}
    assert live_adapter_params("dora", MODULES, before_scores) is None
    assert live_adapter_params("full", [], MATRIX) is None
