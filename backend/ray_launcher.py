"""Workers as Ray jobs (``DORA_LAUNCHER=ray``): one submission per run, its id the handle.

Each job goes to the cluster's job server (``DORA_RAY_ADDRESS``) through
``ray.job_submission.JobSubmissionClient``:

- the entrypoint is the fixed worker command, ``<DORA_RAY_PYTHON> -m
  dora_core.worker.cli train --job-env DORA_JOB_CONFIG`` (under
  ``torch.distributed.run`` for a job of several processes); nothing from
  a request reaches it;
- the job config travels in the submission's runtime env
  (``DORA_JOB_CONFIG``), with its ``output_dir`` on the node
  (``DORA_RAY_RUNS_DIR/<API instance>/<run id>``), since the nodes do not
  see the API's disk; so do ``DORA_API_URL``, ``DORA_RUN_ID``, the run's
  writer token and the API's instance id, and ``DORA_UPLOAD_ADAPTER=1``: the
  worker uploads its adapter to the API (``backend.remote``);
- ``entrypoint_num_cpus`` is ``DORA_RAY_CPUS`` per worker process,
  ``entrypoint_num_gpus`` the job's GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``).

poll / stop / wait / the log map onto Ray's job info (status and the driver's
exit status), ``stop_job`` (SIGTERM, then SIGKILL after
``RAY_JOB_STOP_WAIT_TIME_S``, which each submission sets to
``DORA_CANCEL_GRACE_S``) and the job's logs. The handle,
``ray:<submission id>``, means the same thing to any API process, so a
restarted API adopts the running jobs of the one before (backend.watcher).

``ray`` is imported only when a client is first needed: the API imports
this module whatever its launcher.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from backend.launcher import LaunchSpec, WorkerExit, wait_for_exit
from backend.remote import LauncherUnavailable
from dora_core.contracts.job import reserved_gpus, worker_processes

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from backend.settings import Settings

log = logging.getLogger(__name__)

HANDLE_PREFIX = "ray:"
# How long one call to the job server may take (a submission carries no files: it is quick).
CALL_TIMEOUT_S = 30.0
JOB_ENV = "DORA_JOB_CONFIG"  # the job config, as JSON, in the worker's environment
UPLOAD_ENV = "DORA_UPLOAD_ADAPTER"
# What a launched worker gets from the LaunchSpec; nothing else of the API's environment
# (its data dir, thread counts or GPU picks mean nothing on a cluster node).
PASSED_ENV = ("DORA_API_URL", "DORA_RUN_ID", "DORA_INGEST_TOKEN", "DORA_API_INSTANCE")
WORKER_MODULE = "dora_core.worker.cli"
# Ray's job statuses that end a job (ray.job_submission.JobStatus).
ENDED = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
# How a stopped job is recorded: as a worker that ended on SIGTERM after its checkpoint.
STOPPED_EXIT = 143


@dataclass(frozen=True)
class RayJobExit(WorkerExit):
    """How a Ray job ended: Ray's status and message next to the driver's exit status."""

    submission_id: str = ""
    status: str = ""
    detail: str = ""  # the last line of Ray's message (the log tail of a failed job)

    def describe(self) -> str:
        if self.status == "SUCCEEDED":
            return f"the Ray job {self.submission_id} succeeded"
        if self.status == "STOPPED":
            return f"the Ray job {self.submission_id} was stopped"
        how = (
            f"failed with exit status {self.code}"
            if self.code is not None
            else ("is gone" if not self.status else "failed before its worker ran")
        )
        text = f"the Ray job {self.submission_id} {how}"
        return f"{text}: {self.detail}" if self.detail else text


def _parse(handle: str) -> str:
    if not handle.startswith(HANDLE_PREFIX) or len(handle) == len(HANDLE_PREFIX):
        raise ValueError(f"not a Ray job handle: {handle!r}")
    return handle[len(HANDLE_PREFIX) :]


def _not_found(exc: RuntimeError) -> bool:
    """The job server's answer for an unknown submission id (the client raises RuntimeError
    with the status code in its message)."""
    return "status code 404" in str(exc)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


class RayJobLauncher:
    """``Launcher`` (backend.launcher) and ``RemoteLauncher`` (backend.remote) on a Ray
    cluster's job server."""

    def __init__(
        self,
        address: str,
        *,
        python: str = "python",
        runs_dir: str = "/tmp/dora-runs",
        cpus_per_process: float = 1.0,
        cancel_grace_s: float = 15.0,
        timeout_s: float = CALL_TIMEOUT_S,
    ):
        self.address = address
        self.python = python
        self.runs_dir = PurePosixPath(runs_dir)
        self.cpus_per_process = cpus_per_process
        self.cancel_grace_s = cancel_grace_s
        self.timeout_s = timeout_s
        self._client_: JobSubmissionClient | None = None
        self._lock = threading.Lock()
        # Ray's client sets no timeout on its HTTP requests: each call is given up after
        # timeout_s (_in_time), so a job server that accepts but never answers cannot hang
        # the watcher or the API's start-up.
        self._unreachable = False  # logged once per outage, not once per watcher pass

    @classmethod
    def from_settings(cls, settings: Settings) -> RayJobLauncher:
        return cls(
            settings.ray_address,
            python=settings.ray_python,
            runs_dir=settings.ray_runs_dir,
            cpus_per_process=settings.ray_cpus,
            cancel_grace_s=settings.cancel_grace_s,
        )

    # --- the cluster's job server ---
    def _client(self) -> JobSubmissionClient:
        """The job server's client, made on first use (it asks the server its version)."""
        with self._lock:
            if self._client_ is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client_ = self._in_time(JobSubmissionClient, self.address)
                except (OSError, RuntimeError, ValueError) as exc:
                    raise self._unavailable(exc) from None
            return self._client_

    def _in_time(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in a daemon thread, given up after ``timeout_s`` (a thread
        left waiting on a silent server never holds up the API's exit)."""
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=call, name="ray-client", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            raise LauncherUnavailable(
                f"the Ray cluster at {self.address} did not answer within {self.timeout_s:g} s"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _unavailable(self, exc: BaseException) -> LauncherUnavailable:
        if isinstance(exc, LauncherUnavailable):
            return exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return LauncherUnavailable(f"the Ray cluster at {self.address} did not answer: {first}")

    def _call(self, what: str, *args: Any, **kwargs: Any) -> Any:
        """A client call within ``timeout_s``; connection errors become LauncherUnavailable.
        RuntimeError (the job server answered with an error, e.g. 404 for an unknown job)
        passes through."""
        client = self._client()
        try:
            return self._in_time(getattr(client, what), *args, **kwargs)
        except OSError as exc:  # requests' ConnectionError, LauncherUnavailable
            raise self._unavailable(exc) from None

    # --- Launcher ---
    def entrypoint(self, processes: int) -> str:
        """The worker command as one shell line; only fixed words and numbers in it."""
        argv = [self.python, "-m"]
        if processes > 1:
            argv += ["torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            argv += ["-m"]
        argv += [WORKER_MODULE, "train", "--job-env", JOB_ENV]
        return "exec " + shlex.join(argv)  # the shell Ray starts becomes the worker

    def node_run_dir(self, spec: LaunchSpec) -> str:
        """The run dir on the node that runs the job: one per API instance and run."""
        instance = spec.env.get("DORA_API_INSTANCE") or "unknown-instance"
        return str(self.runs_dir / instance / str(spec.run_id))

    def start(self, spec: LaunchSpec) -> str:
        config = json.loads(spec.job_file.read_text(encoding="utf-8"))
        config["output_dir"] = self.node_run_dir(spec)
        # What the job reserves: one process per GPU (torchrun), else `processes` CPU ranks.
        processes, gpus = worker_processes(config), reserved_gpus(config)
        threads = str(max(1, math.floor(self.cpus_per_process)))
        env = {k: spec.env[k] for k in PASSED_ENV if k in spec.env}
        env.update(
            {
                JOB_ENV: json.dumps(config),
                UPLOAD_ENV: "1",
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                # Read by Ray's job supervisor: SIGTERM -> SIGKILL delay of stop_job.
                "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, math.ceil(self.cancel_grace_s))),
            }
        )
        instance = spec.env.get("DORA_API_INSTANCE", "")[:12] or "dora"
        submission_id = f"dora-{instance}-run{spec.run_id}-{secrets.token_hex(4)}"
        try:
            self._call(
                "submit_job",
                entrypoint=self.entrypoint(processes),
                submission_id=submission_id,
                runtime_env={"env_vars": env},
                metadata={
                    "dora_run_id": str(spec.run_id),
                    "dora_instance": spec.env.get("DORA_API_INSTANCE", ""),
                },
                entrypoint_num_cpus=self.cpus_per_process * processes,
                entrypoint_num_gpus=gpus,
            )
        except RuntimeError as exc:  # the job server refused the submission
            raise LauncherUnavailable(
                f"the Ray cluster at {self.address} refused the job: {_last_line(str(exc))}"
            ) from None
        return HANDLE_PREFIX + submission_id

    def poll(self, handle: str) -> WorkerExit | None:
        """None while the job is pending or running, or while the cluster cannot be asked
        (the watcher asks again); how it ended once it has."""
        submission_id = _parse(handle)
        try:
            info = self._call("get_job_info", submission_id)
        except LauncherUnavailable as exc:
            if not self._unreachable:
                log.warning("%s; Ray jobs are taken as still running until it answers", exc)
                self._unreachable = True
            return None
        except RuntimeError as exc:
            if _not_found(exc):  # the cluster no longer knows it (restarted)
                return RayJobExit(
                    None, submission_id, "", "the Ray cluster no longer knows this job"
                )
            log.warning("Ray job %s: %s", submission_id, _last_line(str(exc)))
            return None
        self._unreachable = False
        status = str(getattr(info.status, "value", info.status))
        if status not in ENDED:
            return None
        code = info.driver_exit_code
        if status == "SUCCEEDED":
            code = 0 if code is None else code
        elif status == "STOPPED":
            code = STOPPED_EXIT
        return RayJobExit(code, submission_id, status, _last_line(info.message))

    def stop(self, handle: str, grace_s: float) -> None:
        """Ask Ray to stop the job: SIGTERM now, SIGKILL after the grace the job was
        submitted with (``RAY_JOB_STOP_WAIT_TIME_S``; ``grace_s`` cannot change it now)."""
        submission_id = _parse(handle)
        try:
            self._call("stop_job", submission_id)
        except (LauncherUnavailable, RuntimeError) as exc:
            log.error("could not stop Ray job %s: %s", submission_id, _last_line(str(exc)))

    def wait(self, handle: str, timeout_s: float) -> WorkerExit | None:
        return wait_for_exit(self.poll, handle, timeout_s, interval_s=0.5)

    # --- RemoteLauncher ---
    def log_tail(self, handle: str, count: int) -> list[str] | None:
        """The last ``count`` lines of the job's log, as Ray keeps it (the whole log is
        fetched: Ray's job server has no tail). None for a handle that is not a Ray job's."""
        try:
            submission_id = _parse(handle)
        except ValueError:
            return None
        try:
            text = self._call("get_job_logs", submission_id)
        except RuntimeError as exc:
            if _not_found(exc):
                return []
            raise LauncherUnavailable(
                f"the Ray cluster at {self.address} did not give the log: {_last_line(str(exc))}"
            ) from None
        lines = text.splitlines()
        return lines[-count:] if count > 0 else []
