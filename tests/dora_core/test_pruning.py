"""Exact-count selection: never over-prune on ties, deterministic."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dora_core.pruning import select_top


def test_ties_keep_the_lower_index():
    scores = torch.tensor([0.5, 0.2, 0.5, 0.5, 0.1])
    assert select_top(scores, 2).tolist() == [True, False, True, False, False]
    assert select_top(torch.zeros(4), 3).tolist() == [True, True, True, False]


def test_nan_ranks_last_and_bad_counts_are_errors():
    scores = torch.tensor([float("nan"), 0.0, 1.0])
    assert select_top(scores, 2).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="keep must be in"):
        select_top(scores, 4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5]) | st.floats(0, 10), min_size=1, max_size=80
    ),
    st.data(),
)
def test_keeps_exactly_k_of_the_highest(values, data):
    scores = torch.tensor(values, dtype=torch.float64)
    k = data.draw(st.integers(0, len(values)))
    mask = select_top(scores, k)
    assert int(mask.sum()) == k
    if 0 < k < len(values):
        assert scores[mask].min() >= scores[~mask].max()
    # Among equal scores at the boundary, the kept ones come first.
    for value in set(values):
        idx = [i for i, v in enumerate(values) if v == value]
        kept = [bool(mask[i]) for i in idx]
        assert kept == sorted(kept, reverse=True)
    assert torch.equal(select_top(scores, k), mask)
