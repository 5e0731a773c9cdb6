"""Noticing workers that ended, including those left by an earlier API process.

One pass looks at every run whose worker has not been seen to end and asks
the launcher about it. The same pass at start-up reconciles runs left
"running" by a previous API process: a worker still alive (same pid and
start time) is adopted and watched; one that is gone is recorded as ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from sqlalchemy import select

from backend.db import Database
from backend.errors import NotFound
from backend.launcher import Launcher
from backend.models import Run
from backend.services.jobs import record_exit

log = logging.getLogger(__name__)


def check_workers(db: Database, launcher: Launcher) -> list[int]:
    """One pass; returns the ids of runs whose worker was found ended."""
    with db.reader() as session:
        watched = session.execute(
            select(Run.id, Run.worker_handle).where(
                Run.worker_handle.is_not(None), Run.worker_exited_at.is_(None)
            )
        ).all()
    ended = []
    for run_id, handle in watched:
        try:
            result = launcher.poll(handle)
        except ValueError:  # a handle some other launcher wrote
            continue
        if result is not None:
            with contextlib.suppress(NotFound):  # deleted meanwhile
                record_exit(db, run_id, result)
            ended.append(run_id)
    return ended


class Watcher:
    """A daemon thread running ``check_workers`` every ``interval_s`` seconds."""

    def __init__(self, db: Database, launcher: Launcher, interval_s: float):
        self.db, self.launcher, self.interval_s = db, launcher, interval_s
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
            except Exception:  # keep watching; the next pass retries
                log.exception("worker watcher pass failed")
