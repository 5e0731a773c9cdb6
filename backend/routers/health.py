"""Liveness, with a real round trip to the database."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from backend.deps import DB
from backend.schemas import Health
from dora_core import __version__

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"model": Health, "description": "Database unreachable"}})
def health(db: DB, request: Request) -> Health:
    try:
        db.ping()
    except SQLAlchemyError as exc:
        body = Health(status="degraded", version=__version__, database=str(exc).splitlines()[0])
        return JSONResponse(body.model_dump(), status_code=503)
    instance = getattr(request.app.state, "instance_id", None)
    return Health(status="ok", version=__version__, database="ok", instance=instance)
