"""The reporter's durable side: metrics.jsonl, the spool and a small state file.

Three files in the run directory, written in this order for every batch:

1. ``metrics.jsonl``: one line per record (what the run reported),
2. ``telemetry-spool.jsonl``: the batch, waiting for the API,
3. ``telemetry-state.json``: the commit point (next seq, metrics line count), and who
   the run reports to: the API's run id, the run's writer token when the API handed it
   to this worker's reporter (``POST /api/runs``, or a new one for a resumed run; a
   launched worker's token stays in its environment) and the API's instance id. The
   file is readable by its owner only.

A SIGKILL between two writes leaves a batch half written; ``recover`` keeps
it only if both earlier writes are complete and drops it otherwise, so
``metrics.jsonl`` always equals the records of the committed batches. A
resumed run regenerates the steps since its checkpoint; records at or
below the step a stream had reached when the journal was opened are skipped,
so nothing is reported twice and the API never sees a stream go backwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dora_core.contracts.rundir import (
    METRICS_FILE,
    REGISTER_FILE,
    SPOOL_FILE,
    STATE_FILE,
    read_lines,
    settle,
)
from dora_core.contracts.wire import BATCH_KEYS, stream_keys

log = logging.getLogger("dora.telemetry")


def _atomic_write(path: Path, text: str, private: bool = False) -> None:
    """Replace ``path`` with ``text`` at once; ``private``: readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Journal:
    """Local record of what was reported and what still has to reach the API."""

    def __init__(self, run_dir: str | Path, spool: bool):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / METRICS_FILE
        self.spool_path = self.dir / SPOOL_FILE
        self.state_path = self.dir / STATE_FILE
        self.use_spool = spool
        self.state: dict[str, Any] = {
            "next_seq": 0,
            "metrics_lines": 0,
            "run_id": None,
            "token": None,  # the run's writer token, when the API gave it to this reporter
            "instance": None,  # the id of the API instance the run belongs to
        }
        self.pending: list[dict] = []  # spooled requests, oldest first
        # Per stream, the last step reported before this process started.
        self.replay_until: dict[tuple[str, ...], int] = {}
        self._recover()

    # --- start-up ---
    def _recover(self) -> None:
        if self.state_path.exists():
            self.state.update(json.loads(self.state_path.read_text(encoding="utf-8")))
        metrics = read_lines(self.metrics_path)
        spooled = [json.loads(line) for line in read_lines(self.spool_path)]
        pending, committed, self.state["next_seq"] = settle(
            spooled, self.state["next_seq"], self.state["metrics_lines"], len(metrics)
        )
        self.state["metrics_lines"] = committed
        self.pending = pending if self.use_spool else []
        metrics = metrics[:committed]
        _atomic_write(self.metrics_path, "".join(line + "\n" for line in metrics))
        self._rewrite_spool()
        self._write_state()
        for line in metrics:
            record = json.loads(line)
            for key in stream_keys(record):
                self.replay_until[key] = max(self.replay_until.get(key, -1), record["step"])

    # --- writing ---
    def already_reported(self, record: dict) -> bool:
        """True for a record a resumed run regenerates (its stream had reached its step)."""
        return all(self.replay_until.get(key, -1) >= record["step"] for key in stream_keys(record))

    def commit(self, records: Iterable[dict]) -> dict | None:
        """Write a batch of new records; returns the batch body (None if all were old)."""
        fresh = [r for r in records if r.get("force") or not self.already_reported(r)]
        lines, kept = [], []
        for record in fresh:
            record.pop("force", None)
            line = _wire_line(record)
            if line is None:
                continue
            lines.append(line)
            kept.append(record)
        if not lines:
            return None
        body = batch_body(self.state["next_seq"], kept)
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.writelines(lines)
        if self.use_spool:
            self.spool({"path": "telemetry", "body": body})
        self.state["next_seq"] += 1
        self.state["metrics_lines"] += len(lines)
        self._write_state()
        return body

    def keep_register(self, body: dict) -> None:
        """The module register, for readers of the run directory (``dora sync``, ``dora plot``)."""
        _atomic_write(self.dir / REGISTER_FILE, json.dumps(body, indent=1) + "\n")

    def spool(self, item: dict) -> None:
        """Queue a request for the API (kept on disk until acknowledged)."""
        with self.spool_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(item) + "\n")
        self.pending.append(item)

    def acknowledge(self) -> None:
        """The oldest pending request reached the API."""
        self.pending.pop(0)
        self._rewrite_spool()

    def set_run(self, run_id: int, token: str | None = None, instance: str | None = None) -> None:
        """The API run this journal reports into; a token or instance of another run goes."""
        if run_id != self.state["run_id"]:
            self.state["token"] = None
            self.state["instance"] = None
        self.state["run_id"] = run_id
        self.state["token"] = token or self.state["token"]
        self.state["instance"] = instance or self.state["instance"]
        self._write_state()

    @property
    def run_id(self) -> int | None:
        return self.state["run_id"]

    @property
    def token(self) -> str | None:
        return self.state["token"]

    @property
    def instance(self) -> str | None:
        return self.state["instance"]

    def _rewrite_spool(self) -> None:
        _atomic_write(self.spool_path, "".join(json.dumps(i) + "\n" for i in self.pending))

    def _write_state(self) -> None:
        _atomic_write(self.state_path, json.dumps(self.state), private=True)


def batch_body(seq: int, records: Iterable[dict]) -> dict[str, Any]:
    """A telemetry batch as the API takes it: ``seq`` and the records grouped by kind
    (``metrics.jsonl`` lines less their ``type``), in their order within each kind."""
    body: dict[str, Any] = {"seq": seq}
    for record in records:
        item = {k: v for k, v in record.items() if k != "type"}
        body.setdefault(BATCH_KEYS[record["type"]], []).append(item)
    return body


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _wire_line(record: dict) -> str | None:
    """The record's metrics.jsonl line, as the API will take it; None to leave it out.

    A diverged run produces NaN. An event keeps its place with NaN or infinity
    in its data turned into null (a ``finished`` event whose eval loss is NaN
    must still arrive); a scores or budget record holding one is left out,
    alone, since the API refuses those (422) and one bad record must not take
    the rest of its batch down with it.
    """
    if record["type"] == "event" and record.get("data") is not None:
        record["data"] = _finite(record["data"])
    try:
        return json.dumps(record, allow_nan=False) + "\n"
    except ValueError:
        log.warning(
            "telemetry: %s record at step %s holds NaN or infinity; not reported",
            record["type"],
            record.get("step"),
        )
        return None
