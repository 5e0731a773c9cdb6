"""ROUGE-1/2/L F1 of generated text against references (the paper's XSum metric).

Scored with the ``rouge-score`` package (Google's reimplementation of the
original Perl script's n-gram and LCS definitions), Porter stemming on, as
in the XSum literature; the corpus score is the mean of the per-example F1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

KEYS = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F1 per ROUGE variant over the pairs; zeros when there are none."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return dict.fromkeys(KEYS, 0.0)
    from rouge_score import rouge_scorer

    _spare_stderr_from_absl()
    scorer = rouge_scorer.RougeScorer(list(KEYS), use_stemmer=True)
    totals = dict.fromkeys(KEYS, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for key in KEYS:
            totals[key] += scores[key].fmeasure
    return {key: total / len(predictions) for key, total in totals.items()}


def _spare_stderr_from_absl() -> None:
    """rouge-score imports absl, whose log handler keeps the ``sys.stderr`` of that moment
    and closes it in ``logging.shutdown`` (which ``logging.config.dictConfig`` runs too, as
    uvicorn does on start) unless it is still ``sys.stderr`` then. Under pytest's capture, a
    notebook's or any tool's redirect, that closes a stream someone else owns; the process's
    own stderr is never closed. A stream the user chose for absl (a log file) is kept."""
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is None or sys.__stderr__ is None:
        return
    handler = absl_logging.get_absl_handler().python_handler
    if handler.stream is sys.stderr and sys.stderr is not sys.__stderr__:
        handler.stream = sys.__stderr__
