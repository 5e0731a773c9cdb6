"""What the dashboard reads: rank matrices, score series, budget, scalars, events.

Each query touches only the rows it returns: the rank matrix reads one
packed step; a score series reads at most ``max_points`` of them, and only
its modules' bytes of each (which steps, is decided on the primary-key index
alone, see ``sample_steps``). Long column-only results go through the
session's connection, skipping the ORM's per-row work. Results are built with
``model_construct``: the values come from our own tables, validated on the
way in, and re-validating 100k floats per answer would cost more than the
query (routers send them with ``json_response``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection, LargeBinary, Row, Select, func, select
from sqlalchemy.orm import Session

from backend.downsample import pick_steps
from backend.errors import Invalid, NotFound
from backend.models import BudgetPoint, Event, Module, Scalar, ScoreStep
from backend.schemas import (
    BudgetSeries,
    EventPublic,
    ModuleSeries,
    RankMatrix,
    Sample,
    SampleSet,
    ScalarSeries,
    ScoreSeries,
    Series,
)
from backend.scorepack import SCORE_DTYPE, Layout, live_counts
from backend.services.runs import ensure_run, modules_of
from dora_core.contracts.rankgrid import rank_grid

# Event kinds whose steps a downsampled score series always keeps.
PRUNING_KINDS = ("prune", "mask_frozen")
# The texts of one generated sample (a ``samples`` event's data, docs/protocol.md).
SAMPLE_FIELDS = ("prompt", "reference", "prediction")
# Rows per ``step IN (...)`` query: below SQLite's oldest variable limit (999).
_IN_CHUNK = 900


def _core(session: Session) -> Connection:
    """The session's connection: long column-only results skip the ORM's per-row work."""
    return session.connection()


def _after(column: object, since_step: int | None) -> list:
    return [] if since_step is None else [column > since_step]


def score_steps(session: Session, run_id: int, since_step: int | None = None) -> list[int]:
    """Steps that have scores, ascending (``since_step``: only those after it)."""
    ensure_run(session, run_id)
    query = (
        select(ScoreStep.step)
        .where(ScoreStep.run_id == run_id, *_after(ScoreStep.step, since_step))
        .order_by(ScoreStep.step)
    )
    return list(_core(session).execute(query).scalars())


def _layout(modules: Sequence[Module]) -> Layout:
    return Layout(tuple(m.name for m in modules), tuple(m.rank for m in modules))


def rank_matrix(session: Session, run_id: int, step: int | None) -> RankMatrix:
    """Live components per (layer, module type) at the last recorded step <= ``step``."""
    ensure_run(session, run_id)
    modules = modules_of(session, run_id)
    query = select(ScoreStep.step, ScoreStep.masks).where(ScoreStep.run_id == run_id)
    if step is not None:
        query = query.where(ScoreStep.step <= step)
    row = session.execute(query.order_by(ScoreStep.step.desc()).limit(1)).first()
    live = live_counts(_layout(modules), row.masks) if row is not None else None

    in_blocks = [(i, m) for i, m in enumerate(modules) if m.layer is not None]
    layers, types, live_grid = rank_grid(
        (m.layer, m.type, int(live[i]) if live is not None else None) for i, m in in_blocks
    )
    grid = {
        "live": live_grid,
        "rank": rank_grid((m.layer, m.type, m.rank) for _, m in in_blocks).matrix,
        "modules": rank_grid((m.layer, m.type, m.name) for _, m in in_blocks).matrix,
    }
    return RankMatrix.model_construct(
        step=row.step if row is not None else None, layers=layers, types=types, **grid
    )


def _rows_in(conn: Connection, query: Select, column: Any, values: Sequence[int]) -> list[Row]:
    """``query`` restricted to ``column IN values``, in chunks the database accepts."""
    rows: list[Row] = []
    for start in range(0, len(values), _IN_CHUNK):
        rows += conn.execute(query.where(column.in_(values[start : start + _IN_CHUNK]))).all()
    return rows


def sample_steps(
    conn: Connection, step: Any, where: Sequence[Any], max_points: int, keep: Iterable[int] = ()
) -> list[int]:
    """``pick_steps`` over the steps matching ``where`` (read from the primary-key index)."""
    steps = list(conn.execute(select(step).where(*where).order_by(step)).scalars())
    return pick_steps(steps, max_points, keep)


def score_series(
    session: Session,
    run_id: int,
    module: str | None,
    layer: int | None,
    max_points: int,
    since_step: int | None,
) -> ScoreSeries:
    """Scores and masks over time for one module or every module of one layer."""
    ensure_run(session, run_id)
    if (module is None) == (layer is None):
        raise Invalid.at(("query", "module"), "give exactly one of module=NAME or layer=L")
    modules = modules_of(session, run_id)
    layout = _layout(modules)
    wanted = [
        i
        for i, m in enumerate(modules)
        if (m.name == module if module is not None else m.layer == layer)
    ]
    if not wanted:
        what = f"module {module!r}" if module is not None else f"modules in layer {layer}"
        raise NotFound(f"run {run_id} has no {what}")

    conn = _core(session)
    where = (ScoreStep.run_id == run_id, *_after(ScoreStep.step, since_step))
    keep = conn.execute(
        select(Event.step).where(
            Event.run_id == run_id, Event.kind.in_(PRUNING_KINDS), *_after(Event.step, since_step)
        )
    ).scalars()
    chosen = sample_steps(conn, ScoreStep.step, where, max_points, keep)
    # the wanted modules' slots as one byte range (a layer's modules are registered together),
    # so only those bytes of each row leave the database
    slots = slice(layout.span(wanted[0]).start, layout.span(wanted[-1]).stop)
    part = func.substr(
        ScoreStep.scores,
        slots.start * SCORE_DTYPE.itemsize + 1,
        (slots.stop - slots.start) * SCORE_DTYPE.itemsize,
        type_=LargeBinary,
    )
    query = select(ScoreStep.step, part, ScoreStep.masks).where(*where)
    rows = sorted(_rows_in(conn, query, ScoreStep.step, chosen), key=lambda r: r[0])
    width = slots.stop - slots.start
    scores = np.frombuffer(b"".join(r[1] for r in rows), dtype=SCORE_DTYPE).reshape(-1, width)
    packed = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8)
    masks = np.unpackbits(packed.reshape(-1, (layout.total + 7) // 8), axis=1, count=layout.total)
    series = []
    for i in wanted:
        span = layout.span(i)
        series.append(
            ModuleSeries.model_construct(
                name=modules[i].name,
                type=modules[i].type,
                scores=scores[:, span.start - slots.start : span.stop - slots.start].tolist(),
                masks=masks[:, span].tolist(),
            )
        )
    return ScoreSeries.model_construct(steps=[r[0] for r in rows], modules=series)


def budget_series(session: Session, run_id: int, since_step: int | None) -> BudgetSeries:
    ensure_run(session, run_id)
    rows = session.execute(
        select(BudgetPoint.step, BudgetPoint.target, BudgetPoint.live, BudgetPoint.b)
        .where(BudgetPoint.run_id == run_id, *_after(BudgetPoint.step, since_step))
        .order_by(BudgetPoint.step)
    ).all()
    return BudgetSeries.model_construct(
        steps=[r.step for r in rows],
        target=[r.target for r in rows],
        live=[r.live for r in rows],
        b=[r.b for r in rows],
    )


def scalar_keys(session: Session, run_id: int) -> list[str]:
    ensure_run(session, run_id)
    return list(
        session.scalars(
            select(Scalar.key).where(Scalar.run_id == run_id).distinct().order_by(Scalar.key)
        )
    )


def scalar_series(
    session: Session, run_id: int, keys: Sequence[str], max_points: int, since_step: int | None
) -> ScalarSeries:
    """Each key's values, downsampled to ``max_points``; keys without data are left out."""
    ensure_run(session, run_id)
    out: dict[str, Series] = {}
    conn = _core(session)
    for key in dict.fromkeys(keys):
        where = (Scalar.run_id == run_id, Scalar.key == key, *_after(Scalar.step, since_step))
        steps = sample_steps(conn, Scalar.step, where, max_points)
        if not steps:
            continue
        value_at = dict(
            _rows_in(conn, select(Scalar.step, Scalar.value).where(*where), Scalar.step, steps)
        )
        out[key] = Series.model_construct(steps=steps, values=[value_at[s] for s in steps])
    return ScalarSeries.model_construct(series=out)


