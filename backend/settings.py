"""Settings from the environment, with safe defaults.

Loopback bind, SQLite under ``./data``, no CORS, an 8 MiB body limit, and job
paths confined to folders under the data dir. Tests build their own instance
(``Settings(data_dir=tmp_path)``); the server reads ``Settings.from_env()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dora_core.contracts.hosts import is_loopback_host


def exposure_error(host: str, api_token: str | None) -> str | None:
    """Why serving on ``host`` is refused (beyond loopback with no token), or None."""
    if is_loopback_host(host) or api_token:
        return None
    return (
        f"DORA_API_HOST={host} exposes the API beyond this machine; "
        "set DORA_API_TOKEN so that writes need it, or bind 127.0.0.1"
    )


class SettingsError(ValueError):
    """An environment variable with a value we cannot use (one line, names the variable)."""


@dataclass(frozen=True)
class Settings:
    """Everything the API reads from outside. Derived defaults are filled in after init."""

    data_dir: Path = Path("data")
    # Any SQLAlchemy URL; empty: SQLite file <data_dir>/dora.db.
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    # When set, write endpoints need `Authorization: Bearer <api_token>`;
    # ingest also accepts the run's own token handed to its worker.
    api_token: str | None = None
    # Origins allowed by CORS; empty (the default) adds no CORS headers at all.
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    # A job's model/dataset that is not a preset must lie inside one of these.
    model_roots: tuple[Path, ...] = ()
    dataset_roots: tuple[Path, ...] = ()
    # URL handed to workers (DORA_API_URL); empty: http://<host>:<port>, loopback for 0.0.0.0.
    api_url: str = ""
    sqlite_busy_timeout_s: float = 30.0
    # SIGTERM -> SIGKILL delay when cancelling a worker (it checkpoints first).
    cancel_grace_s: float = 15.0
    # Workers this API runs at once; further launches wait in a FIFO queue (see worker_threads).
    max_jobs: int = 2
    # Launches that may wait for a slot; one beyond it is refused (429) and creates nothing.
    max_queued: int = 20
    # How often the launcher's watcher looks for dead workers, and SSE polls.
    watch_interval_s: float = 1.0
    stream_interval_s: float = 0.5
    stream_keepalive_s: float = 15.0

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'dora.db'}")
        if not self.model_roots:
            object.__setattr__(self, "model_roots", (data_dir / "models",))
        if not self.dataset_roots:
            object.__setattr__(self, "dataset_roots", (data_dir / "datasets",))
        if not self.api_url:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
            host = f"[{host}]" if ":" in host else host
            object.__setattr__(self, "api_url", f"http://{host}:{self.port}")

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def worker_threads(self) -> int:
        """Threads per worker: this machine's CPUs shared out among ``max_jobs`` workers.

        torch sizes its thread pool to every CPU by default, so ``max_jobs``
        workers at once would each run that many threads and oversubscribe the
        machine (measured on 2 cores: each worker about 4x slower).
        """
        return max(1, (os.cpu_count() or 1) // self.max_jobs)

    def worker_thread_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` for a worker's environment.

        Empty when the API's own environment (``environ``) sets
        ``OMP_NUM_THREADS``: whoever set it chose for the workers too, and they
        inherit it (MKL follows ``OMP_NUM_THREADS`` when its own is unset).
        """
        if environ.get("OMP_NUM_THREADS", "").strip():
            return {}
        threads = str(self.worker_threads)
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the DORA_* variables (docs/protocol.md); raise SettingsError naming a bad one."""
        env = os.environ if env is None else env

        def number(name: str, default: float, kind: type = float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(
                    f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}; unset it or fix it"
                ) from None
            if value <= 0:
                raise SettingsError(f"{name}={raw!r} must be positive")
            return value

        def paths(name: str) -> tuple[Path, ...]:
            raw = env.get(name, "")
            return tuple(Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p)

        port = int(number("DORA_API_PORT", 8000, int))
        if port > 65535:
            raise SettingsError(f"DORA_API_PORT={port} is not a TCP port (1..65535)")
        origins = tuple(o.strip() for o in env.get("DORA_CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            data_dir=Path(env.get("DORA_DATA_DIR") or "data"),
            database_url=env.get("DATABASE_URL", ""),
            host=env.get("DORA_API_HOST") or "127.0.0.1",
            port=port,
            api_token=env.get("DORA_API_TOKEN") or None,
            cors_origins=origins,
            max_body_bytes=int(number("DORA_MAX_BODY_BYTES", 8 * 1024 * 1024, int)),
            model_roots=paths("DORA_MODEL_ROOTS"),
            dataset_roots=paths("DORA_DATASET_ROOTS"),
            api_url=env.get("DORA_API_URL", ""),
            cancel_grace_s=number("DORA_CANCEL_GRACE_S", 15.0),
            max_jobs=int(number("DORA_MAX_JOBS", 2, int)),
            max_queued=int(number("DORA_MAX_QUEUED", 20, int)),
        )


def get_settings() -> Settings:
    return Settings.from_env()
