"""Telemetry from the worker to the API: a journaled, batching, non-blocking reporter."""

from dora_core.contracts.rundir import METRICS_FILE, SPOOL_FILE, STATE_FILE, read_metrics
from dora_core.worker.telemetry.reporter import NullReporter, Reporter

__all__ = ["METRICS_FILE", "SPOOL_FILE", "STATE_FILE", "NullReporter", "Reporter", "read_metrics"]
