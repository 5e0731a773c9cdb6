"""Downsampling keeps what must stay (pruning steps, ends) and spreads the rest evenly."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.downsample import pick_steps


def test_short_series_come_back_whole() -> None:
    assert pick_steps([1, 5, 9], 3) == [1, 5, 9]
    assert pick_steps([], 10) == []


def test_evenly_spread_hand_case() -> None:
    # 0..100 in 5 points: ends plus quarters
    assert pick_steps(list(range(101)), 5) == [0, 25, 50, 75, 100]


def test_pruning_steps_survive_thinning() -> None:
    steps = list(range(0, 1000))
    keep = [333, 334, 335, 777]
    picked = pick_steps(steps, 20, keep)
    assert set(keep) <= set(picked) and len(picked) <= 20
    assert picked[0] == 0 and picked[-1] == 999


def test_keep_steps_not_in_the_series_are_ignored() -> None:
    assert 5000 not in pick_steps(list(range(100)), 10, [5000])


def test_too_many_pruning_steps_are_thinned_themselves() -> None:
    steps = list(range(100))
    picked = pick_steps(steps, 5, keep=range(0, 100, 2))
    assert len(picked) == 5 and picked[-1] == 99
    assert set(picked) <= set(range(0, 100, 2)) | {99}


def test_max_points_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        pick_steps([1, 2], 0)


@given(
    steps=st.lists(st.integers(0, 10_000), unique=True, max_size=400).map(sorted),
    max_points=st.integers(1, 60),
    keep=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_properties(steps: list[int], max_points: int, keep: list[int]) -> None:
    picked = pick_steps(steps, max_points, keep)
    assert picked == sorted(set(picked))
    assert set(picked) <= set(steps)
    assert len(picked) <= max_points
    if len(steps) <= max_points:
        assert picked == steps
        return
    assert picked[-1] == steps[-1]
    must = {steps[0], steps[-1], *(k for k in keep if k in set(steps))}
    if len(must) <= max_points:
        assert must <= set(picked)
    if not keep and max_points >= 2:
        # evenly spread: no gap (in positions of the series) much wider than n / (points - 1)
        pos = [steps.index(s) for s in picked]
        widest = max(b - a for a, b in itertools.pairwise(pos))
        assert widest <= math.ceil((len(steps) - 1) / (max_points - 1)) + 1
