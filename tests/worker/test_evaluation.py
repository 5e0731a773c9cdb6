"""Dev metrics against scikit-learn's reference implementation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from dora_core.worker.train.evaluation import accuracy, macro_f1


def test_hand_computed_case() -> None:
    labels = [0, 0, 1, 1, 2]
    preds = [0, 1, 1, 1, 0]
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 0 -> 0
    assert accuracy(preds, labels) == 3 / 5
    assert abs(macro_f1(preds, labels, 3) - (0.5 + 0.8 + 0.0) / 3) < 1e-12


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 5).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(
                st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=40
            ),
        )
    )
)
def test_matches_scikit_learn(case) -> None:
    k, pairs = case
    preds, labels = [p for p, _ in pairs], [y for _, y in pairs]
    assert accuracy(preds, labels) == accuracy_score(labels, preds)
    expected = f1_score(labels, preds, average="macro", labels=list(range(k)), zero_division=0)
    assert abs(macro_f1(preds, labels, k) - expected) < 1e-12
