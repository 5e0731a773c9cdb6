"""Which API process watches a launched worker: a lease on the run's row.

Several API processes may share one database (PostgreSQL behind a load
balancer, or two servers on one SQLite file). Every one of them sees every
unfinished worker in the database, but only the process that launched a
worker is its parent: it alone learns the exit status (another process sees
a zombie, or nothing at all on another machine). So the launching process
owns the run (``runs.lease_owner``) and is the only one that records the
worker's end. Another process takes a run over only when its owner has
lapsed:

- the owner ran on this machine (same host name and PID namespace) and its
  process has ended: a crashed or killed API, adopted at once;
- or the owner is elsewhere and has not renewed the lease for
  ``DORA_WORKER_LEASE_S`` seconds (a machine that went away).

A process releases its leases when it shuts down, so a restarted API adopts
the workers of the one before at its first pass. Taking a run over is a
conditional update under the row's lock, so two processes never both adopt
(and both record) the same worker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update

from backend.db import Database
from backend.launcher import LocalProcessLauncher, _start_ticks
from backend.models import Run, utcnow


def this_machine() -> str:
    """Host name and PID namespace: where a pid means the same process."""
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    return f"{socket.gethostname()}{namespace}"


class Lease:
    """This API process's claim on the workers it launched or adopted."""

    def __init__(self, lease_s: float):
        self.lease_s = lease_s
        self.machine = this_machine()
        pid = os.getpid()
        # One id per app: two apps in one process (tests) are two owners.
        self.owner = f"{self.machine}:{pid}:{_start_ticks(pid)}:{uuid.uuid4().hex[:12]}"
        self._renewed = time.monotonic()

    def expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_s)

    def grant(self, run: Run, now: datetime) -> None:
        """Make this process the run's owner (the caller holds the row and commits)."""
        run.lease_owner, run.lease_expires_at = self.owner, self.expiry(now)

    def lapsed(self, owner: str | None, expires_at: datetime | None, now: datetime) -> bool:
        """Whether another process may take over a run held by ``owner`` until
        ``expires_at``: no owner, an owner process on this machine that has ended, or a
        lease elsewhere that ran out."""
        if owner is None:
            return True
        if owner == self.owner:
            return False
        machine, _, rest = owner.partition(":")
        pid, _, ticks = rest.partition(":")
        if machine == self.machine and pid.isdigit():
            return not LocalProcessLauncher._alive(int(pid), ticks.split(":")[0])
        return expires_at is None or expires_at < now

    def renew_if_due(self, db: Database) -> None:
        """Push this process's leases forward, every third of the lease at most."""
        if time.monotonic() - self._renewed < self.lease_s / 3:
            return
        with db.writer() as session:
            session.execute(
                update(Run)
                .where(Run.lease_owner == self.owner, Run.worker_exited_at.is_(None))
                .values(lease_expires_at=self.expiry(utcnow()))
            )
            session.commit()
        self._renewed = time.monotonic()

    def release(self, db: Database) -> None:
        """At shutdown: the next API to look (a restarted one) adopts these workers at once."""
        with db.writer() as session:
            session.execute(
                update(Run)
                .where(Run.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            session.commit()
