"""Storing one telemetry batch: validated first, then written in one transaction.

Every check runs before the first insert, and the batch's rows, the run
summary and the batch's sequence number commit together, so a rejected or
interrupted batch leaves nothing behind and a retried one is recognised by
its ``seq``. Steps only move forward within each stream (scores, budget,
each scalar key; events are a log and exempt); see docs/protocol.md. Each
stream's last step is kept in the run's row (``heads``), which ingest holds
locked, so checking the order costs no query.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from backend.errors import Invalid
from backend.models import (
    BudgetPoint,
    Event,
    IngestBatch,
    Run,
    Scalar,
    ScoreStep,
    utcnow,
)
from backend.schemas import IngestAck, ScalarsRecord, TelemetryBatch
from backend.scorepack import Layout, PackError, pack_step
from backend.services.runs import layout_of, lock_run
from dora_core.contracts.wire import FINAL_EVENT_STATUS, FINAL_STATUSES

EVAL_PREFIX = "eval/"
# Which eval scalar defines a run's "best" step, and whether higher is better: the first of
# these an eval reports, in this order. Classification reports accuracy at every eval; a
# generative run reports loss and perplexity at every eval and ROUGE only when it generates,
# so its best is ROUGE-L once it has one (its loss-only evals leave that best alone) and the
# lowest loss for plain-text language modelling, which never generates (wire.BEST_METRIC).
BEST_KEYS = (
    ("eval/accuracy", True),
    ("eval/rougeL", True),
    ("eval/macro_f1", True),
    ("eval/loss", False),
)


def ingest(session: Session, run_id: int, batch: TelemetryBatch) -> IngestAck:
    """Store a batch (or acknowledge a repeat); raise Invalid with nothing written."""
    run = lock_run(session, run_id)
    seen = session.get(IngestBatch, (run_id, batch.seq))
    if seen is not None:
        session.rollback()
        return IngestAck(seq=batch.seq, duplicate=True, step=seen.step)

    steps = [r.step for r in (*batch.scores, *batch.budget, *batch.scalars, *batch.events)]
    top = max(steps) if steps else None
    heads = run.heads if run.heads is not None else _heads_from_rows(session, run_id)
    score_rows = _score_rows(session, run_id, batch, heads.get("scores"))
    budget_rows = _budget_rows(run_id, batch, heads.get("budget"))
    scalar_rows, scalar_heads = _scalar_rows(run_id, batch.scalars, heads.get("scalars", {}))
    event_rows = _event_rows(run_id, batch)

    for model, rows in (
        (ScoreStep, score_rows),
        (BudgetPoint, budget_rows),
        (Scalar, scalar_rows),
        (Event, event_rows),
    ):
        if rows:
            session.execute(insert(model), rows)
    run.heads = {
        "scores": batch.scores[-1].step if batch.scores else heads.get("scores"),
        "budget": batch.budget[-1].step if batch.budget else heads.get("budget"),
        "scalars": scalar_heads,
    }
    _update_summary(run, batch, top)
    session.add(IngestBatch(run_id=run_id, seq=batch.seq, step=top, received_at=utcnow()))
    session.commit()
    return IngestAck(seq=batch.seq, duplicate=False, step=top)


def _check_order(steps: Sequence[int], last: int | None, field: str) -> None:
    """Steps in a stream must rise, also across batches."""
    prev = last
    for i, step in enumerate(steps):
        if prev is not None and step <= prev:
            before = "one already stored" if i == 0 else "the record before it"
            raise Invalid.at(
                ("body", field, i, "step"),
                f"step {step} does not come after step {prev} ({field}: {before}); "
                "steps only move forward within a stream",
            )
        prev = step


def _heads_from_rows(session: Session, run_id: int) -> dict[str, Any]:
    """Stream heads computed from the stored rows (a run's first batch, or a run older
    than the ``heads`` column)."""

    def last(column: Any, *where: Any) -> int | None:
        return session.scalar(select(func.max(column)).where(*where))

    scalars = session.execute(
        select(Scalar.key, func.max(Scalar.step))
        .where(Scalar.run_id == run_id)
        .group_by(Scalar.key)
    ).all()
    return {
        "scores": last(ScoreStep.step, ScoreStep.run_id == run_id),
        "budget": last(BudgetPoint.step, BudgetPoint.run_id == run_id),
        "scalars": dict(scalars),
    }


def _score_rows(
    session: Session, run_id: int, batch: TelemetryBatch, last: int | None
) -> list[dict]:
    if not batch.scores:
        return []
    layout: Layout = layout_of(session, run_id)
    if not layout.names:
        raise Invalid.at(
            ("body", "scores"), f"run {run_id} has no registered modules; register them first"
        )
    _check_order([r.step for r in batch.scores], last, "scores")
    rows = []
    for i, record in enumerate(batch.scores):
        try:
            scores, masks = pack_step(layout, record.values, record.masks)
        except PackError as exc:
            raise Invalid.at(("body", "scores", i, *exc.loc), exc.msg) from None
        rows.append({"run_id": run_id, "step": record.step, "scores": scores, "masks": masks})
    return rows


def _budget_rows(run_id: int, batch: TelemetryBatch, last: int | None) -> list[dict]:
    _check_order([r.step for r in batch.budget], last, "budget")
    return [{"run_id": run_id, **r.model_dump()} for r in batch.budget]


def finite_or_none(value: float | None) -> float | None:
    """Non-finite scalars (a diverged loss) are kept as gaps, never as invalid JSON."""
    return value if value is not None and math.isfinite(value) else None


def _scalar_rows(
    run_id: int, records: Sequence[ScalarsRecord], heads: dict[str, int]
) -> tuple[list[dict], dict[str, int]]:
    """Rows, and each key's last step afterwards (every key is its own stream)."""
    last = dict(heads)
    rows = []
    for i, record in enumerate(records):
        for key, value in record.values.items():
            if not key or len(key) > 200:
                raise Invalid.at(
                    ("body", "scalars", i, "values"), "scalar keys are 1 to 200 characters"
                )
            prev = last.get(key)
            if prev is not None and record.step <= prev:
                raise Invalid.at(
                    ("body", "scalars", i, "step"),
                    f"step {record.step} goes back: {key!r} already has a value at step {prev}",
                )
            last[key] = record.step
            rows.append(
                {"run_id": run_id, "key": key, "step": record.step, "value": finite_or_none(value)}
            )
    return rows, last


