"""Jobs: validate a config, create its run and directory, start and stop its worker.

The API decides where a job writes (``<data>/runs/<id>``); the request only
says what to train. When a worker ends without reporting a final status,
``record_exit`` marks the run from its exit status and the log's last lines.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import deque
from pathlib import Path

from sqlalchemy import func, select

from backend.db import Database
from backend.errors import Busy, Conflict, Invalid, NotFound
from backend.jobpaths import confine
from backend.launcher import Launcher, LaunchSpec, WorkerExit
from backend.models import FINAL_STATUSES, Event, Run, utcnow
from backend.services.runs import get_run, job_config_or_422, lock_run, new_run
from backend.settings import Settings
from dora_core.jobconfig import JobConfig
from dora_core.presets import DATASETS, MODELS

JOB_FILE = "job.json"
WORKER_LOG = "worker.log"
RESULT_FILE = "result.json"
LOG_TAIL_ON_FAILURE = 20
# The worker's exit status after a checkpointed stop on SIGTERM / Ctrl-C (docs/protocol.md).
CANCELLED_EXITS = (143, 130)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def checked_config(data: object, settings: Settings) -> JobConfig:
    """The shared schema plus the server's rules: its own output_dir, confined paths."""
    config = job_config_or_422(data)
    if config.output_dir is not None:
        raise Invalid.at(
            ("body", "output_dir"),
            "the server chooses a launched job's directory (<data dir>/runs/<id>); leave it out",
        )
    update = {}
    if config.model not in MODELS:
        update["model"] = str(
            confine(config.model, settings.model_roots, "model", "DORA_MODEL_ROOTS")
        )
    if config.dataset not in DATASETS:
        update["dataset"] = str(
            confine(config.dataset, settings.dataset_roots, "dataset", "DORA_DATASET_ROOTS")
        )
    return config.model_copy(update=update)


def launch(db: Database, settings: Settings, launcher: Launcher, data: object) -> Run:
    """Create a queued run for the job and start its worker."""
    config = checked_config(data, settings)
    token = secrets.token_urlsafe(32)
    with db.writer() as session:
        # Launched here (it has an ingest token) and not seen to end; counted from the
        # moment its row exists, so launches that overlap cannot both take the last slot.
        live = session.scalar(
            select(func.count())
            .select_from(Run)
            .where(Run.ingest_token_hash.is_not(None), Run.worker_exited_at.is_(None))
        )
        if live >= settings.max_jobs:
            raise Busy(
                f"{live} jobs are running, the limit of this API (DORA_MAX_JOBS={settings.max_jobs}); "
                "wait for one to end or cancel one"
            )
        run = new_run(config)
        run.ingest_token_hash = token_hash(token)
        session.add(run)
        session.flush()
        run_dir = settings.runs_dir / str(run.id)
        resolved = config.model_copy(update={"output_dir": str(run_dir)})
        run.run_dir = str(run_dir)
        run.config = resolved.model_dump(mode="json")
        session.commit()
    job_file = run_dir / JOB_FILE
    spec = LaunchSpec(
        run_id=run.id,
        job_file=job_file,
        run_dir=run_dir,
        log_file=run_dir / WORKER_LOG,
        env={
            "DORA_API_URL": settings.api_url,
            "DORA_RUN_ID": str(run.id),
            "DORA_INGEST_TOKEN": token,
            "DORA_DATA_DIR": str(settings.data_dir),
        },
    )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(run.config, indent=2) + "\n", encoding="utf-8")
        handle = launcher.start(spec)
    except OSError as exc:  # disk full, no such interpreter, ...: the run ends here
        with db.writer() as session:
            run = lock_run(session, run.id)
            run.status, run.error = "failed", f"could not start the worker: {exc}"
            run.finished_at = run.worker_exited_at = utcnow()
            session.commit()
        return run
    with db.writer() as session:
        run = lock_run(session, run.id)
        run.worker_handle = handle
        session.commit()
    return run


