"""Jobs: queue a training worker from a job config, cancel it, read its log."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status

from backend.deps import DB, Jobs, RunId
from backend.errors import Invalid
from backend.routers.responses import NOT_FOUND, TOO_LARGE, UNPROCESSABLE, WRITE_AUTH
from backend.schemas import JobCreated, LogTail, RunPublic
from backend.security import Writer
from backend.services.jobs import log_tail
from backend.services.runs import get_run, queue_position, to_public
from dora_core.contracts.job import JobConfig

router = APIRouter(prefix="/jobs", tags=["jobs"])

_JOB_SCHEMA = JobConfig.model_json_schema()
_JOB_EXAMPLE = {"model": "minilm", "dataset": "rt-snippets", "target_rank": 4, "max_steps": 200}


async def job_body(request: Request) -> Any:
    """The raw JSON body: checked by the shared schema (dora_core.contracts.job), not by FastAPI,
    so a cross-field error names its field the same way the CLI does."""
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise Invalid.at(("body",), f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # [[[[...]]]] nested deeper than the parser goes
        raise Invalid.at(("body",), "the body is not valid JSON: nested too deeply") from None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Writer],
    responses={
        **WRITE_AUTH,
        **UNPROCESSABLE,
        **TOO_LARGE,
        429: {"description": "DORA_MAX_QUEUED jobs are already waiting (nothing is created)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _JOB_SCHEMA, "example": _JOB_EXAMPLE}},
        }
    },
)
def create_job(body: Annotated[Any, Depends(job_body)], db: DB, jobs: Jobs) -> JobCreated:
    """Validate a job config, queue its run (``<data>/runs/<id>``); its worker starts when
    one of the DORA_MAX_JOBS slots is free, oldest job first (at once if one is free now).

    The server sets ``output_dir``; a model or dataset that is not a preset
    must be a path inside the configured roots (DORA_MODEL_ROOTS,
    DORA_DATASET_ROOTS).
    """
    run_id = jobs.submit(body).id
    jobs.start_queued()
    with db.reader() as session:
        run = get_run(session, run_id)
        return JobCreated(run_id=run.id, run=to_public(run, queue_position(session, run)))


@router.get("/schema")
def job_schema() -> dict[str, Any]:
    """The JobConfig JSON schema (for forms)."""
    return _JOB_SCHEMA


@router.post(
    "/{run_id}/cancel",
    dependencies=[Writer],
    responses={
        **WRITE_AUTH,
        **NOT_FOUND,
        409: {"description": "The run already ended or was not launched by this API"},
    },
)
def cancel_job(run_id: RunId, jobs: Jobs) -> RunPublic:
    """Cancel: a queued job never starts; a worker gets SIGTERM (it checkpoints and exits),
    then SIGKILL after a grace period."""
    return to_public(jobs.cancel(run_id))


@router.get(
    "/{run_id}/log",
    responses={**NOT_FOUND, 503: {"description": "The cluster running the worker did not answer"}},
)
def job_log(
    run_id: RunId,
    db: DB,
    request: Request,
    tail: Annotated[int, Query(ge=0, le=100_000)] = 200,
) -> LogTail:
    """The last ``tail`` lines of the worker's stdout and stderr (a Ray job's: from Ray)."""
    return LogTail(lines=log_tail(db, run_id, tail, request.app.state.launcher))
