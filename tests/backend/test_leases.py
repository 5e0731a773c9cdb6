"""Which API process watches a launched worker (backend.leases), on the database itself.

Runs are written straight into a migrated database with the owners a real
deployment would leave there: a live API process of this machine, one that
has ended, one on another machine with its lease current or run out, none.
Then one watcher pass of a fresh API process (``take_over_lapsed``) must take
over exactly the lapsed ones; two processes taking over at the same moment
must split the runs without overlap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest

from backend.db import Database
from backend.launcher import _start_ticks
from backend.leases import Lease, this_machine
from backend.models import Run, utcnow
from backend.watcher import take_over_lapsed

pytestmark = pytest.mark.both_databases


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


def _ended_pid() -> int:
    """The pid of a process of this machine that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _add(db: Database, owner: str | None, expires_in_s: float | None, handle: bool = True) -> int:
    """A launched, unended run held by ``owner``; its worker is this test process."""
    now = utcnow()
    with db.writer() as session:
        run = Run(
            name="leased",
            status="running",
            method="dora",
            model="minilm",
            dataset="rt-snippets",
            config={},
            created_at=now,
            updated_at=now,
            queued_at=now,
            launched_at=now,
            worker_handle=f"local:{os.getpid()}:{_start_ticks(os.getpid())}" if handle else None,
            lease_owner=owner,
            lease_expires_at=None
            if expires_in_s is None
            else now + timedelta(seconds=expires_in_s),
        )
        session.add(run)
        session.commit()
        return run.id


def _row(db: Database, run_id: int) -> Run:
    with db.reader() as session:
        return session.get(Run, run_id)


def test_a_pass_takes_over_exactly_the_runs_whose_owner_lapsed(db: Database) -> None:
    here, pid = this_machine(), os.getpid()
    ended = _ended_pid()
    runs = {
        # an API process of this machine still running (another app in this very process)
        "live here": _add(db, f"{here}:{pid}:{_start_ticks(pid)}:other", -60),
        # one that ended: adopted at once, whatever its lease says
        "ended here": _add(db, f"{here}:{ended}:12345:gone", 3600),
        # another machine: only its lease tells
        "elsewhere, current": _add(db, "other-host[4026531836]:77:88:abc", 3600),
        "elsewhere, run out": _add(db, "other-host[4026531836]:77:88:abc", -1),
        "no owner (before 0006)": _add(db, None, None),
        # its owner ended between taking it out of the queue and starting its worker
        "orphan": _add(db, f"{here}:{ended}:12345:gone", 3600, handle=False),
    }
    mine = Lease(lease_s=30)
    taken = take_over_lapsed(db, mine)
    expected = {"ended here", "elsewhere, run out", "no owner (before 0006)", "orphan"}
    assert sorted(taken) == sorted(runs[name] for name in expected)
    for name, run_id in runs.items():
        row = _row(db, run_id)
        assert (row.lease_owner == mine.owner) == (name in expected), name
    orphan = _row(db, runs["orphan"])
    assert (orphan.status, orphan.error) == (
        "failed",
        "the API stopped before it could start this job's worker",
    )
    assert orphan.worker_exited_at is not None
    adopted = _row(db, runs["ended here"])  # a live worker is adopted, not ended
    assert (adopted.status, adopted.worker_exited_at) == ("running", None)
    assert take_over_lapsed(db, mine) == []  # held now: nothing more to take


def test_two_processes_taking_over_at_once_split_the_runs(db: Database) -> None:
    ended = _ended_pid()
    ids = [_add(db, f"{this_machine()}:{ended}:1:gone", 3600) for _ in range(12)]
    leases = [Lease(lease_s=30) for _ in range(2)]
    barrier = threading.Barrier(2)
    taken: dict[str, list[int]] = {}

    def pass_of(lease: Lease) -> None:
        barrier.wait()
        taken[lease.owner] = take_over_lapsed(db, lease)

    threads = [threading.Thread(target=pass_of, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = (taken[lease.owner] for lease in leases)
    assert not set(first) & set(second)  # nobody adopted twice
    assert sorted(first + second) == ids  # nobody left behind
    for lease in leases:
        for run_id in taken[lease.owner]:
            assert _row(db, run_id).lease_owner == lease.owner


def test_a_lease_is_renewed_while_held_and_released_at_shutdown(db: Database) -> None:
    lease = Lease(lease_s=0.3)
    run_id = _add(db, lease.owner, 0.3)
    before = _row(db, run_id).lease_expires_at
    lease._renewed -= 1  # a third of the lease has passed
    lease.renew_if_due(db)
    renewed = _row(db, run_id).lease_expires_at
    assert renewed > before
    lease.renew_if_due(db)  # not due again yet: unchanged
    assert _row(db, run_id).lease_expires_at == renewed
    lease.release(db)
    row = _row(db, run_id)
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
