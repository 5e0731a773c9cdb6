"""Jobs: validate a config, queue its run and directory, start and stop its worker.

The API decides where a job writes (``<data>/runs/<id>``); the request only
says what to train. Launches wait in a FIFO queue (``JobQueue``) until one of
the ``DORA_MAX_JOBS`` worker slots is free (and, for the local launcher, the
GPUs it asks for: backend.gpus). The queue lives in the database, so several
API processes on one database share it. When a worker ends
without reporting a final status, ``record_exit`` marks the run from its
exit status and the log's last lines.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.address import ServerAddress
from backend.db import Database
from backend.errors import Busy, Conflict, Invalid, NotFound, Unavailable
from backend.gpus import GpuInventory
from backend.jobpaths import confine
from backend.launcher import Launcher, LaunchSpec, LocalProcessLauncher, WorkerExit
from backend.leases import Lease
from backend.models import Event, Instance, Run, utcnow
from backend.remote import LauncherUnavailable, RemoteLauncher
from backend.services.runs import (
    get_run,
    is_waiting,
    job_config_or_422,
    lock_run,
    new_run,
    new_token,
    remove_run_data,
    waiting_clause,
)
from backend.settings import Settings
from dora_core.contracts.datasource import is_hf_spec
from dora_core.contracts.job import JobConfig, reserved_gpus, worker_processes
from dora_core.contracts.presets import DATASETS, MODELS
from dora_core.contracts.rundir import JOB_FILE, RESULT_FILE, WORKER_LOG
from dora_core.contracts.wire import FINAL_STATUSES

LOG_TAIL_ON_FAILURE = 20
# The worker's exit status after a checkpointed stop on SIGTERM / Ctrl-C (docs/protocol.md).
CANCELLED_EXITS = (143, 130)


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
    if config.dataset not in DATASETS and not is_hf_spec(config.dataset):
        # An hf: spec names an entry of the local datasets cache, never a path (the schema
        # has checked its form), so there is nothing to confine.
        update["dataset"] = str(
            confine(config.dataset, settings.dataset_roots, "dataset", "DORA_DATASET_ROOTS")
        )
    return config.model_copy(update=update)


def lock_queue(session: Session) -> None:
    """Serialise queueing and claiming across every API process on the database, for the
    rest of this write transaction: the instance row's lock on PostgreSQL (one row, made
    by migration 0005); SQLite's write lock, which every write session takes, already does.
    """
    session.execute(select(Instance.id).with_for_update())


class JobQueue:
    """The job queue: queue, start, cancel and delete launched jobs, from any API process.

    ``POST /api/jobs`` only queues a run; ``start_queued`` is the one place
    workers are started, oldest first, while fewer than ``DORA_MAX_JOBS``
    launched workers are live in the whole database. It runs after each
    launch, after each watcher pass (a worker that ended frees a slot) and at
    start-up.

    The database keeps the rules, so they hold for several API processes:

    - Counting waiting or live runs and acting on the count happen under the
      queue's lock (``lock_queue``), so the cap and the queue limit are exact.
    - Claiming a run is a conditional change of its row under its lock
      (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL): a run leaves the
      queue once, to one process.
    - The worker is started inside a transaction that holds the run's row
      and finds it still queued; a cancel or delete either comes first (the
      worker is never started) or waits for the handle (the worker is stopped).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        launcher: Launcher,
        instance_id: str,
        address: ServerAddress | None = None,
        lease: Lease | None = None,
        gpus: GpuInventory | None = None,
    ):
        self.db, self.settings, self.launcher = db, settings, launcher
        # The GPUs the local launcher hands out (DORA_GPUS, else found at start-up); a
        # cluster launcher places its jobs itself.
        self.gpus = gpus
        if gpus is None and isinstance(launcher, LocalProcessLauncher):
            self.gpus = GpuInventory.discover(settings.gpus)
        # Where workers report (DORA_API_URL): the server's real address (backend.address).
        self.address = address or ServerAddress.configured(settings)
        self.instance_id = instance_id  # handed to each worker (DORA_API_INSTANCE)
        # This process owns the workers it starts (backend.leases); one of its own by default.
        self.lease = lease or Lease(settings.worker_lease_s)
        # One scheduler pass at a time in this process, so that it starts the runs it claims
        # in the order it claimed them. Correctness across processes is the database's.
        self._scheduling = threading.Lock()

    def submit(self, data: object) -> Run:
        """Validate a job, create its queued run with its run dir and ``job.json``.

        Refused (429, nothing created) when ``DORA_MAX_QUEUED`` runs are
        already waiting. Returns at once; the caller runs ``start_queued``.
        """
        config = checked_config(data, self.settings)
        refusal = self.gpus.refusal(config.gpu_count) if self.gpus is not None else None
        if refusal:  # it could never start here: refused now, not queued forever
            raise Invalid.at(("body", "gpus" if config.gpus else "device"), refusal)
        with self.db.writer() as session:
            lock_queue(session)
            waiting = session.scalar(select(func.count()).select_from(Run).where(waiting_clause()))
            if waiting >= self.settings.max_queued:
                raise Busy(
                    f"the job queue is full: {waiting} jobs are waiting for one of the "
                    f"DORA_MAX_JOBS={self.settings.max_jobs} worker slots "
                    f"(DORA_MAX_QUEUED={self.settings.max_queued}); "
                    "wait for one to start or cancel one"
                )
            run = new_run(config)
            run.queued_at = run.created_at
            session.add(run)
            session.flush()
            run_dir = self.settings.runs_dir / str(run.id)
            run.run_dir = str(run_dir)
            run.config = config.model_copy(update={"output_dir": str(run_dir)}).model_dump(
                mode="json"
            )
            session.commit()
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / JOB_FILE).write_text(
                    json.dumps(run.config, indent=2) + "\n", encoding="utf-8"
                )
            except OSError as exc:  # disk full, ...: it could never start
                run = lock_run(session, run.id)
                run.status, run.error = "failed", f"could not start the worker: {exc}"
                run.finished_at = run.updated_at = utcnow()
                session.commit()
        return run

    def start_queued(self) -> list[int]:
        """Start the oldest waiting runs while fewer than ``max_jobs`` launched workers live.

        Returns the ids of the runs whose workers started (or failed to).
        Nothing starts while the server's address is not known yet (start-up,
        before the socket is bound): a worker must be told where to report.
        """
        with self.db.reader() as session:  # the common case (every watcher pass): no write lock
            if session.scalar(select(Run.id).where(waiting_clause()).limit(1)) is None:
                return []
        api_url = self.address.url()
        if api_url is None:
            return []
        started = []
        with self._scheduling:
            while (claimed := self._claim_next()) is not None:
                run, token = claimed
                self._start(run, token, api_url)
                started.append(run.id)
        return started

    def _claim_next(self) -> tuple[Run, str] | None:
        """Take the oldest waiting run out of the queue if a slot is free, and its GPUs.

        The queue keeps its order: when the oldest waiting run's GPUs are not
        free (held by live runs on this machine), it waits and so do the runs
        behind it, however few GPUs they ask for; it starts once enough
        workers have ended. Its GPU ids are stored with it (``gpu_reservation``).

        ``launched_at``, the writer token's hash and this process's lease are
        stored before its worker starts, so from here on it counts as live,
        and an API that dies before storing the worker's handle leaves it
        recognisable to the watcher (launched, no handle, owner gone: failed)
        rather than queued again.
        """
        with self.db.writer() as session:
            lock_queue(session)
            # Launched by an API (any process) and not seen to end.
            live = session.scalar(
                select(func.count())
                .select_from(Run)
                .where(Run.launched_at.is_not(None), Run.worker_exited_at.is_(None))
            )
            if live >= self.settings.max_jobs:
                return None
            # A run being cancelled or deleted right now is skipped, not waited for; so is
            # one needing more GPUs than this machine has (queued under another inventory,
            # or for another API's machine): it would hold the queue up forever.
            waiting = session.scalars(
                select(Run)
                .where(waiting_clause())
                .order_by(Run.id)
                .with_for_update(skip_locked=True)
            )
            run = next((r for r in waiting if self._could_run(r)), None)
            if run is None:
                return None
            needed = reserved_gpus(run.config)
            if self.gpus is not None and needed:
                held = session.scalars(
                    select(Run.gpu_reservation).where(
                        Run.launched_at.is_not(None),
                        Run.worker_exited_at.is_(None),
                        Run.gpu_reservation.is_not(None),
                    )
                )
                picked = self.gpus.pick(needed, self.gpus.reserved_here(held))
                if picked is None:  # first in line, but its GPUs are busy: everyone waits
                    return None
                run.gpu_reservation = self.gpus.reservation(picked)
            token = new_token(run)
            run.launched_at = run.updated_at
            self.lease.grant(run, run.updated_at)
            session.commit()
        return run, token

    def _could_run(self, run: Run) -> bool:
        """Whether this machine has the GPUs the run asks for (free or not)."""
        return self.gpus is None or self.gpus.refusal(reserved_gpus(run.config)) is None

    def _start(self, run: Run, token: str, api_url: str) -> None:
        """Start the claimed run's worker, holding its row; a start that fails (OSError)
        fails the run.

        With the local launcher's inventory, the worker sees only its own GPUs
        (``CUDA_VISIBLE_DEVICES``: the ids it reserved, empty for none, so a job
        without GPUs never lands on another's), and a job of several processes
        shares its thread budget among them.

        A run cancelled since it was claimed is not started (its slot is freed);
        a deleted one is gone. The row lock makes a cancel or delete that comes
        during the start wait for the handle, and then stop the worker.
        """
        run_dir = Path(run.run_dir) if run.run_dir else self.settings.runs_dir / str(run.id)
        processes = worker_processes(run.config)
        threads = {
            name: str(max(1, int(value) // processes))
            for name, value in self.settings.worker_thread_env(os.environ).items()
        }
        gpu_ids = (run.gpu_reservation or {}).get("ids", [])  # reserved by _claim_next
        visible = {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)} if self.gpus is not None else {}
        spec = LaunchSpec(
            run_id=run.id,
            job_file=run_dir / JOB_FILE,
            run_dir=run_dir,
            log_file=run_dir / WORKER_LOG,
            env={
                "DORA_API_URL": api_url,
                "DORA_RUN_ID": str(run.id),
                "DORA_INGEST_TOKEN": token,
                "DORA_API_INSTANCE": self.instance_id,
                "DORA_DATA_DIR": str(self.settings.data_dir),
                **threads,
                **visible,
            },
            processes=processes,
        )
        with self.db.writer() as session:
            try:
                claimed = lock_run(session, run.id)
            except NotFound:  # deleted since it was claimed
                return
            if claimed.status != "queued":  # cancelled since it was claimed: never started
                claimed.worker_exited_at = claimed.updated_at = utcnow()
                session.commit()
                return
            try:
                handle = self.launcher.start(spec)
            except OSError as exc:  # no such interpreter, job.json gone, ...: the run ends here
                claimed.status, claimed.error = "failed", f"could not start the worker: {exc}"
                claimed.finished_at = claimed.worker_exited_at = claimed.updated_at = utcnow()
                session.commit()
                return
            claimed.worker_handle = handle
            session.commit()

    def cancel(self, run_id: int) -> Run:
        """Cancel a run: a waiting one never starts; a live worker gets SIGTERM, then SIGKILL.

        A run claimed by a scheduler whose worker has not started yet is
        cancelled like a waiting one: ``_start`` finds it cancelled and never
        starts it.
        """
        with self.db.writer() as session:
            run = lock_run(session, run_id)
            if run.status in FINAL_STATUSES:
                raise Conflict(f"run {run_id} is already {run.status}; nothing to cancel")
            waiting = is_waiting(run) or (
                run.launched_at is not None
                and run.worker_handle is None
                and run.worker_exited_at is None
            )
            if not waiting and run.worker_handle is None:
                raise Conflict(
                    f"run {run_id} was not launched by this API; stop its worker where it runs"
                )
            if not waiting and run.worker_exited_at is not None:
                # e.g. resumed by hand after its worker ended
                raise Conflict(
                    f"run {run_id}'s worker under this API has ended; stop the one reporting now "
                    "where it runs"
                )
            now = utcnow()
            run.status, run.finished_at, run.updated_at = "cancelled", now, now
            # At the last event's step, so the worker's own closing events still fit after it.
            step = session.scalar(select(func.max(Event.step)).where(Event.run_id == run_id)) or 0
            message = "cancelled through the API" + (" before it started" if waiting else "")
            session.add(
                Event(
                    run_id=run_id,
                    step=step,
                    kind="cancelled",
                    message=message,
                    data=None,
                    created_at=now,
                )
            )
            session.commit()
        if run.worker_handle is not None and run.worker_exited_at is None:
            self.launcher.stop(run.worker_handle, self.settings.cancel_grace_s)
        return run

    def delete(self, run_id: int) -> None:
        """Remove a run's rows and run dir, killing its live worker first.

        A run without a worker (waiting, claimed but not started, or reported
        by hand) goes while its row is locked, so no scheduler starts it
        meanwhile (``_start`` finds it gone); a worker is waited for outside
        the transaction (up to 10 s) so that launches are not held up.
        """
        with self.db.writer() as session:
            run = lock_run(session, run_id)
            if run.worker_handle is None or run.worker_exited_at is not None:
                remove_run_data(session, self.settings, run)
                return
        self.launcher.stop(run.worker_handle, grace_s=0)
        self.launcher.wait(run.worker_handle, timeout_s=10)
        with self.db.writer() as session:
            remove_run_data(session, self.settings, run)
        self.start_queued()  # its slot is free now, not only at the watcher's next pass


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


def log_tail(db: Database, run_id: int, count: int, launcher: Launcher | None = None) -> list[str]:
    """The worker's last ``count`` lines: from its launcher when that runs it elsewhere
    (backend.remote; 503 while it cannot be asked), else from ``worker.log`` in the run dir."""
    with db.reader() as session:
        run = get_run(session, run_id)
    if run.worker_handle and isinstance(launcher, RemoteLauncher):
        try:
            lines = launcher.log_tail(run.worker_handle, count)
        except LauncherUnavailable as exc:
            raise Unavailable(str(exc)) from None
        if lines is not None:
            return lines
    if not run.run_dir:
        raise NotFound(f"run {run_id} was not launched by this API, so it has no worker log here")
    return tail_lines(Path(run.run_dir) / WORKER_LOG, count)


def record_exit(db: Database, run_id: int, ended: WorkerExit) -> None:
    """A worker is gone: store how, and fail the run if it had not finished.

    Exit status 0, or an unknown status with the worker's ``result.json``
    written, counts as completed even if the final event never arrived; 143
    or 130 (stopped by a signal after a checkpoint) as cancelled. Recorded
    once: under the run's lock, a worker already seen to end is left as it is.
    """
    with db.writer() as session:
        run = lock_run(session, run_id)
        if run.worker_exited_at is not None:  # recorded already (another API process)
            return
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
