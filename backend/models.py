"""Database tables (SQLAlchemy 2.x typed models), portable between SQLite and PostgreSQL.

Scores are the volume, so one row per (run, step) holds every module's scores
as a float32 blob and their masks as a bit-packed blob, both in module
registration order (see docs/architecture.md). Everything else is a plain
row per record. Children cascade from ``runs`` in the database itself, so
deleting a run never loads its rows.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use backend.models.utcnow()")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


def _run_fk() -> Any:
    return mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)


class Run(Base):
    """One training run: its config, status, and a summary kept current by ingest."""

    __tablename__ = "runs"
    # AUTOINCREMENT: ids (and so run dirs) are never reused after a delete.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)  # one of wire.RUN_STATUSES
    method: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(1024))
    dataset: Mapped[str] = mapped_column(String(1024))
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Summary, updated in the same transaction as the telemetry it comes from.
    step: Mapped[int | None]
    total_steps: Mapped[int | None]
    init_rank: Mapped[int | None]
    target_rank: Mapped[int | None]
    num_modules: Mapped[int] = mapped_column(default=0)
    # When the module list was first registered: an empty list (method full) fixes it too.
    registered_at: Mapped[datetime | None]
    params: Mapped[dict[str, Any] | None]
    budget: Mapped[dict[str, Any] | None]  # latest {"step", "target", "live"}
    metrics: Mapped[dict[str, Any] | None]  # latest eval/* scalars, prefix stripped
    metrics_step: Mapped[int | None]
    best: Mapped[dict[str, Any] | None]  # {"key", "value", "step"}
    # Last step of each telemetry stream: {"scores", "budget", "scalars": {key: step}}.
    heads: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None]
    # Jobs launched by this API: where the worker writes, and how to find it.
    run_dir: Mapped[str | None] = mapped_column(String(4096))
    # When POST /api/jobs queued it; NULL for a run whose worker was started by hand. While
    # it is also not launched, the run is waiting in the job queue.
    queued_at: Mapped[datetime | None]
    # When the scheduler took it out of the queue to start its worker (NULL: never launched
    # by an API, e.g. a run created by a worker started by hand).
    launched_at: Mapped[datetime | None]
    worker_handle: Mapped[str | None] = mapped_column(String(200))
    worker_exited_at: Mapped[datetime | None]
    # The API process that watches the launched worker (backend.leases): only it records
    # the worker's end while the lease holds. Set when it takes the run out of the queue.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    # The GPUs the local launcher reserved for the run's worker, {"machine", "ids"}
    # (backend.gpus); held while the worker is live (launched, not seen to end).
    gpu_reservation: Mapped[dict[str, Any] | None]
    # SHA-256 of the run's writer token: its worker's register and telemetry calls need the
    # token (or DORA_API_TOKEN). Issued when a launched worker starts, when a worker started
    # by hand creates its run, and again on request for a resumed worker.
    ingest_token_hash: Mapped[str | None] = mapped_column(String(64))


class Instance(Base):
    """The database's API instance id: made once (migration 0005), never changed.

    Workers carry the id of the API that launched them (or created their run);
    an API answering with another id is not theirs, whatever its address.
    """

    __tablename__ = "instance"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]


class Module(Base):
    """An adapted layer, in registration order; ``position`` orders the score blobs."""

    __tablename__ = "modules"
    __table_args__ = (UniqueConstraint("run_id", "name"), {"sqlite_with_rowid": False})

    run_id: Mapped[int] = _run_fk()
    position: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(500))
    layer: Mapped[int | None]
    type: Mapped[str] = mapped_column(String(200))
    shape: Mapped[list[Any]]
    rank: Mapped[int]


class ScoreStep(Base):
    """All modules' smoothed scores (float32) and masks (bits) at one step."""

    __tablename__ = "score_steps"

    run_id: Mapped[int] = _run_fk()
    step: Mapped[int] = mapped_column(primary_key=True)
    scores: Mapped[bytes] = mapped_column(LargeBinary)
    masks: Mapped[bytes] = mapped_column(LargeBinary)


class BudgetPoint(Base):
    __tablename__ = "budget"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: Mapped[int] = _run_fk()
    step: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[int]
    live: Mapped[int]
    b: Mapped[float] = mapped_column(Double)


class Scalar(Base):
    """One value of one named series; NULL stands for a non-finite value."""

    __tablename__ = "scalars"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: Mapped[int] = _run_fk()
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[float | None] = mapped_column(Double)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]


class IngestBatch(Base):
    """Sequence numbers already stored: a repeat is acknowledged, not stored twice."""

    __tablename__ = "ingest_batches"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: Mapped[int] = _run_fk()
    seq: Mapped[int] = mapped_column(primary_key=True)
    step: Mapped[int | None]
    received_at: Mapped[datetime]
