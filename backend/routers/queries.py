"""What the dashboard reads about one run's training, each fast at 10k steps x 72 modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from backend.deps import ReadSession, RunId
from backend.routers.responses import NOT_FOUND, json_response
from backend.schemas import (
    INT32,
    BudgetSeries,
    EventPublic,
    RankMatrix,
    SampleSet,
    ScalarSeries,
    ScoreSeries,
    StepList,
    Text,
)
from backend.services import queries

router = APIRouter(prefix="/runs", tags=["queries"], responses=NOT_FOUND)

SinceStep = Annotated[
    int | None,
    Query(ge=0, le=INT32, description="Only data after this step (for incremental refresh)"),
]
MaxPoints = Annotated[int, Query(ge=1, le=100_000, description="Downsample to at most this")]


@router.get("/{run_id}/steps", response_model=StepList)
def steps(run_id: RunId, session: ReadSession) -> Response:
    """Steps that have score data (for a step slider)."""
    return json_response(StepList.model_construct(steps=queries.score_steps(session, run_id)))


@router.get("/{run_id}/rank-matrix", response_model=RankMatrix)
def rank_matrix(
    run_id: RunId,
    session: ReadSession,
    step: Annotated[
        int | None,
        Query(ge=0, le=INT32, description="Nearest recorded step at or before; default latest"),
    ] = None,
) -> Response:
    """Live components per cell of layers x module types."""
    return json_response(queries.rank_matrix(session, run_id, step))


@router.get("/{run_id}/scores", response_model=ScoreSeries)
def scores(
    run_id: RunId,
    session: ReadSession,
    module: Text | None = None,
    layer: Annotated[int | None, Query(ge=0, le=INT32)] = None,
    max_points: MaxPoints = 1000,
    since_step: SinceStep = None,
) -> Response:
    """Component scores and masks of one module (``module``) or one layer (``layer``).

    Downsampled to ``max_points`` steps, always keeping pruning-event steps.
    """
    return json_response(
        queries.score_series(session, run_id, module, layer, max_points, since_step)
    )


@router.get("/{run_id}/budget", response_model=BudgetSeries)
def budget(run_id: RunId, session: ReadSession, since_step: SinceStep = None) -> Response:
    """Target and live component counts at each reported step."""
    return json_response(queries.budget_series(session, run_id, since_step))


@router.get("/{run_id}/scalars/keys")
def scalar_keys(run_id: RunId, session: ReadSession) -> list[str]:
    return queries.scalar_keys(session, run_id)


@router.get("/{run_id}/scalars", response_model=ScalarSeries)
def scalars(
    run_id: RunId,
    session: ReadSession,
    keys: Annotated[Text, Query(description="Comma-separated, e.g. loss,eval/accuracy")],
    max_points: MaxPoints = 1000,
    since_step: SinceStep = None,
) -> Response:
    """Named series (losses, lr, eval metrics); null marks a non-finite value."""
    wanted = [k.strip() for k in keys.split(",") if k.strip()]
    return json_response(queries.scalar_series(session, run_id, wanted, max_points, since_step))


@router.get("/{run_id}/events")
def events(
    run_id: RunId,
    session: ReadSession,
    kind: Text | None = None,
    since_step: SinceStep = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="The latest this many")] = 10_000,
) -> list[EventPublic]:
    """Pruning, evaluation, checkpoint and status events, oldest first."""
    return queries.events(session, run_id, kind, since_step, limit)


@router.get("/{run_id}/samples")
def samples(
    run_id: RunId,
    session: ReadSession,
    step: Annotated[
        int | None,
        Query(
            ge=0, le=INT32, description="This step's samples (404 if it has none); default latest"
        ),
    ] = None,
) -> SampleSet:
    """Generated dev samples (prompt, reference, prediction) of a generative run's latest
    generating evaluation, or of ``step``, with every step that has samples; an empty list
    for a run without any (classification runs never have them)."""
    return queries.samples(session, run_id, step)
