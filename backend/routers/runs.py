"""Runs: created by a worker started by hand, listed and read by the dashboard, deleted."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from backend.deps import AppSettings, Jobs, ReadSession, RunId, WriteSession
from backend.routers.responses import NOT_FOUND, UNPROCESSABLE, WRITE_AUTH
from backend.schemas import (
    INT32,
    ModulePublic,
    RegisterIn,
    RunCreate,
    RunCreated,
    RunList,
    RunPublic,
    RunStatus,
    WriterToken,
)
from backend.security import Ingester, Writer
from backend.services import runs

router = APIRouter(prefix="/runs", tags=["runs"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Writer],
    responses={**WRITE_AUTH, **UNPROCESSABLE},
)
def create_run(
    body: RunCreate, session: WriteSession, settings: AppSettings, request: Request
) -> RunCreated:
    """Create a run for a worker started by hand; the config is checked like a job's.

    The answer carries the run's writer token (only here) and this API's
    instance id; the worker sends both with each of its writes."""
    run, token = runs.create_run(session, settings, body.name, body.config)
    public = runs.to_public(run).model_dump()
    return RunCreated(**public, token=token, instance=request.app.state.instance_id)


@router.post(
    "/{run_id}/token",
    dependencies=[Writer],
    responses={
        **WRITE_AUTH,
        **NOT_FOUND,
        409: {"description": "A worker this API launched for the run may still be running"},
    },
)
def new_writer_token(run_id: RunId, session: WriteSession, request: Request) -> WriterToken:
    """A new writer token for the run, for a worker resumed by hand (``dora train --resume``)
    that has none; the run's earlier token stops working."""
    token = runs.reissue_token(session, run_id)
    return WriterToken(run_id=run_id, token=token, instance=request.app.state.instance_id)


@router.get("")
def list_runs(
    session: ReadSession,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32)] = 0,
) -> RunList:
    """Runs, newest first."""
    items, total = runs.list_runs(session, status, limit, offset)
    places = runs.queue_positions(session) if any(runs.is_waiting(r) for r in items) else {}
    return RunList(items=[runs.to_public(r, places.get(r.id)) for r in items], total=total)


@router.get("/{run_id}", responses=NOT_FOUND)
def get_run(run_id: RunId, session: ReadSession) -> RunPublic:
    run = runs.get_run(session, run_id)
    return runs.to_public(run, runs.queue_position(session, run))


@router.delete(
    "/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Writer],
    responses={**WRITE_AUTH, **NOT_FOUND},
)
def delete_run(run_id: RunId, jobs: Jobs) -> Response:
    """Stop a live worker (a queued job never starts), then remove the run's rows and the
    directory the API made for it."""
    jobs.delete(run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{run_id}/register",
    dependencies=[Ingester],
    responses={
        **WRITE_AUTH,
        **NOT_FOUND,
        **UNPROCESSABLE,
        409: {"description": "The run already registered a different module list"},
    },
)
def register(run_id: RunId, body: RegisterIn, session: WriteSession) -> RunPublic:
    """The worker's module list (once the model is built); sets the run running."""
    return runs.to_public(runs.register(session, run_id, body))


@router.get("/{run_id}/modules", responses=NOT_FOUND)
def modules(run_id: RunId, session: ReadSession) -> list[ModulePublic]:
    """Adapted modules in registration order (``index`` = position in score blobs)."""
    runs.ensure_run(session, run_id)
    return [runs.module_public(m) for m in runs.modules_of(session, run_id)]