def events(
    session: Session, run_id: int, kind: str | None, since_step: int | None, limit: int
) -> list[EventPublic]:
    """Oldest first; with ``limit``, the latest ``limit`` of them."""
    ensure_run(session, run_id)
    query = select(Event).where(Event.run_id == run_id, *_after(Event.step, since_step))
    if kind:
        query = query.where(Event.kind == kind)
    latest = session.scalars(query.order_by(Event.step.desc(), Event.id.desc()).limit(limit))
    return [
        EventPublic(
            step=e.step, kind=e.kind, message=e.message, data=e.data, created_at=e.created_at
        )
        for e in reversed(list(latest))
    ]


def _sample_text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _samples_of(data: Any) -> list[Sample]:
    """The samples of one event's data, ``{"samples": [{prompt, reference, prediction}]}``.

    Event data is stored as the worker sent it (only its JSON is checked at ingest), so a
    malformed entry is left out and a missing text is empty, rather than a 500 here.
    """
    rows = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return [
        Sample(**{key: _sample_text(row.get(key)) for key in SAMPLE_FIELDS})
        for row in rows
        if isinstance(row, dict)
    ]


def samples(session: Session, run_id: int, step: int | None) -> SampleSet:
    """The generated dev samples of the latest generating evaluation (or of ``step``), and
    every step that has samples. A step reported twice (a resumed run) shows its last report."""
    ensure_run(session, run_id)
    where = (Event.run_id == run_id, Event.kind == "samples")
    steps = list(session.scalars(select(Event.step).where(*where).distinct().order_by(Event.step)))
    if step is not None and step not in steps:
        listed = ", ".join(map(str, steps)) if steps else "none yet"
        raise NotFound(f"run {run_id} has no samples at step {step} (steps with samples: {listed})")
    if not steps:
        return SampleSet(step=None, steps=[], samples=[])
    shown = steps[-1] if step is None else step
    data = session.scalar(
        select(Event.data).where(*where, Event.step == shown).order_by(Event.id.desc()).limit(1)
    )
    return SampleSet(step=shown, steps=steps, samples=_samples_of(data))
