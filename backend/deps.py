"""FastAPI dependencies: the database, sessions, settings, launcher and job queue of the app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from backend.db import Database
from backend.schemas import INT32
from backend.services.jobs import JobQueue
from backend.settings import Settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_job_queue(request: Request) -> JobQueue:
    return request.app.state.jobs


def read_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    with db.reader() as session:
        yield session


def write_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    """A session whose transaction takes the write lock up front (see backend.db)."""
    with db.writer() as session:
        yield session


DB = Annotated[Database, Depends(get_db)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Jobs = Annotated[JobQueue, Depends(get_job_queue)]
ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]
# Ids and steps are 32-bit in every database we support: larger ones are 422, not a 500.
RunId = Annotated[int, Path(ge=1, le=INT32, description="Run id")]
