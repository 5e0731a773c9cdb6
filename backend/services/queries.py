"""What the dashboard reads: rank matrices, score series, budget, scalars, events.

Each query touches only the rows it returns: the rank matrix reads one
packed step, a score series reads at most ``max_points`` of them (the list
of steps comes from the primary-key index alone). Results are built with
``model_construct``: the values come from our own tables, validated on the
way in, and re-validating 100k floats per answer would cost more than the
query (routers send them with ``json_response``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import LargeBinary, func, select
from sqlalchemy.orm import Session

from backend.downsample import pick_steps
from backend.errors import Invalid, NotFound
from backend.models import BudgetPoint, Event, Module, Scalar, ScoreStep
from backend.schemas import (
    BudgetSeries,
    EventPublic,
    ModuleSeries,
    RankMatrix,
    ScalarSeries,
    ScoreSeries,
    Series,
)
from backend.scorepack import SCORE_DTYPE, Layout, live_counts
from backend.services.runs import ensure_run, modules_of

# Event kinds whose steps a downsampled score series always keeps.
PRUNING_KINDS = ("prune", "mask_frozen")
# Rows per ``step IN (...)`` query: below SQLite's oldest variable limit (999).
_IN_CHUNK = 900


def _after(column: object, since_step: int | None) -> list:
    return [] if since_step is None else [column > since_step]


def score_steps(session: Session, run_id: int, since_step: int | None = None) -> list[int]:
    """Steps that have scores, ascending (``since_step``: only those after it)."""
    ensure_run(session, run_id)
    return list(
        session.scalars(
            select(ScoreStep.step)
            .where(ScoreStep.run_id == run_id, *_after(ScoreStep.step, since_step))
            .order_by(ScoreStep.step)
        )
    )


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
    layers = sorted({m.layer for _, m in in_blocks})
    types = list(dict.fromkeys(m.type for _, m in in_blocks))
    row_of = {layer: r for r, layer in enumerate(layers)}
    col_of = {t: c for c, t in enumerate(types)}
    grid = {key: [[None] * len(types) for _ in layers] for key in ("live", "rank", "modules")}
    for i, m in in_blocks:
        r, c = row_of[m.layer], col_of[m.type]
        grid["live"][r][c] = int(live[i]) if live is not None else None
        grid["rank"][r][c] = m.rank
        grid["modules"][r][c] = m.name
    return RankMatrix.model_construct(
        step=row.step if row is not None else None, layers=layers, types=types, **grid
    )


def _score_rows(
    session: Session,
    run_id: int,
    steps: list[int],
    all_after: int | None,
    everything: bool,
    slots: slice,
) -> list[tuple[int, bytes, bytes]]:
    """(step, scores of ``slots`` only, all masks) for ``steps``.

    One range scan when no step was dropped, else lookups by key. Only the
    byte range of the wanted modules' scores leaves the database.
    """
    part = func.substr(
        ScoreStep.scores, slots.start * SCORE_DTYPE.itemsize + 1, _nbytes(slots), type_=LargeBinary
    )
    cols = select(ScoreStep.step, part, ScoreStep.masks).where(ScoreStep.run_id == run_id)
    if everything:
        query = cols.where(*_after(ScoreStep.step, all_after)).order_by(ScoreStep.step)
        return [tuple(r) for r in session.execute(query)]
    rows: list[tuple[int, bytes, bytes]] = []
    for start in range(0, len(steps), _IN_CHUNK):
        chunk = steps[start : start + _IN_CHUNK]
        rows += [tuple(r) for r in session.execute(cols.where(ScoreStep.step.in_(chunk)))]
    rows.sort(key=lambda r: r[0])
    return rows


def _nbytes(slots: slice) -> int:
    return (slots.stop - slots.start) * SCORE_DTYPE.itemsize


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

    steps = score_steps(session, run_id, since_step)
    keep = session.scalars(
        select(Event.step).where(
            Event.run_id == run_id,
            Event.kind.in_(PRUNING_KINDS),
            *_after(Event.step, since_step),
        )
    )
    chosen = pick_steps(steps, max_points, keep)
    # the wanted modules' slots, as one range (a layer's modules are registered together)
    slots = slice(layout.span(wanted[0]).start, layout.span(wanted[-1]).stop)
    rows = _score_rows(session, run_id, chosen, since_step, len(chosen) == len(steps), slots)
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
    for key in dict.fromkeys(keys):
        rows = session.execute(
            select(Scalar.step, Scalar.value)
            .where(Scalar.run_id == run_id, Scalar.key == key, *_after(Scalar.step, since_step))
            .order_by(Scalar.step)
        ).all()
        if not rows:
            continue
        value_at = dict(rows)
        steps = pick_steps([r.step for r in rows], max_points)
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
