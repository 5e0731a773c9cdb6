"""Budget b(t) (Eq. 9 as corrected) and the pruning calendar."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dora_core import DoraConfig, budget_schedule
from dora_core.schedule import budget_target, is_prune_step


def test_hand_computed_values():
    # T=100, t_i=15, t_f=50 -> pruning span 35; b(0)=12, b(T)=8.
    args = {"total_steps": 100, "init_rank": 12, "target_rank": 8}
    assert budget_schedule(0, **args) == 12
    assert budget_schedule(15, **args) == 12
    t = 15 + 35 / 2  # xi = 1/2 -> 8 + 4 * (1 - 1/8) = 11.5
    assert budget_schedule(t, **args) == pytest.approx(11.5)
    assert budget_schedule(50, **args) == 8
    assert budget_schedule(100, **args) == 8
    assert budget_schedule(22, **args) == pytest.approx(8 + 4 * (1 - (7 / 35) ** 3))


def test_no_pruning_phase_is_an_error():
    with pytest.raises(ValueError, match="leave no pruning phase"):
        budget_schedule(0, 10, 12, 8, warmup_frac=0.5, final_frac=0.5)


def test_prune_calendar():
    cfg = DoraConfig(total_steps=100, prune_interval=10)  # t_i = 15, freeze at 50
    events = [t for t in range(0, 120) if is_prune_step(cfg, t)]
    assert events == [15, 25, 35, 45, 50]
    cfg = DoraConfig(total_steps=100, prune_interval=7)
    assert [t for t in range(120) if is_prune_step(cfg, t)] == [15, 22, 29, 36, 43, 50]


schedules = st.tuples(
    st.integers(1, 5000),  # T
    st.integers(1, 64),  # b(T)
    st.integers(1, 64),  # r' - b(T)
    st.floats(0, 0.6),
    st.floats(0, 0.6),
).filter(lambda a: a[0] - math.floor(a[3] * a[0] + 0.5) - math.floor(a[4] * a[0] + 0.5) >= 1)


@settings(max_examples=200, deadline=None)
@given(schedules)
def test_schedule_is_monotone_bounded_and_hits_both_ends(params):
    total, target, extra, wf, ff = params
    init = target + extra
    t_i = math.floor(wf * total + 0.5)
    t_end = total - math.floor(ff * total + 0.5)
    values = [budget_schedule(t, total, init, target, wf, ff) for t in range(total + 1)]
    assert all(target <= v <= init for v in values)
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert all(v == init for v in values[: t_i + 1])
    assert all(v == target for v in values[t_end:])


@settings(max_examples=200, deadline=None)
@given(schedules, st.integers(1, 50), st.integers(1, 200))
def test_calendar_always_ends_at_the_freeze_and_stays_in_the_phase(params, interval, layers):
    total, target, extra, wf, ff = params
    cfg = DoraConfig(
        total_steps=total,
        target_rank=target,
        init_rank=target + extra,
        warmup_frac=wf,
        final_frac=ff,
        prune_interval=interval,
    )
    events = [t for t in range(total + 2) if is_prune_step(cfg, t)]
    assert events[-1] == cfg.freeze_step
    assert all(cfg.warmup_steps <= t <= cfg.freeze_step for t in events)
    gaps = [b - a for a, b in itertools.pairwise(events)]
    assert all(g <= interval for g in gaps)
    targets = [
        budget_target(budget_schedule(t, total, target + extra, target, wf, ff), layers)
        for t in events
    ]
    assert targets[-1] == target * layers
    assert all(a >= b for a, b in itertools.pairwise(targets))
