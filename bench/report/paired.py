"""Paired comparisons across seeds: same seed = same split, same init, same data order.

Pure functions. A pair is one (dataset, b(T), seed) run under two settings; the
difference of their dev scores removes what the seed decides. Two tests, both
two-sided: the exact sign test (how many pairs went each way; ties dropped) and
the paired t-test (the mean difference against its standard error).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    n: int  # pairs
    mean_diff: float  # mean of (b - a)
    wins: int  # pairs where b > a
    losses: int  # pairs where b < a
    sign_p: float  # exact two-sided sign test
    t_p: float | None  # paired t-test, None with fewer than 2 pairs or no spread

    def describe(self, scale: float = 100.0) -> str:
        """ "+1.23 points over 12 pairs (8 up, 4 down; sign test p = 0.39, paired t p = 0.21)"."""
        t = f", paired t p = {self.t_p:.2g}" if self.t_p is not None else ""
        return (
            f"{self.mean_diff * scale:+.2f} points over {self.n} pairs ({self.wins} up, "
            f"{self.losses} down; sign test p = {self.sign_p:.2g}{t})"
        )

    def significant(self, alpha: float = 0.05) -> bool:
        """Both tests below ``alpha`` (a difference we would call evidence)."""
        return self.sign_p < alpha and self.t_p is not None and self.t_p < alpha


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial p-value of ``wins`` vs ``losses`` under p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_t(diffs: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test on ``diffs`` (Student t, n - 1 dof)."""
    n = len(diffs)
    if n < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return None
    t = statistics.fmean(diffs) / (sd / math.sqrt(n))
    from scipy.stats import t as student

    return float(2 * student.sf(abs(t), n - 1))


def compare(pairs: Iterable[tuple[float, float]]) -> Paired | None:
    """(a, b) scores per pair -> the comparison of b against a; None without pairs."""
    diffs = [b - a for a, b in pairs]
    if not diffs:
        return None
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    return Paired(
        n=len(diffs),
        mean_diff=statistics.fmean(diffs),
        wins=wins,
        losses=losses,
        sign_p=sign_test(wins, losses),
        t_p=paired_t(diffs),
    )
