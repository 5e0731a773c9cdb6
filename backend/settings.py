"""Settings from the environment, with safe defaults.

Loopback bind, SQLite under ``./data``, no CORS, an 8 MiB body limit, and job
paths confined to folders under the data dir. The server reads
``Settings.from_env()`` (the ``DORA_*`` variables and ``DATABASE_URL``,
docs/protocol.md); tests build their own instance (``Settings(data_dir=tmp_path)``),
which takes only what it is given and never reads the environment.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUseDefault
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from backend.gpus import parse_ids
from dora_core.contracts.hosts import is_loopback_host

ENV_PREFIX = "DORA_"


def exposure_error(host: str, api_token: str | None) -> str | None:
    """Why serving on ``host`` is refused (beyond loopback with no token), or None."""
    if is_loopback_host(host) or api_token:
        return None
    return (
        f"DORA_API_HOST={host} exposes the API beyond this machine; "
        "set DORA_API_TOKEN so that writes need it, or bind 127.0.0.1"
    )


def http_url(host: str, port: int) -> str:
    """``http://host:port`` to reach a server bound there: a wildcard bind (0.0.0.0, ::)
    through loopback, an IPv6 address in brackets."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class SettingsError(ValueError):
    """An environment variable with a value we cannot use (one line, names the variable)."""


def blank_is_unset(value: Any) -> Any:
    """Numbers may carry spaces; a blank one is unset (its default applies)."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise PydanticUseDefault()
    return value


Positive = Annotated[int, Field(gt=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(gt=0, le=65535)]

# pydantic's error type -> how the message goes on after ``NAME='value'``.
_PROBLEMS = {
    "int_parsing": "is not an integer; unset it or fix it",
    "int_from_float": "is not an integer; unset it or fix it",
    "float_parsing": "is not a number; unset it or fix it",
    "greater_than": "must be positive",
    "literal_error": "is not one of {expected}",
    "value_error": "{error}",
}


class _Environment(EnvSettingsSource):
    """The variables of ``environ``, each field under its one exact name (``env_name``).

    Values are plain text, never JSON; an empty variable is unset. Fields
    listed in ``not_from_env`` are left to their defaults.
    """

    def __init__(self, settings_cls: type[EnvSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self.owner = settings_cls
        self.env_vars = {k: v for k, v in environ.items() if v != ""}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in self.owner.not_from_env:
            return None, field_name, False
        key = field.validation_alias if isinstance(field.validation_alias, str) else field_name
        return self.env_vars.get(self.owner.env_name(field_name)), key, False


_S = TypeVar("_S", bound="EnvSettings")


class EnvSettings(BaseSettings):
    """Settings read by ``from_env()`` only: ``DORA_<FIELD>``, or the field's
    ``validation_alias`` when it has one (the variable's exact name)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=True,
        env_ignore_empty=True,
        populate_by_name=True,
        frozen=True,
        extra="forbid",
    )
    # Fields that only code sets (tests, benchmarks): no variable reads them.
    not_from_env: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment comes in through from_env() alone

    @classmethod
    def env_name(cls, field_name: str) -> str:
        alias = cls.model_fields[field_name].validation_alias
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field_name.upper()}"

    @classmethod
    def from_env(cls: type[_S], env: Mapping[str, str] | None = None) -> _S:
        """Read the variables from ``env`` (default ``os.environ``); raise SettingsError
        naming each one whose value cannot be used."""
        values = _Environment(cls, os.environ if env is None else env)()
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(cls._one_line(exc)) from None

    @classmethod
    def _one_line(cls, exc: ValidationError) -> str:
        by_alias = {
            f.validation_alias: name
            for name, f in cls.model_fields.items()
            if isinstance(f.validation_alias, str)
        }
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = cls.env_name(by_alias.get(field, field)) if field else cls.__name__
            value = error.get("input")
            if error["type"] == "less_than_equal" and error.get("ctx", {}).get("le") == 65535:
                problems.append(f"{name}={value} is not a TCP port (1..65535)")
            else:
                problem = _PROBLEMS.get(error["type"], error["msg"])
                if error["type"] in _PROBLEMS:
                    problem = problem.format(**error.get("ctx", {}))
                problems.append(f"{name}={value!r} {problem}")
        return "; ".join(problems)


