"""Runs: create, list, read, register modules, delete; and the public view of a run."""

from __future__ import annotations

import hashlib
import secrets
import shutil
from pathlib import Path

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.orm import Session

from backend.errors import Conflict, Invalid, NotFound
from backend.models import Module, Run, utcnow
from backend.schemas import ModulePublic, RegisterIn, RunPublic
from backend.scorepack import Layout
from backend.settings import Settings
from dora_core.contracts.job import JobConfig, JobConfigError, parse_job_config
from dora_core.contracts.wire import FINAL_STATUSES


def job_config_or_422(data: object, prefix: tuple[str, ...] = ("body",)) -> JobConfig:
    """The shared schema's verdict, as a 422 whose ``loc`` names each bad field."""
    try:
        config = parse_job_config(data)
    except JobConfigError as exc:
        raise Invalid(
            [
                ((*prefix, *field.split(".")) if field else prefix, _shorten(msg))
                for field, msg in exc.errors
            ]
        ) from None
    # Numbers need no check here: JobConfig refuses NaN and infinity (allow_inf_nan=False).
    for field, value in config:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and "\x00" in t for t in texts):
            # PostgreSQL text cannot hold NUL, and no path or name needs one.
            raise Invalid.at((*prefix, field), "contains a NUL character")
    return config


def _shorten(msg: str, limit: int = 500) -> str:
    """Messages quote the bad value; a megabyte-long value must not come back whole."""
    return msg if len(msg) <= limit else f"{msg[:limit]}... ({len(msg) - limit} more characters)"


def waiting_clause() -> ColumnElement[bool]:
    """Runs in the job queue: queued by ``POST /api/jobs``, no worker started for them yet.

    The scheduler sets ``launched_at`` right before starting a worker, so a
    run with it has left the queue even while it is still ``queued`` (its
    worker has not registered yet).
    """
    return and_(Run.status == "queued", Run.queued_at.is_not(None), Run.launched_at.is_(None))


def is_waiting(run: Run) -> bool:
    """``waiting_clause`` for a loaded run."""
    return run.status == "queued" and run.queued_at is not None and run.launched_at is None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(run: Run) -> str:
    """A fresh writer token for ``run``: its hash is stored (the caller commits), the token
    itself is returned once and kept nowhere here. A token issued before stops working."""
    token = secrets.token_urlsafe(32)
    run.ingest_token_hash = token_hash(token)
    run.updated_at = utcnow()
    return token


def queue_positions(session: Session) -> dict[int, int]:
    """Waiting run id -> its place in the queue (1 starts next); FIFO, so by id."""
    ids = session.scalars(select(Run.id).where(waiting_clause()).order_by(Run.id))
    return {run_id: place for place, run_id in enumerate(ids, start=1)}


def queue_position(session: Session, run: Run) -> int | None:
    """The run's place in the job queue, or None when it is not waiting."""
    if not is_waiting(run):
        return None
    ahead = session.scalar(
        select(func.count()).select_from(Run).where(waiting_clause(), Run.id < run.id)
    )
    return int(ahead or 0) + 1


def lock_run(session: Session, run_id: int) -> Run:
    """The run, locked for the rest of this write transaction (row lock off SQLite)."""
    run = session.execute(
        select(Run).where(Run.id == run_id).with_for_update()
    ).scalar_one_or_none()
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def ensure_run(session: Session, run_id: int) -> None:
    if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
        raise NotFound(f"run {run_id} not found")


def new_run(config: JobConfig, name: str | None = None) -> Run:
    """A queued run for a validated config (not yet added to a session)."""
    now = utcnow()
    return Run(
        name=name or config.display_name,
        status="queued",
        method=config.method,
        model=config.model,
        dataset=config.dataset,
        config=config.model_dump(mode="json"),
        created_at=now,
        updated_at=now,
        num_modules=0,
    )


def create_run(
    session: Session, settings: Settings, name: str | None, config_data: dict
) -> tuple[Run, str]:
    """A run for a worker started by hand, and its writer token (returned only here)."""
    config = job_config_or_422(config_data, ("body", "config"))
    run = new_run(config, name)
    # Its run dir is served (adapter.zip, log) only when it lies under our data dir.
    if config.output_dir:
        out = Path(config.output_dir).expanduser().resolve()
        if out.is_relative_to(settings.data_dir):
            run.run_dir = str(out)
    token = new_token(run)
    session.add(run)
    session.commit()
    return run, token


def reissue_token(session: Session, run_id: int) -> str:
    """A new writer token for a resumed worker (``dora train --resume`` without one).

    Refused (409) while a worker this API launched for the run may still be
    running: that worker holds the run's token, and two writers would mix
    their data. The old token stops working.
    """
    run = lock_run(session, run_id)
    if run.launched_at is not None and run.worker_exited_at is None:
        raise Conflict(
            f"run {run_id}'s worker launched by this API has not been seen to end; "
            "it holds the run's writer token (cancel it first to resume the run elsewhere)"
        )
    token = new_token(run)
    session.commit()
    return token


