"""Taking in what a worker left in its spool because the API was away when it ended.

A worker that cannot reach the API keeps its batches in
``<run dir>/telemetry-spool.jsonl`` and, after its last step, waits a while
for the API before it exits with the rest still there (docs/protocol.md).
When the API later sees that worker ended (the watcher, or ``reconcile`` at
start-up), it reads that file and stores the batches itself, oldest first,
through the same ``ingest`` the HTTP endpoint uses. Sequence numbers make
this safe to repeat: a batch that did arrive is acknowledged as a duplicate,
and a later ``dora train --resume`` that replays the same spool stores
nothing twice. The worker's files are only read, never changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from backend.db import Database
from backend.errors import Conflict, Invalid
from backend.schemas import RegisterIn, TelemetryBatch
from backend.services.ingest import ingest
from backend.services.runs import get_run, register
from dora_core.contracts.rundir import committed_spool
from dora_core.contracts.wire import FINAL_STATUSES

log = logging.getLogger(__name__)


@dataclass
class SpoolReplay:
    """What became of the spooled requests (refused ones stay in the worker's files)."""

    stored: int = 0
    duplicates: int = 0
    refused: int = 0


def replay_spool(db: Database, run_id: int, run_dir: Path) -> SpoolReplay:
    """Store a finished worker's spooled batches in order; raises NotFound if the run is gone."""
    result = SpoolReplay()
    try:
        items = committed_spool(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable: leave it to --resume
        log.warning("run %s: its worker's spool could not be read: %s", run_id, exc)
        return result
    for item in items:
        try:
            with db.writer() as session:
                if item.get("path") == "register":
                    run = get_run(session, run_id)
                    if run.registered_at is not None or run.status in FINAL_STATUSES:
                        result.duplicates += 1
                        continue
                    register(session, run_id, RegisterIn.model_validate(item["body"]))
                    result.stored += 1
                else:
                    ack = ingest(session, run_id, TelemetryBatch.model_validate(item["body"]))
                    result.duplicates += ack.duplicate
                    result.stored += not ack.duplicate
        except (ValidationError, Invalid, Conflict) as exc:
            # what the worker's own reporter does with a 422 or 409: skip it, go on
            log.warning("run %s: a spooled %s was refused: %s", run_id, item.get("path"), exc)
            result.refused += 1
    if result.stored or result.refused:
        log.info(
            "run %s: took in its worker's spool: %d stored, %d already there, %d refused",
            run_id,
            result.stored,
            result.duplicates,
            result.refused,
        )
    return result
