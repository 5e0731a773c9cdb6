"""The telemetry reporter: the training loop hands it records, a thread ships them.

The loop's calls only build a small dict and put it on a queue, so a slow or
absent API never slows a training step. The thread gathers what arrived in
the last ``flush_interval`` seconds into one batch, journals it (see
``journal.py``) and posts the journal's pending requests in order, moving on
only after a 2xx. While the API is unreachable, batches wait in
``telemetry-spool.jsonl`` and go out, in order, when it answers again (also
after a restart: a resumed run replays the spool first). Every batch carries
its ``seq``, so a retry of a batch the API already stored is harmless.

Every write carries the run's writer token and the id of the API instance
the run belongs to. An API of another instance at the same address (another
database) refuses the worker before storing anything; the reporter then
treats it like an API that is down: the spool waits for the right one.
``unreachable_for`` tells the loop how long nothing got through, so that an
orphaned worker can stop (``Telemetry.orphan_timeout``).

The same thread hands each journaled batch and the module register to the
run's trackers (``trackers.py``: TensorBoard, MLflow), and the register is
kept in the run directory (``register.json``) whether an API listens or not,
so that ``dora sync`` can upload an offline run later.

The flush interval is 1 s: each batch costs the API a request and a
transaction, and on a shared 2-core machine that cost is what the training
run feels (bench/telemetry_overhead.py); the dashboard polls every 1.5 s.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

from dora_core.contracts.wire import BudgetRecord, EventRecord, ScalarsRecord, ScoresRecord
from dora_core.worker.telemetry.client import (
    ApiClient,
    ApiRejected,
    ApiUnavailable,
    WrongInstance,
)
from dora_core.worker.telemetry.journal import Journal
from dora_core.worker.telemetry.trackers import Trackers
from dora_core.worker.telemetry.upload import UPLOAD_TIMEOUT_S, upload_adapter

log = logging.getLogger("dora.telemetry")

_CLOSE = object()
# close() waits at least this long for an API that has been away longer than its grace
_LAST_TRY_S = 1.0


class Reporter:
    """Collects scores, budget, scalars and events; journals them; streams them to the API.

    With ``api_url=None`` the reporter only writes ``metrics.jsonl``.
    ``run_id=None`` with an API means "create a run first" (``POST /api/runs``
    with ``run_name`` and ``config``); the id, the run's writer token and the
    API's instance id from that answer are kept in the journal, so a resumed
    run reports into the same run of the same API. ``token`` (the launcher's
    ``DORA_INGEST_TOKEN``, or ``DORA_API_TOKEN``) and ``instance`` (the
    launcher's ``DORA_API_INSTANCE``) take precedence over the journal's. A
    resumed run with no token at all asks the API for a new one when the API
    answers 401. ``trackers`` get every journaled batch (``trackers.py``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        api_url: str | None = None,
        *,
        run_id: int | None = None,
        token: str | None = None,
        instance: str | None = None,
        run_name: str = "run",
        config: dict | None = None,
        flush_interval: float = 1.0,
        max_batch_records: int = 200,
        max_backoff: float = 5.0,
        trackers: Trackers | None = None,
        upload_adapter: bool = False,
    ):
        self.api_url = api_url
        # The API cannot read this run dir (a cluster node): send it the final adapter.
        self._upload_adapter = upload_adapter and api_url is not None
        self._trackers = trackers or Trackers.none()
        self.journal = Journal(run_dir, spool=api_url is not None)
        if run_id is not None and (self.journal.run_id, self.journal.instance) != (
            run_id,
            instance or self.journal.instance,
        ):
            self.journal.set_run(run_id, instance=instance)
        self._client = (
            ApiClient(
                api_url, token or self.journal.token, instance=instance or self.journal.instance
            )
            if api_url
            else None
        )
        self._run_name = run_name
        self._config = config or {}
        self._flush_interval = flush_interval
        self._max_batch = max_batch_records
        self._max_backoff = max_backoff
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = threading.Event()
        self._deadline = math.inf
        self._idle = threading.Event()
        self._stopped = False  # the API refused us for good (auth, unknown run)
        self._failing_since: float | None = None  # first failed delivery since the last success
        self._reported_foreign: str | None = None  # the foreign instance last logged
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="dora-telemetry", daemon=True)
        self._thread.start()

    # --- called from the training loop: cheap, never blocking ---
    def register(self, body: dict) -> None:
        """Module list + totals (``POST /api/runs/{id}/register``), sent before any batch;
        kept in the run directory too (``register.json``)."""
        try:
            self.journal.keep_register(body)
        except OSError as exc:
            log.error("could not keep the module register in the run directory: %s", exc)
        self._queue.put(("register", body))

    def scores(
        self, step: int, values: dict[str, list[float]], masks: dict[str, list[int]]
    ) -> None:
        self._put(ScoresRecord(type="scores", step=step, values=values, masks=masks))

    def budget(self, step: int, target: int, live: int, b: float) -> None:
        self._put(BudgetRecord(type="budget", step=step, target=target, live=live, b=b))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        if values:
            self._put(ScalarsRecord(type="scalars", step=step, values=values))

    def event(
        self,
        step: int,
        kind: str,
        message: str = "",
        data: dict | None = None,
        *,
        force: bool = False,
    ) -> None:
        """``force``: report even when a resumed run is replaying steps already reported."""
        record = EventRecord(type="event", step=step, kind=kind, message=message, data=data)
        if force:
            record["force"] = True
        self._put(record)

    def _put(self, record: dict) -> None:
        self._queue.put(("record", record))

    def upload_adapter(self, folder: Path, step: int) -> bool:
        """Send the final adapter to the API when it cannot read this run dir (``upload.py``;
        blocks while it retries). A failure is a warning and a ``log`` event, never a failed
        run. True when the API has it; False also when uploading is not asked for."""
        if not self._upload_adapter or self._client is None:
            return False
        run_id = self.journal.run_id
        if run_id is None:
            problem = "the run was never created at the API"
        else:
            client = ApiClient(
                self._client.base_url,
                self._client.token,
                timeout=UPLOAD_TIMEOUT_S,
                instance=self._client.instance,
            )
            try:
                problem = upload_adapter(client, run_id, folder)
            finally:
                client.close()
        if problem is None:
            log.info("adapter uploaded to the API (run %s)", run_id)
            return True
        message = f"the adapter was not uploaded to the API: {problem}; it is still in {folder}"
        log.warning(message)
        self.event(step, "log", message, {"adapter_upload": "failed"})
        return False

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until everything handed over so far is in ``metrics.jsonl`` (not necessarily
        at the API). The loop calls this before a checkpoint, so that a run resumed from
        the checkpoint never has a hole between what was journaled and where it restarts."""
        done = threading.Event()
        self._queue.put(("sync", done))
        return done.wait(timeout)

    def unreachable_for(self) -> float:
        """Seconds since deliveries started failing (API down, or another instance answering
        at its address); 0 while they go through."""
        since = self._failing_since
        return 0.0 if since is None else time.monotonic() - since

    # --- shutting down ---
    def close(self, timeout: float = 15.0) -> bool:
        """Flush everything; wait up to ``timeout`` s for the API. True if nothing is left over.

        The API gets ``timeout`` s of grace in all, not that much more: time it has already
        been unreachable counts, so an orphaned worker stopped with SIGTERM makes one last
        try and leaves (its spool kept) instead of waiting out a server that is gone.
        """
        grace = max(timeout - self.unreachable_for(), min(timeout, _LAST_TRY_S))
        self._deadline = time.monotonic() + grace
        self._queue.put((_CLOSE, None))
        self._thread.join(timeout + 5)
        if self._client is not None:
            self._client.close()
        return not self.journal.pending

    # --- the background thread ---
    def _run(self) -> None:
        backoff = 0.0
        retry_at = 0.0
        closing = False
        while True:
            was_closing = closing
            records, closing = self._drain(closing)
            if closing and not was_closing:
                retry_at = 0.0  # the last records go out now, whatever the backoff said
            if records:
                self._commit(records)
            if self._client is not None and not self._stopped and time.monotonic() >= retry_at:
                if self._send_pending():
                    backoff = 0.0
                    self._failing_since = None
                else:
                    backoff = min(self._max_backoff, max(0.25, backoff * 2))
                    retry_at = time.monotonic() + backoff
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
            done = not self.journal.pending or self._client is None or self._stopped
            if closing and (done or time.monotonic() >= self._deadline):
                self._trackers.close()
                return
            if closing and backoff:
                time.sleep(min(backoff, max(0.0, self._deadline - time.monotonic())))

    def _drain(self, closing: bool) -> tuple[list[dict], bool]:
        """Records that arrived within one flush interval (registrations go straight to the spool)."""
        records: list[dict] = []
        end = time.monotonic() + (0 if closing else self._flush_interval)
        while len(records) < self._max_batch:
            timeout = end - time.monotonic()
            try:
                kind, payload = (
                    self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if kind is _CLOSE:
                closing = True
                end = 0.0
            elif kind == "sync":
                if records:
                    self._commit(records)
                    records = []
                payload.set()
            elif kind == "register":
                if records:  # keep the order: earlier records go into an earlier batch
                    self._commit(records)
                    records = []
                if self._client is not None:
                    self.journal.spool({"path": "register", "body": payload})
                self._trackers.register(payload)
            else:
                records.append(payload)
        return records, closing

    def _commit(self, records: list[dict]) -> None:
        try:
            body = self.journal.commit(records)
        except (OSError, ValueError) as exc:  # disk full, a NaN that slipped through
            self.last_error = f"could not journal telemetry: {exc}"
            log.error(self.last_error)
            return
        if body is not None:
            self._trackers.batch(body)

    def _send_pending(self) -> bool:
        """Post pending requests in order; False when the API is unreachable (or not ours)."""
        assert self._client is not None
        try:
            if self.journal.run_id is None:
                created = self._client.create_run(self._run_name, self._config)
                self.journal.set_run(
                    int(created["id"]), created.get("token"), created.get("instance")
                )
                self._client.set_instance(self.journal.instance)
                if self._client.token is None:
                    self._client.set_token(self.journal.token)
            while self.journal.pending:
                item = self.journal.pending[0]
                self._post(item)
                self.journal.acknowledge()
        except WrongInstance as exc:
            if self._reported_foreign != exc.api_instance:
                log.error(
                    "telemetry API at %s is instance %s, not instance %s that run %s belongs to "
                    "(another API with its own database answers there); it stored nothing, "
                    "and the spool (%s) waits for instance %s",
                    self._client.base_url,
                    exc.api_instance,
                    exc.ours,
                    self.journal.run_id,
                    self.journal.spool_path,
                    exc.ours,
                )
                self._reported_foreign = exc.api_instance
            self.last_error = str(exc)
            return False
        except ApiUnavailable as exc:
            if self.last_error != str(exc):
                log.warning(
                    "telemetry API unreachable (%s); spooling to %s", exc, self.journal.spool_path
                )
            self.last_error = str(exc)
            return False
        except ApiRejected as exc:
            return self._rejected(exc)
        self._reported_foreign = None
        return True

    def _post(self, item: dict) -> None:
        """One pending request. A run without a writer token (resumed, its launched worker's
        token gone with that worker) gets a new one when the API asks for it (401)."""
        assert self._client is not None
        run_id = self.journal.run_id
        call = self._client.register if item["path"] == "register" else self._client.post_telemetry
        try:
            call(run_id, item["body"])
        except ApiRejected as exc:
            if exc.status != 401 or self._client.token is not None:
                raise
            try:
                issued = self._client.new_token(run_id)
            except ApiRejected as refused:  # stop (the spool is kept), never skip the request
                raise ApiRejected(401, f"no writer token, and none was issued: {refused}") from None
            self.journal.set_run(run_id, issued.get("token"), issued.get("instance"))
            self._client.set_token(self.journal.token)
            self._client.set_instance(self.journal.instance)
            log.info("telemetry: run %s has a new writer token (resumed without one)", run_id)
            call(run_id, item["body"])

    def _rejected(self, exc: ApiRejected) -> bool:
        self.last_error = str(exc)
        if exc.status in (401, 403, 404):
            # Wrong token or unknown run: nothing will get through; keep the spool for later.
            log.error(
                "telemetry API refused this run (%s); reporting stops, the spool is kept", exc
            )
            self._stopped = True
            return True
        # A request the API will never accept (422, 409): skip it rather than block the stream.
        item = self.journal.pending[0]
        log.error("telemetry API rejected a %s request (%s); skipping it", item["path"], exc)
        self.journal.acknowledge()
        return True


class NullReporter:
    """Stands in on ranks other than 0 and wherever reporting is not wanted."""

    def register(self, body: dict) -> None: ...
    def sync(self, timeout: float = 0.0) -> bool:
        return True

    def scores(self, *args: Any, **kwargs: Any) -> None: ...
    def budget(self, *args: Any, **kwargs: Any) -> None: ...
    def scalars(self, *args: Any, **kwargs: Any) -> None: ...
    def event(self, *args: Any, **kwargs: Any) -> None: ...

    def upload_adapter(self, folder: Path, step: int) -> bool:
        return False

    def close(self, timeout: float = 0.0) -> bool:
        return True

    def unreachable_for(self) -> float:
        return 0.0
