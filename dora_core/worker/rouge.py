"""ROUGE-1/2/L F1 of generated text against references (the paper's XSum metric).

Scored with the ``rouge-score`` package (Google's reimplementation of the
original Perl script's n-gram and LCS definitions), Porter stemming on, as
in the XSum literature; the corpus score is the mean of the per-example F1.
"""

from __future__ import annotations

from collections.abc import Sequence

KEYS = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F1 per ROUGE variant over the pairs; zeros when there are none."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return dict.fromkeys(KEYS, 0.0)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(KEYS), use_stemmer=True)
    totals = dict.fromkeys(KEYS, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for key in KEYS:
            totals[key] += scores[key].fmeasure
    return {key: total / len(predictions) for key, total in totals.items()}
