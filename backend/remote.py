"""Launchers whose workers share no filesystem with the API.

A local worker writes its run dir where the API can read it: the API tails
``worker.log``, replays ``telemetry-spool.jsonl`` after the worker ended and
serves ``adapter/``. A worker on another machine (a Ray cluster node) does
not, so for its runs:

- the log comes from the launcher (``RemoteLauncher.log_tail``);
- what the worker left in its spool stays on its node: the API does not look
  for it in its own copy of the run dir (``dora train --resume`` on the node
  sends it);
- the adapter travels through the API: the worker uploads it
  (``PUT /api/runs/{id}/adapter``, ``backend.services.adapters``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class LauncherUnavailable(OSError):
    """The launcher's cluster did not answer (or refused); the message says which and why."""


@runtime_checkable
class RemoteLauncher(Protocol):
    """The part of a launcher that only remote launchers have."""

    def log_tail(self, handle: str, count: int) -> list[str] | None:
        """The last ``count`` lines of the worker's output; None when ``handle`` is not one
        of this launcher's (its log is then a file in the run dir). Raises
        ``LauncherUnavailable`` when the cluster cannot be asked."""
        ...


def is_remote(launcher: object) -> bool:
    """Whether ``launcher``'s workers write their run dirs somewhere the API cannot read."""
    return isinstance(launcher, RemoteLauncher)