class Settings(EnvSettings):
    """Everything the API reads from outside. Derived defaults are filled in by validation."""

    # Server-side tuning the tests set; no variable for them.
    not_from_env: ClassVar[frozenset[str]] = frozenset(
        {"sqlite_busy_timeout_s", "watch_interval_s", "stream_interval_s", "stream_keepalive_s"}
    )

    data_dir: Path = Path("data")
    # Any SQLAlchemy URL; empty: SQLite file <data_dir>/dora.db.
    database_url: str = Field("", validation_alias="DATABASE_URL")
    host: str = Field("127.0.0.1", validation_alias="DORA_API_HOST")
    port: Port = Field(8000, validation_alias="DORA_API_PORT")
    # When set, write endpoints need `Authorization: Bearer <api_token>`;
    # ingest also accepts the run's own token handed to its worker.
    api_token: str | None = Field(None, repr=False)
    # Origins allowed by CORS (comma-separated); empty (the default) adds no CORS headers at all.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    max_body_bytes: Positive = 8 * 1024 * 1024
    # A job's model/dataset that is not a preset must lie inside one of these (os.pathsep-separated).
    model_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    dataset_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    # URL handed to workers (DORA_API_URL); empty: where the server really listens
    # (backend.address), else configured_url.
    api_url: str = ""
    sqlite_busy_timeout_s: float = 30.0
    # SIGTERM -> SIGKILL delay when cancelling a worker (it checkpoints first).
    cancel_grace_s: PositiveSeconds = 15.0
    # GPUs the local launcher hands out, one set per job (DORA_GPUS=0,1,... as
    # CUDA_VISIBLE_DEVICES takes them, or none); unset: backend.gpus finds them.
    gpus: Annotated[tuple[str, ...] | None, NoDecode] = None
    # Workers this API runs at once; further launches wait in a FIFO queue (see worker_threads).
    max_jobs: Positive = 2
    # Launches that may wait for a slot; one beyond it is refused (429) and creates nothing.
    max_queued: Positive = 20
    # How long another API process on the same database (on another machine) waits for
    # this one to renew its hold on its workers before it takes them over (backend.leases).
    worker_lease_s: PositiveSeconds = 30.0
    # How often the launcher's watcher looks for dead workers, and SSE polls.
    watch_interval_s: float = 1.0
    stream_interval_s: float = 0.5
    stream_keepalive_s: float = 15.0
    # Where workers run: local subprocesses, or jobs on a Ray cluster (backend.ray_launcher).
    launcher: Literal["local", "ray"] = "local"
    # DORA_LAUNCHER=ray: the Ray head's job server (http://HEAD:8265).
    ray_address: str = Field("", validate_default=True)
    # The interpreter on the Ray nodes that has dora-toolkit installed.
    ray_python: str = "python"
    # Where a Ray worker writes its run dir, on its node: <this>/<API instance>/<run id>.
    ray_runs_dir: str = Field("/tmp/dora-runs", validate_default=True)
    # CPUs Ray reserves for each worker process (entrypoint_num_cpus = this x processes).
    ray_cpus: Annotated[float, Field(gt=0)] = 1.0
    # PUT /api/runs/{id}/adapter: the largest zip a worker may upload, and its unpacked size.
    max_adapter_bytes: Positive = 1024 * 1024 * 1024

    @field_validator(
        "port",
        "max_body_bytes",
        "cancel_grace_s",
        "max_jobs",
        "max_queued",
        "worker_lease_s",
        "ray_cpus",
        "max_adapter_bytes",
        mode="before",
    )
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return blank_is_unset(value)

    @field_validator("model_roots", "dataset_roots", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        """``DORA_MODEL_ROOTS=/a:/b`` -> (/a, /b), resolved; a sequence passes as it is."""
        if isinstance(value, str):
            return tuple(Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(o.strip() for o in value.split(",") if o.strip())
        return value

    @field_validator("launcher", mode="before")
    @classmethod
    def _launcher(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("launcher")
    @classmethod
    def _ray_installed(cls, value: str) -> str:
        if value == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("needs the Ray client here: pip install 'dora-toolkit[cluster]'")
        return value

    @field_validator("ray_address")
    @classmethod
    def _ray_needs_an_address(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if info.data.get("launcher") == "ray" and not value:
            raise ValueError(
                "must be set when DORA_LAUNCHER=ray: the Ray head's job server, "
                "e.g. http://HEAD:8265"
            )
        return value

    @field_validator("ray_runs_dir")
    @classmethod
    def _node_path(cls, value: str) -> str:
        """A path on the Ray nodes, not here: kept as written, but it must be absolute
        (a relative one would land wherever the node's raylet was started)."""
        if not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute path (on the Ray nodes)")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _sqlite_by_default(cls, value: str, info: ValidationInfo) -> str:
        data_dir = info.data.get("data_dir")
        if value or data_dir is None:
            return value
        return f"sqlite:///{data_dir / 'dora.db'}"

    @field_validator("model_roots", "dataset_roots")
    @classmethod
    def _roots_in_data_dir(cls, value: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
        data_dir = info.data.get("data_dir")
        if value or data_dir is None:
            return value
        return (data_dir / ("models" if info.field_name == "model_roots" else "datasets"),)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_ids(cls, value: Any) -> Any:
        """``DORA_GPUS=0,1`` -> ("0", "1"); ``none`` -> (); a sequence passes as it is."""
        return parse_ids(value) if isinstance(value, str) else value

    @property
    def configured_url(self) -> str:
        """http://DORA_API_HOST:DORA_API_PORT, loopback for a wildcard host: what
        ``python -m backend`` binds, which another server command may not."""
        return http_url(self.host, self.port)

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