def _event_rows(run_id: int, batch: TelemetryBatch) -> list[dict]:
    if not batch.events:
        return []
    # Events are a log, not a stream: a resumed worker re-announces itself at the
    # checkpoint's step, below events it sent before, so any step is accepted.
    now = utcnow()
    for i, event in enumerate(batch.events):
        try:
            json.dumps(event.data, allow_nan=False)
        except ValueError:
            raise Invalid.at(
                ("body", "events", i, "data"), "event data must be JSON without NaN or infinity"
            ) from None
    return [
        {
            "run_id": run_id,
            "step": e.step,
            "kind": e.kind,
            "message": e.message,
            "data": e.data,
            "created_at": now,
        }
        for e in batch.events
    ]


def _update_summary(run: Run, batch: TelemetryBatch, top: int | None) -> None:
    now = utcnow()
    run.updated_at = now
    if top is not None and (run.step is None or top > run.step):
        run.step = top
    if batch.budget:
        last = batch.budget[-1]
        run.budget = {"step": last.step, "target": last.target, "live": last.live}
    for record in batch.scalars:
        _update_metrics(run, record.step, record.values.items())
    for event in batch.events:
        _apply_event(run, event.kind, event.message, now)


def _update_metrics(run: Run, step: int, values: Iterable[tuple[str, float | None]]) -> None:
    evals = {k: finite_or_none(v) for k, v in values if k.startswith(EVAL_PREFIX)}
    if not evals:
        return
    stripped = {k[len(EVAL_PREFIX) :]: v for k, v in evals.items()}
    if run.metrics_step == step and run.metrics is not None:
        run.metrics = {**run.metrics, **stripped}
    elif run.metrics_step is None or step > run.metrics_step:
        run.metrics, run.metrics_step = stripped, step
    run.best = _better(run.best, evals, step)


def _better(best: dict | None, evals: dict[str, float | None], step: int) -> dict | None:
    """The best eval so far by the first BEST_KEYS key the run reports."""
    rank = {key: i for i, (key, _) in enumerate(BEST_KEYS)}
    for key, higher in BEST_KEYS:
        value = evals.get(key)
        if value is None:
            continue
        if best is None or rank.get(best["key"], len(BEST_KEYS)) > rank[key]:
            return {"key": key, "value": value, "step": step}
        if best["key"] == key and (value > best["value"] if higher else value < best["value"]):
            return {"key": key, "value": value, "step": step}
        return best
    return best


def _apply_event(run: Run, kind: str, message: str, now: Any) -> None:
    """Status changes reported by the worker; a final status is never left."""
    if run.status in FINAL_STATUSES:
        return
    if kind == "started" and run.status == "queued":
        run.status, run.started_at = "running", run.started_at or now
    elif kind in FINAL_EVENT_STATUS:
        run.status = FINAL_EVENT_STATUS[kind]
        run.finished_at = now
        if kind == "failed":
            run.error = message or "the worker reported a failure"
