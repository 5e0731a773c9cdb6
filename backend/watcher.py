"""Noticing workers that ended, including those left by an earlier API process.

One pass looks at every run whose worker has not been seen to end and asks
the launcher about it. At start-up, ``reconcile`` runs the same pass over
runs left "running" by a previous API process: a worker still alive (same
pid and start time) is adopted and watched; one that is gone is recorded as
ended. Before an ended worker is recorded, whatever it left in its spool
(it gave up waiting for an API that was away) is stored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from backend.db import Database
from backend.errors import NotFound
from backend.launcher import Launcher
from backend.models import Run, utcnow
from backend.services.jobs import record_exit
from backend.services.spool import replay_spool
from dora_core.contracts.wire import FINAL_STATUSES

log = logging.getLogger(__name__)


def check_workers(db: Database, launcher: Launcher) -> list[int]:
    """One pass; returns the ids of runs whose worker was found ended."""
    with db.reader() as session:
        watched = session.execute(
            select(Run.id, Run.worker_handle, Run.run_dir).where(
                Run.worker_handle.is_not(None), Run.worker_exited_at.is_(None)
            )
        ).all()
    ended = []
    for run_id, handle, run_dir in watched:
        try:
            result = launcher.poll(handle)
        except ValueError:  # a handle some other launcher wrote
            continue
        if result is not None:
            with contextlib.suppress(NotFound):  # deleted meanwhile
                if run_dir:  # what it could not send before it gave up on the API
                    replay_spool(db, run_id, Path(run_dir))
                record_exit(db, run_id, result)
            ended.append(run_id)
    return ended


def reconcile(db: Database, launcher: Launcher) -> None:
    """At start-up, before serving: close what an earlier API process left open.

    Runs it took out of the queue but never got to start a worker for (it
    stopped between marking it launched and storing the worker's handle)
    fail: whether that worker started is unknown, so starting another could
    run the job twice. Runs still waiting in the queue (not launched) are left
    for the scheduler. The rest is one ``check_workers`` pass (live workers
    adopted, ended ones recorded).
    """
    with db.writer() as session:
        orphans = session.scalars(
            select(Run).where(
                Run.launched_at.is_not(None),
                Run.worker_handle.is_(None),
                Run.worker_exited_at.is_(None),
            )
        ).all()
        now = utcnow()
        for run in orphans:
            run.worker_exited_at = run.updated_at = now
            if run.status not in FINAL_STATUSES:
                run.status, run.finished_at = "failed", now
                run.error = "the API stopped before it could start this job's worker"
        session.commit()
    check_workers(db, launcher)


class Watcher:
    """A daemon thread running ``check_workers`` every ``interval_s`` seconds.

    ``after_pass`` runs after each pass (the job queue's scheduler: a worker
    that ended has freed a slot).
    """

    def __init__(
        self,
        db: Database,
        launcher: Launcher,
        interval_s: float,
        after_pass: Callable[[], object] | None = None,
    ):
        self.db, self.launcher, self.interval_s = db, launcher, interval_s
        self.after_pass = after_pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                check_workers(self.db, self.launcher)
                if self.after_pass is not None:
                    self.after_pass()
            except Exception:  # keep watching; the next pass retries
                log.exception("worker watcher pass failed")
