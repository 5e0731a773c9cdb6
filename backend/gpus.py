"""The GPUs the local launcher hands out: one set per job, never shared.

The inventory is fixed when the API starts (``GpuInventory.discover``):

1. ``DORA_GPUS=0,1,...``: the ids to hand out, as ``CUDA_VISIBLE_DEVICES``
   takes them (indices, ``GPU-<uuid>``, ``MIG-<uuid>``); ``none`` for none;
2. else the API's own ``CUDA_VISIBLE_DEVICES`` when it is set (whoever
   started the API already chose its GPUs);
3. else one id per GPU that ``nvidia-smi -L`` lists;
4. else none.

No torch here: the API never imports it (``tests/test_layers.py``), and
asking CUDA would also make the API process hold a context on a GPU.

A job reserves ``JobConfig.gpu_count`` GPUs when it leaves the queue
(``backend.services.jobs``), under the queue's lock; the reservation is
stored with its run (``runs.gpu_reservation``: this machine's name and the
ids) and holds until the worker is seen to end. So every API process on
the machine sees the same free set, and processes on other machines (one
PostgreSQL database behind several hosts) keep their own.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# One CUDA_VISIBLE_DEVICES entry: an index or a GPU-/MIG- UUID (MIG ids hold '/').
GPU_ID = re.compile(r"^[A-Za-z0-9][\w./:-]*$")
_SMI_LINE = re.compile(r"^GPU (\d+):")


def parse_ids(text: str) -> tuple[str, ...]:
    """``"0, 1,2"`` -> ("0", "1", "2"); ``"none"`` -> (); ValueError naming a bad id."""
    text = text.strip()
    if text.lower() == "none":
        return ()
    ids = tuple(part.strip() for part in text.split(","))
    for gpu in ids:
        if not GPU_ID.match(gpu):
            raise ValueError(
                f"{gpu!r} is not a GPU id; give indices or GPU-/MIG- UUIDs separated by "
                "commas (e.g. 0,1), or none"
            )
    if len(set(ids)) != len(ids):
        raise ValueError("names a GPU twice; give each id once")
    return ids


def nvidia_smi_ids(timeout_s: float = 15.0) -> tuple[str, ...]:
    """The indices of the GPUs ``nvidia-smi -L`` lists (MIG slices are not counted: name
    them in DORA_GPUS); () without the tool or when it fails."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return ()
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    return tuple(m.group(1) for line in out.stdout.splitlines() if (m := _SMI_LINE.match(line)))


@dataclass(frozen=True)
class GpuInventory:
    """This machine's GPUs for jobs, and where the list came from."""

    ids: tuple[str, ...]
    source: str  # DORA_GPUS / CUDA_VISIBLE_DEVICES / nvidia-smi / none found
    machine: str  # reservations of other machines are not ours (backend.leases)

    @classmethod
    def discover(
        cls, configured: tuple[str, ...] | None, environ: Mapping[str, str] | None = None
    ) -> GpuInventory:
        """The inventory from ``DORA_GPUS`` (``configured``, already parsed by the
        settings), else the environment's CUDA_VISIBLE_DEVICES, else nvidia-smi."""
        from backend.leases import this_machine  # leases needs the database layer

        environ = os.environ if environ is None else environ
        machine = this_machine()
        if configured is not None:
            inventory = cls(configured, "DORA_GPUS", machine)
        elif (visible := environ.get("CUDA_VISIBLE_DEVICES")) is not None:
            try:
                ids = parse_ids(visible) if visible.strip() else ()
            except ValueError:  # e.g. -1, CUDA's "no GPU"
                ids = ()
            inventory = cls(ids, "CUDA_VISIBLE_DEVICES", machine)
        else:
            ids = nvidia_smi_ids()
            inventory = cls(ids, "nvidia-smi" if ids else "none found", machine)
        log.info("GPU inventory: %s", inventory.describe())
        return inventory

    def describe(self) -> str:
        if not self.ids:
            return f"no GPUs ({self.source}; set DORA_GPUS=0,1,... to hand some out)"
        return f"{len(self.ids)} GPU{'s' if len(self.ids) > 1 else ''} ({','.join(self.ids)}, from {self.source})"

    def refusal(self, needed: int) -> str | None:
        """Why a job needing ``needed`` GPUs can never start here, or None."""
        if needed <= len(self.ids):
            return None
        return (
            f"this job needs {needed} GPU{'s' if needed > 1 else ''} and the API's machine has "
            f"{self.describe()}; lower gpus (device cuda takes 1), or run it where more are"
        )

    def pick(self, needed: int, reserved: Iterable[str]) -> list[str] | None:
        """The first ``needed`` ids not in ``reserved`` (inventory order); None if too few."""
        taken = set(reserved)
        free = [gpu for gpu in self.ids if gpu not in taken]
        return free[:needed] if len(free) >= needed else None

    def reservation(self, ids: list[str]) -> dict[str, object]:
        """What ``runs.gpu_reservation`` holds for a job given ``ids`` on this machine."""
        return {"machine": self.machine, "ids": list(ids)}

    def reserved_here(self, reservations: Iterable[dict | None]) -> list[str]:
        """The ids held by ``reservations`` (live runs' rows) made on this machine."""
        return [
            gpu
            for held in reservations
            if held and held.get("machine") == self.machine
            for gpu in held.get("ids", [])
        ]
