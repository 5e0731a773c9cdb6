"""`dora sync RUN_DIR --api URL`: a run trained without an API becomes an ordinary run there.

W&B's offline mode and ``wandb sync`` are the model. Training without
``--api`` still journals every record to ``metrics.jsonl`` and keeps the
module register (``register.json``); syncing replays them through the same
endpoints and the same client the live reporter uses:

1. ``GET /api/health``: which API instance (database) answers at URL. A run
   directory whose journal already reports to that instance was reported
   live: nothing is uploaded (a spool it left behind is sent, as
   ``dora train --resume`` would send it).
2. ``POST /api/runs`` (name + job config, as the reporter creates a run),
   then ``POST .../register`` with the kept register.
3. The committed lines of ``metrics.jsonl``, in order, in batches with
   rising ``seq`` (``POST .../telemetry``); the run's final event among them
   sets its final status.

Progress is kept per API instance in ``sync.json`` (owner-only: it holds the
run's writer token): the run id, the lines sent, the next ``seq`` and the
batch in flight. A batch's line range is written down before it is posted,
so after a crash or a refused connection the same lines go out again under
the same ``seq``, which the API acknowledges without storing them twice.
Syncing again sends only the lines added since (a run still training
offline), or nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora_core.contracts.job import JobConfigError, load_job_config
from dora_core.contracts.rundir import (
    JOB_FILE,
    METRICS_FILE,
    REGISTER_FILE,
    STATE_FILE,
    SYNC_FILE,
    committed_spool,
    read_lines,
    read_register,
)
from dora_core.contracts.wire import FINAL_EVENT_STATUS
from dora_core.worker.telemetry.client import ApiClient, ApiRejected, ApiUnavailable
from dora_core.worker.telemetry.journal import _atomic_write, batch_body

BATCH_RECORDS = 200  # the live reporter's largest batch
BATCH_BYTES = 2 * 1024 * 1024  # well under the API's request limit (8 MiB by default)


class SyncError(Exception):
    """A sync that cannot go on; ``code`` 2 for a bad run directory, 1 for the API."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclass
class SyncOutcome:
    run_id: int
    sent: int  # metrics.jsonl lines sent this time
    total: int  # committed lines in metrics.jsonl
    finished: bool  # the run's final event has reached the API
    created: bool = False  # this sync created the run
    live: bool = False  # the run was reported live to this API; nothing uploaded
    spool_left: int = 0  # live: requests of its spool still not delivered


def sync(
    run_dir: str | Path,
    api_url: str,
    token: str | None = None,
    *,
    batch_records: int = BATCH_RECORDS,
    retries: int = 4,
) -> SyncOutcome:
    """Upload ``run_dir`` to the API at ``api_url`` (see the module docstring)."""
    run_dir = Path(run_dir)
    job, register = _read_run(run_dir)
    client = ApiClient(api_url, token)
    try:
        try:
            instance = client.health().get("instance") or api_url
        except ApiUnavailable as exc:
            raise SyncError(f"cannot reach the API at {api_url}: {exc}", 1) from None
        journal = _read_json(run_dir / STATE_FILE)
        if journal.get("run_id") is not None and journal.get("instance") == instance:
            return _reported_live(run_dir, api_url, token, int(journal["run_id"]))
        lines = _committed_lines(run_dir, journal)
        progress = _Progress(run_dir, instance)
        entry, created = progress.entry, progress.entry is None
        if entry is None:
            answer = _call(lambda: client.create_run(job.display_name, job.model_dump(mode="json")))
            entry = progress.start(api_url, int(answer["id"]), answer.get("token"))
        client.set_instance(None if instance == api_url else instance)
        client.set_token(token or entry["token"])
        run_id = entry["run_id"]
        flight_end = entry["in_flight"]["end"] if entry["in_flight"] is not None else 0
        if created or len(lines) > max(entry["lines"], flight_end):
            # Registering (again) sets the run running: only with records still to come, so
            # that a run already synced keeps its final status.
            _call(lambda: client.register(run_id, register))
        sent = 0
        if entry["in_flight"] is not None:  # posted or not before the last sync stopped
            sent += _send(client, progress, lines, entry["in_flight"], retries)
        while entry["lines"] < len(lines):
            start = entry["lines"]
            batch = {
                "seq": entry["next_seq"],
                "start": start,
                "end": _cut(lines, start, batch_records),
            }
            progress.update(in_flight=batch)
            sent += _send(client, progress, lines, batch, retries)
        finished = any(
            r["type"] == "event" and r["kind"] in FINAL_EVENT_STATUS for r in map(json.loads, lines)
        )
        return SyncOutcome(run_id, sent, len(lines), finished, created=created)
    finally:
        client.close()


