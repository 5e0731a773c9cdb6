"""Telemetry ingest: one batch per call, all-or-nothing, idempotent by ``seq``."""

from __future__ import annotations

from fastapi import APIRouter

from backend.deps import WriteSession
from backend.routers.responses import NOT_FOUND, TOO_LARGE, UNPROCESSABLE, WRITE_AUTH
from backend.schemas import IngestAck, TelemetryBatch
from backend.security import Ingester
from backend.services.ingest import ingest

router = APIRouter(prefix="/runs", tags=["telemetry"])


@router.post(
    "/{run_id}/telemetry",
    dependencies=[Ingester],
    responses={**WRITE_AUTH, **NOT_FOUND, **UNPROCESSABLE, **TOO_LARGE},
)
def post_telemetry(run_id: int, batch: TelemetryBatch, session: WriteSession) -> IngestAck:
    """Store a batch of scores, budget points, scalars and events.

    A ``seq`` already stored answers ``duplicate: true`` and stores nothing.
    Unknown modules, wrong lengths, non-finite scores, bad masks or a step
    that goes back answer 422 and store nothing.
    """
    return ingest(session, run_id, batch)