def cancel(db: Database, settings: Settings, launcher: Launcher, run_id: int) -> Run:
    """Mark the run cancelled and stop its worker (SIGTERM, SIGKILL after the grace period)."""
    with db.writer() as session:
        run = lock_run(session, run_id)
        if run.status in FINAL_STATUSES:
            raise Conflict(f"run {run_id} is already {run.status}; nothing to cancel")
        if run.worker_handle is None:
            raise Conflict(
                f"run {run_id} was not launched by this API; stop its worker where it runs"
            )
        if run.worker_exited_at is not None:  # e.g. resumed by hand after its worker ended
            raise Conflict(
                f"run {run_id}'s worker under this API has ended; stop the one reporting now "
                "where it runs"
            )
        now = utcnow()
        run.status, run.finished_at, run.updated_at = "cancelled", now, now
        # At the last event's step, so the worker's own closing events still fit after it.
        step = session.scalar(select(func.max(Event.step)).where(Event.run_id == run_id)) or 0
        session.add(
            Event(
                run_id=run_id,
                step=step,
                kind="cancelled",
                message="cancelled through the API",
                data=None,
                created_at=now,
            )
        )
        session.commit()
    if run.worker_exited_at is None:
        launcher.stop(run.worker_handle, settings.cancel_grace_s)
    return run


def stop_for_delete(db: Database, launcher: Launcher, run_id: int) -> Run:
    """Kill a live worker before its run's data is removed."""
    with db.reader() as session:
        run = get_run(session, run_id)
    if run.worker_handle and run.worker_exited_at is None:
        launcher.stop(run.worker_handle, grace_s=0)
        launcher.wait(run.worker_handle, timeout_s=10)
    return run


def tail_lines(path: Path, count: int, block: int = 64 * 1024) -> list[str]:
    """The last ``count`` lines of a text file, reading only its end."""
    if count <= 0 or not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = pos = f.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= count:
            pos = max(0, pos - block)
            f.seek(pos)
            data = f.read(end - pos)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return list(deque(lines, maxlen=count))


def log_tail(db: Database, run_id: int, count: int) -> list[str]:
    with db.reader() as session:
        run = get_run(session, run_id)
    if not run.run_dir:
        raise NotFound(f"run {run_id} was not launched by this API, so it has no worker log here")
    return tail_lines(Path(run.run_dir) / WORKER_LOG, count)


def record_exit(db: Database, run_id: int, ended: WorkerExit) -> None:
    """A worker is gone: store how, and fail the run if it had not finished.

    Exit status 0, or an unknown status with the worker's ``result.json``
    written, counts as completed even if the final event never arrived; 143
    or 130 (stopped by a signal after a checkpoint) as cancelled.
    """
    with db.writer() as session:
        run = lock_run(session, run_id)
        now = utcnow()
        run.worker_exited_at, run.exit_code, run.updated_at = now, ended.code, now
        if run.status not in FINAL_STATUSES:
            run_dir = Path(run.run_dir) if run.run_dir else None
            finished = ended.code == 0 or (
                ended.code is None and run_dir is not None and (run_dir / RESULT_FILE).is_file()
            )
            run.finished_at = now
            if finished:
                run.status = "completed"
            elif ended.code in CANCELLED_EXITS:
                run.status = "cancelled"
            else:
                tail = tail_lines(run_dir / WORKER_LOG, LOG_TAIL_ON_FAILURE) if run_dir else []
                last = next((line.strip() for line in reversed(tail) if line.strip()), "")
                run.status = "failed"
                run.error = f"{ended.describe()}: {last}" if last else ended.describe()
                session.add(
                    Event(
                        run_id=run_id,
                        step=run.step or 0,
                        kind="failed",
                        message=run.error,
                        data={"exit_code": ended.code, "log_tail": tail},
                        created_at=now,
                    )
                )
        session.commit()
