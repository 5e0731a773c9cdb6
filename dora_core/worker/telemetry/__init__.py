"""Telemetry from the worker to the API: a journaled, batching, non-blocking reporter.

- ``reporter``: the verbs the loop calls (register, scores, budget, scalars, event),
  batched on a background thread, retried with idempotent sequence numbers;
- ``journal``: metrics.jsonl, the spool and the commit point on disk;
- ``client``: the HTTP calls (httpx);
- ``trackers`` (+ ``heatmap``): the same records to TensorBoard and MLflow (``report_to``);
- ``sync``: ``dora sync``, an offline run's records replayed to the API later.

May import: the contracts (record shapes, run-dir names) and httpx; no torch (the
TensorBoard tracker imports ``torch.utils.tensorboard`` when it starts).
"""

from dora_core.contracts.rundir import METRICS_FILE, SPOOL_FILE, STATE_FILE, read_metrics
from dora_core.worker.telemetry.reporter import NullReporter, Reporter

__all__ = ["METRICS_FILE", "SPOOL_FILE", "STATE_FILE", "NullReporter", "Reporter", "read_metrics"]