def _read_run(run_dir: Path) -> tuple[Any, dict]:
    """The job and the module register; a SyncError naming what is missing."""
    if not run_dir.is_dir():
        raise SyncError(f"{run_dir} is not a directory")
    if not (run_dir / JOB_FILE).is_file() or not (run_dir / METRICS_FILE).is_file():
        raise SyncError(f"{run_dir} is not a run directory (no {JOB_FILE} or {METRICS_FILE})")
    try:
        job = load_job_config(run_dir / JOB_FILE)
    except JobConfigError as exc:
        raise SyncError(f"{run_dir / JOB_FILE}: {exc}") from None
    register = read_register(run_dir)
    if register is None:
        raise SyncError(
            f"{run_dir} has no {REGISTER_FILE}: the run stopped before its model was built, "
            "or was trained by a version that did not keep it"
        )
    return job, register


def _committed_lines(run_dir: Path, journal: dict) -> list[str]:
    """``metrics.jsonl`` up to the journal's commit point: a line past it may still be
    dropped and written anew by a resumed run, so it waits for the next sync."""
    lines = read_lines(run_dir / METRICS_FILE)
    committed = journal.get("metrics_lines")
    return lines if committed is None else lines[:committed]


def _cut(lines: list[str], start: int, most: int) -> int:
    """The end of the batch that starts at ``start``: ``most`` lines, fewer past BATCH_BYTES."""
    end, size = start, 0
    while end < len(lines) and end - start < most:
        size += len(lines[end]) + 1
        if size > BATCH_BYTES and end > start:
            break
        end += 1
    return end


def _send(
    client: ApiClient, progress: _Progress, lines: list[str], batch: dict, retries: int
) -> int:
    """Post one batch (``seq`` and its line range); the progress moves past it."""
    records = [json.loads(line) for line in lines[batch["start"] : batch["end"]]]
    body = batch_body(batch["seq"], records)
    run_id = progress.entry["run_id"]
    try:
        _call(lambda: client.post_telemetry(run_id, body), retries)
    except SyncError as exc:
        where = f"lines {batch['start'] + 1}-{batch['end']} of {METRICS_FILE}"
        raise SyncError(f"{exc} ({where}; `dora sync` again goes on from there)", 1) from None
    progress.update(lines=batch["end"], next_seq=batch["seq"] + 1, in_flight=None)
    return batch["end"] - batch["start"]


def _call(request: Any, retries: int = 4) -> Any:
    """One API call, retried while the API is unreachable; refusals end the sync."""
    for attempt in range(retries):
        try:
            return request()
        except ApiRejected as exc:
            raise SyncError(f"the API refused: {exc}", 1) from None
        except ApiUnavailable as exc:
            if attempt == retries - 1:
                raise SyncError(f"the API did not answer: {exc}", 1) from None
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _reported_live(run_dir: Path, api_url: str, token: str | None, run_id: int) -> SyncOutcome:
    """A run this API already has: send what its spool still holds, nothing else."""
    lines = _committed_lines(run_dir, _read_json(run_dir / STATE_FILE))
    left = 0
    if committed_spool(run_dir):
        from dora_core.worker.telemetry.reporter import Reporter

        reporter = Reporter(run_dir, api_url, token=token)
        reporter.close(timeout=60)
        left = len(reporter.journal.pending)
    return SyncOutcome(run_id, 0, len(lines), finished=False, live=True, spool_left=left)


class _Progress:
    """``sync.json``: per API instance, the run a run directory was synced into and how far."""

    def __init__(self, run_dir: Path, instance: str):
        self.path = run_dir / SYNC_FILE
        self.instance = instance
        self.all: dict[str, dict] = _read_json(self.path)
        self.entry: dict[str, Any] | None = self.all.get(instance)

    def start(self, api_url: str, run_id: int, token: str | None) -> dict[str, Any]:
        self.entry = {
            "api_url": api_url,
            "run_id": run_id,
            "token": token,
            "lines": 0,
            "next_seq": 0,
            "in_flight": None,
        }
        self._write()
        return self.entry

    def update(self, **fields: Any) -> None:
        assert self.entry is not None
        self.entry.update(fields)
        self._write()

    def _write(self) -> None:
        self.all[self.instance] = self.entry  # type: ignore[assignment]
        _atomic_write(self.path, json.dumps(self.all, indent=1) + "\n", private=True)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
