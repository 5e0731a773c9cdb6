"""Starting, watching and stopping training workers.

``Launcher`` is the interface the API needs; ``LocalProcessLauncher`` runs
each worker as a local subprocess in its own session (so Ctrl-C on the API
does not reach it and a restarted API finds it still running). A cluster
launcher would implement the same four verbs with job ids as handles.

The command is fixed here, never taken from a request:
``<python> -m dora_core.worker.cli train <run dir>/job.json``; a job of N > 1
processes runs it under ``<python> -m torch.distributed.run --standalone
--nproc_per_node N`` (torchrun: N DDP ranks, only rank 0 reports), behind
the same handle: torchrun's pid.

torchrun starts each rank in a session of its own, so the worker's process
group holds torchrun alone. A stop (SIGTERM) goes to torchrun, which passes
it on to every rank (each checkpoints and exits); the SIGKILL that follows
a stop grace goes to torchrun *and* every process below it, found through
``/proc``, so no rank outlives a cancel or keeps its GPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Never handed to a worker: it gets its own run's ingest token instead.
SECRET_ENV = ("DORA_API_TOKEN", "DATABASE_URL", "TEST_DATABASE_URL")


@dataclass(frozen=True)
class LaunchSpec:
    run_id: int
    job_file: Path
    run_dir: Path
    log_file: Path
    env: Mapping[str, str]  # DORA_API_URL, DORA_RUN_ID, DORA_INGEST_TOKEN, DORA_DATA_DIR
    processes: int = 1  # worker processes (DDP ranks under torchrun when > 1)


@dataclass(frozen=True)
class WorkerExit:
    """How a worker ended. ``code`` is None when it is unknown (not our child)."""

    code: int | None

    def describe(self) -> str:
        if self.code is None:
            return (
                "the worker is gone (exit status unknown: it was started by an earlier API process)"
            )
        if self.code < 0:
            try:
                name = signal.Signals(-self.code).name
            except ValueError:
                name = f"signal {-self.code}"
            # Nobody here asked it to stop (a cancel ends as "cancelled"): often it was memory.
            oom = " (the kernel's out-of-memory killer sends it too)" if name == "SIGKILL" else ""
            return f"the worker was killed by {name}{oom}"
        return f"the worker exited with status {self.code}"


class Launcher(Protocol):
    def start(self, spec: LaunchSpec) -> str:
        """Start a worker; return an opaque handle to store with the run."""
        ...

    def poll(self, handle: str) -> WorkerExit | None:
        """None while the worker runs; how it ended once it has."""
        ...

    def stop(self, handle: str, grace_s: float) -> None:
        """Ask the worker to stop (SIGTERM), force it after ``grace_s``. Returns at once."""
        ...

    def wait(self, handle: str, timeout_s: float) -> WorkerExit | None:
        """Block up to ``timeout_s`` for the worker to end."""
        ...


def wait_for_exit(
    poll: Callable[[str], WorkerExit | None], handle: str, timeout_s: float, interval_s: float
) -> WorkerExit | None:
    """Poll ``handle`` every ``interval_s`` until it has ended or ``timeout_s`` has passed
    (the last sleep is cut to the deadline); None when it still runs."""
    deadline = time.monotonic() + timeout_s
    while True:
        ended = poll(handle)
        if ended is not None or time.monotonic() >= deadline:
            return ended
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks (Linux), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux ``/proc``), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        found += kids
        todo += kids
    return found


def _parse(handle: str) -> tuple[int, str]:
    kind, pid, ticks = handle.split(":")
    if kind != "local":
        raise ValueError(f"not a local worker handle: {handle!r}")
    return int(pid), ticks


class LocalProcessLauncher:
    """Workers as subprocesses of this API; stdout and stderr go to the run's log file."""

    def __init__(self, argv_prefix: Sequence[str] | None = None):
        # Tests substitute a stand-in script; the API never takes this from a request.
        self.argv_prefix = tuple(argv_prefix or (sys.executable, "-m", "dora_core.worker.cli"))
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def command(self, spec: LaunchSpec) -> list[str]:
        """The worker's argv: the worker module, or torchrun running N copies of it."""
        worker = [*self.argv_prefix, "train", str(spec.job_file)]
        if spec.processes <= 1:
            return worker
        python, *program = worker  # torchrun takes `-m module` or a script, then its args
        torchrun = [python, "-m", "torch.distributed.run", "--standalone"]
        return [*torchrun, f"--nproc_per_node={spec.processes}", *program]

    def start(self, spec: LaunchSpec) -> str:
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        env.update(spec.env)
        env["PYTHONUNBUFFERED"] = "1"
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(spec),
                cwd=spec.run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self._lock:
            self._children[proc.pid] = proc
        return f"local:{proc.pid}:{_start_ticks(proc.pid)}"

    def poll(self, handle: str) -> WorkerExit | None:
        pid, ticks = _parse(handle)
        with self._lock:
            proc = self._children.get(pid)
        if proc is not None:
            code = proc.poll()
            return None if code is None else WorkerExit(code)
        return None if self._alive(pid, ticks) else WorkerExit(None)

    def stop(self, handle: str, grace_s: float) -> None:
        pid, _ = _parse(handle)
        if self.poll(handle) is not None:
            return
        self._signal(pid, signal.SIGTERM)
        if grace_s <= 0:
            self._kill_tree(pid)
            return

        def _escalate() -> None:
            if self.wait(handle, grace_s) is None:
                self._kill_tree(pid)

        threading.Thread(target=_escalate, name=f"stop-worker-{pid}", daemon=True).start()

    def wait(self, handle: str, timeout_s: float) -> WorkerExit | None:
        return wait_for_exit(self.poll, handle, timeout_s, interval_s=0.05)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        """Signal the worker's whole process group (it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    @classmethod
    def _kill_tree(cls, pid: int) -> None:
        """SIGKILL the worker's group and every process below it (torchrun's ranks lead
        sessions of their own); the descendants are listed first, while they are still
        the worker's children."""
        below = _descendants(pid)
        cls._signal(pid, signal.SIGKILL)
        for child in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)

    @staticmethod
    def _alive(pid: int, ticks: str) -> bool:
        """A worker from an earlier API process: same pid *and* same start time."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if ticks == "0":
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z" and _start_ticks(pid) == ticks