def list_runs(
    session: Session, status: str | None, limit: int, offset: int
) -> tuple[list[Run], int]:
    """Newest first."""
    query = select(Run)
    count = select(func.count()).select_from(Run)
    if status:
        query, count = query.where(Run.status == status), count.where(Run.status == status)
    runs = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return list(runs), int(session.scalar(count) or 0)


def modules_of(session: Session, run_id: int) -> list[Module]:
    return list(
        session.scalars(select(Module).where(Module.run_id == run_id).order_by(Module.position))
    )


def layout_of(session: Session, run_id: int) -> Layout:
    rows = session.execute(
        select(Module.name, Module.rank).where(Module.run_id == run_id).order_by(Module.position)
    ).all()
    return Layout(tuple(r.name for r in rows), tuple(r.rank for r in rows))


def register(session: Session, run_id: int, body: RegisterIn) -> Run:
    """Store the module list once; the same list again is fine, a different one is 409.

    Registering moves the run to ``running``; a failed or cancelled run that
    registers again is being resumed (``dora train --resume``).
    """
    run = lock_run(session, run_id)
    wanted = [(m.name, m.layer, m.type, list(m.shape), m.rank) for m in body.modules]
    seen: dict[str, int] = {}
    for i, (name, *_rest) in enumerate(wanted):
        if name in seen:
            raise Invalid.at(
                ("body", "modules", i, "name"), f"duplicate module {name!r} (also at {seen[name]})"
            )
        seen[name] = i
    stored = [(m.name, m.layer, m.type, list(m.shape), m.rank) for m in modules_of(session, run_id)]
    if (stored or run.registered_at is not None) and stored != wanted:
        diff = next(
            (i for i, (a, b) in enumerate(zip(stored, wanted, strict=False)) if a != b),
            min(len(stored), len(wanted)),
        )
        raise Conflict(
            f"run {run_id} already registered {len(stored)} modules and this list differs "
            f"(first difference at index {diff}); start a new run for a different model"
        )
    if not stored:
        session.add_all(
            Module(run_id=run_id, position=i, name=n, layer=layer, type=t, shape=shape, rank=r)
            for i, (n, layer, t, shape, r) in enumerate(wanted)
        )
    run.num_modules = len(wanted)
    for field in ("total_steps", "init_rank", "target_rank", "params"):
        value = getattr(body, field)
        if value is not None:
            setattr(run, field, value)
    now = utcnow()
    run.registered_at = run.registered_at or now
    if run.status != "completed":
        if run.status in FINAL_STATUSES:  # resumed
            run.finished_at, run.error, run.exit_code = None, None, None
        run.status = "running"
        run.started_at = run.started_at or now
    run.updated_at = now
    session.commit()
    return run


def remove_run_data(session: Session, settings: Settings, run: Run) -> None:
    """Delete the run's rows (the database cascades) and the run dir this API created."""
    run_id, run_dir = run.id, run.run_dir
    session.execute(delete(Run).where(Run.id == run_id))
    session.commit()
    if run_dir and Path(run_dir) == settings.runs_dir / str(run_id):
        shutil.rmtree(run_dir, ignore_errors=True)


def has_adapter(run: Run) -> bool:
    return bool(run.run_dir) and (Path(run.run_dir) / "adapter" / "adapter_config.json").is_file()


def task_of(config: dict | None) -> str:
    """A run's task, from its stored job config (configs stored before tasks existed have none:
    every such run was a classification run)."""
    task = (config or {}).get("task")
    return task if isinstance(task, str) and task else "classification"


def to_public(run: Run, queue_position: int | None = None) -> RunPublic:
    """The API's view of a run; ``queue_position`` from ``queue_position(s)`` when waiting."""
    return RunPublic(
        id=run.id,
        name=run.name,
        status=run.status,
        method=run.method,
        task=task_of(run.config),
        model=run.model,
        dataset=run.dataset,
        config=run.config,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        step=run.step,
        total_steps=run.total_steps,
        init_rank=run.init_rank,
        target_rank=run.target_rank,
        num_modules=run.num_modules,
        budget=run.budget,
        metrics=run.metrics,
        best=run.best,
        params=run.params,
        error=run.error,
        exit_code=run.exit_code,
        has_adapter=has_adapter(run),
        queue_position=queue_position,
    )


def module_public(m: Module) -> ModulePublic:
    return ModulePublic(
        index=m.position, name=m.name, layer=m.layer, type=m.type, shape=m.shape, rank=m.rank
    )
