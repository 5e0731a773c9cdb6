"""Noticing workers that ended, including those left by an earlier API process.

One pass first takes over the runs whose owning API process has lapsed
(``backend.leases``: ended on this machine, or its lease ran out): a worker
still alive (same pid and start time) is adopted and watched from then on;
a run its owner took out of the queue but never got to start a worker for
fails. Then it asks the launcher about each worker this process owns that
has not been seen to end. Before an ended worker is recorded, whatever it
left in its spool (it gave up waiting for an API that was away) is stored.
At start-up, ``reconcile`` is that same pass.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import ColumnElement, select

from backend.db import Database
from backend.errors import NotFound
from backend.launcher import Launcher
from backend.leases import Lease
from backend.models import Run, utcnow
from backend.remote import is_remote
from backend.services.jobs import record_exit
from backend.services.spool import replay_spool
from dora_core.contracts.wire import FINAL_STATUSES

log = logging.getLogger(__name__)


def _launched_unended() -> tuple[ColumnElement[bool], ...]:
    """Runs an API took out of the queue whose worker has not been seen to end."""
    return (Run.launched_at.is_not(None), Run.worker_exited_at.is_(None))


def take_over_lapsed(db: Database, lease: Lease) -> list[int]:
    """Own the unended runs whose owner has lapsed; returns their ids.

    A taken-over run with no worker handle was taken out of the queue by an
    API that stopped before its worker started (or before it stored the
    handle): whether that worker started is unknown, so starting another
    could run the job twice; it fails instead. The rows are re-read under
    their lock (``SKIP LOCKED``: another process taking them over right now
    keeps them), so two processes never both take over one run.
    """
    now = utcnow()
    with db.reader() as session:
        candidates = [
            run_id
            for run_id, owner, expires in session.execute(
                select(Run.id, Run.lease_owner, Run.lease_expires_at).where(*_launched_unended())
            )
            if lease.lapsed(owner, expires, now)
        ]
    if not candidates:
        return []
    taken = []
    with db.writer() as session:
        rows = session.scalars(
            select(Run)
            .where(Run.id.in_(candidates), *_launched_unended())
            .with_for_update(skip_locked=True)
        ).all()
        for run in rows:
            if not lease.lapsed(run.lease_owner, run.lease_expires_at, now):
                continue  # renewed, or taken over by another process meanwhile
            lease.grant(run, now)
            taken.append(run.id)
            if run.worker_handle is None:  # an orphan of a start that never finished
                run.worker_exited_at = run.updated_at = now
                if run.status not in FINAL_STATUSES:
                    run.status, run.finished_at = "failed", now
                    run.error = "the API stopped before it could start this job's worker"
        session.commit()
    return taken


def check_workers(db: Database, launcher: Launcher, lease: Lease) -> list[int]:
    """One pass; returns the ids of runs whose worker was found ended."""
    take_over_lapsed(db, lease)
    with db.reader() as session:
        watched = session.execute(
            select(Run.id, Run.worker_handle, Run.run_dir).where(
                Run.worker_handle.is_not(None),
                Run.worker_exited_at.is_(None),
                Run.lease_owner == lease.owner,
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
                # What it could not send before it gave up on the API; a remote worker's
                # spool is on its node, not in the API's copy of the run dir (backend.remote).
                if run_dir and not is_remote(launcher):
                    replay_spool(db, run_id, Path(run_dir))
                record_exit(db, run_id, result)
            ended.append(run_id)
    lease.renew_if_due(db)
    return ended


def reconcile(db: Database, launcher: Launcher, lease: Lease) -> None:
    """At start-up, before serving: close or adopt what an earlier API process left open.

    Runs still waiting in the queue (not launched) are left for the
    scheduler; the rest is one ``check_workers`` pass.
    """
    check_workers(db, launcher, lease)


class Watcher:
    """A daemon thread running ``check_workers`` every ``interval_s`` seconds.

    ``after_pass`` runs after each pass (the job queue's scheduler: a worker
    that ended has freed a slot).
    """

    def __init__(
        self,
        db: Database,
        launcher: Launcher,
        lease: Lease,
        interval_s: float,
        after_pass: Callable[[], object] | None = None,
    ):
        self.db, self.launcher, self.lease, self.interval_s = db, launcher, lease, interval_s
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
                check_workers(self.db, self.launcher, self.lease)
                if self.after_pass is not None:
                    self.after_pass()
            except Exception:  # keep watching; the next pass retries
                log.exception("worker watcher pass failed")
