"""Server-sent events: a small "new data up to step S" notice per run.

Pages listen and then fetch only what is new (``since_step``). The event id
is the step, so a reconnect with ``Last-Event-ID: S`` resumes after S. A
notice goes out when the step moves on or the status changes; the stream
ends after the run's final status.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from backend.db import Database
from backend.deps import DB, AppSettings, RunId
from backend.errors import NotFound
from backend.models import Run
from backend.routers.responses import NOT_FOUND
from backend.settings import Settings
from dora_core.contracts.wire import FINAL_STATUSES

router = APIRouter(prefix="/runs", tags=["live"])


def _progress(db: Database, run_id: RunId) -> tuple[int | None, str]:
    with db.reader() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        return run.step, run.status


def sse_message(step: int | None, status: str) -> str:
    lines = ["event: progress"]
    if step is not None:
        lines.append(f"id: {step}")
    lines.append("data: " + json.dumps({"step": step, "status": status}))
    return "\n".join(lines) + "\n\n"


async def _notices(
    request: Request,
    db: Database,
    settings: Settings,
    run_id: RunId,
    first: tuple[int | None, str],
    resume_after: int | None,
) -> AsyncIterator[str]:
    sent_step, sent_status = resume_after, None
    state = first
    quiet_since = time.monotonic()
    while True:
        step, status = state
        final = status in FINAL_STATUSES
        newer = step is not None and (sent_step is None or step > sent_step)
        changed = sent_status is not None and status != sent_status
        opening = sent_status is None and resume_after is None
        if newer or changed or opening or final:
            yield sse_message(step, status)
            sent_step, sent_status = step, status
            quiet_since = time.monotonic()
        elif sent_status is None:
            sent_status = status  # resumed at this step: nothing new to say yet
        if final or await request.is_disconnected():
            return
        if time.monotonic() - quiet_since > settings.stream_keepalive_s:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(settings.stream_interval_s)
        try:
            state = await run_in_threadpool(_progress, db, run_id)
        except NotFound:  # deleted while watched
            return


@router.get(
    "/{run_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **NOT_FOUND},
)
async def stream(
    run_id: RunId,
    request: Request,
    db: DB,
    settings: AppSettings,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """``event: progress``, ``id: <step>``, ``data: {"step", "status"}``; resumable."""
    first = await run_in_threadpool(_progress, db, run_id)
    resume_after = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    return StreamingResponse(
        _notices(request, db, settings, run_id, first, resume_after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
