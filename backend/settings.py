"""Settings from the environment, with safe defaults (loopback, SQLite under ./data)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name, default)).expanduser().resolve()


@dataclass(frozen=True)
class Settings:
    """Read once at start-up; tests build their own instance."""

    data_dir: Path = field(default_factory=lambda: _env_path("DORA_DATA_DIR", "data"))
    database_url: str = ""  # empty: SQLite file <data_dir>/dora.db
    host: str = field(default_factory=lambda: os.environ.get("DORA_API_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(os.environ.get("DORA_API_PORT", "8000")))
    api_token: str | None = field(default_factory=lambda: os.environ.get("DORA_API_TOKEN") or None)

    def __post_init__(self) -> None:
        if not self.database_url:
            url = os.environ.get("DATABASE_URL") or f"sqlite:///{self.data_dir / 'dora.db'}"
            object.__setattr__(self, "database_url", url)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


def get_settings() -> Settings:
    return Settings()
