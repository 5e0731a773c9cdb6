"""The dashboard process's settings: every ``DORA_*`` variable it reads, parsed once.

``python -m dashboard.app`` reads them at start and stops with one line
naming the variable (exit status 2) when a value cannot be used; the pages
and the API client get them from here, never from ``os.environ`` themselves.
An empty variable counts as unset (its default applies). docs/protocol.md
lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dashboard.auth import parse_users_text
from dora_core.contracts.hosts import is_loopback_host

ENV_PREFIX = "DORA_"
DEFAULT_API_URL = "http://127.0.0.1:8000"
# how often a live run is polled; lower it (ms) to see fast jobs in more frames
DEFAULT_POLL_MS = 1500
# two per process: gunicorn's four threads per worker (the Docker image) keep two for pages
DEFAULT_MAX_STREAMS = 2
# never echoed in an error line: secrets, and where a password may be put by mistake
_UNSHOWN = frozenset({"api_token", "dash_secret", "dash_users"})


class DashboardSettings(BaseSettings):
    """``DORA_<FIELD>`` for each field, e.g. ``DORA_DASH_PORT`` for ``dash_port``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True)

    # the telemetry API the dashboard reads from and acts on
    api_url: str = DEFAULT_API_URL
    # sent as a bearer token on write calls, where the API asks for one
    api_token: str | None = Field(default=None, repr=False)
    # where the dashboard itself listens
    dash_host: str = "127.0.0.1"
    dash_port: int = Field(default=8050, ge=1, le=65535)
    # Host names served besides loopback ones (comma-separated; against DNS rebinding)
    dash_allowed_hosts: Annotated[frozenset[str], NoDecode] = frozenset()
    dash_poll_ms: int = Field(default=DEFAULT_POLL_MS, gt=0)
    # live run pages: follow the API's event stream (relayed; dashboard.livestream), or poll
    dash_live: Literal["stream", "poll"] = "stream"
    # relayed streams per process (each holds a server thread while its page is open)
    dash_max_streams: int = Field(default=DEFAULT_MAX_STREAMS, ge=0, le=1000)

    # The login (dashboard.auth), required beyond loopback or when dash_auth is set.
    dash_auth: bool = False
    # `user:hash` entries, comma-separated (hashes: python -m dashboard.auth hash)
    dash_users: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict, repr=False)
    # a file of `user:hash` lines, read at start (dashboard.auth.load_users)
    dash_users_file: Path | None = None
    # signs the session cookie; unset: a random key per process
    dash_secret: str | None = Field(default=None, min_length=16, repr=False)
    # a session ends after this long without a request
    dash_session_hours: float = Field(default=12.0, gt=0)
    # the session cookie only travels over https (set when served behind TLS)
    dash_cookie_secure: bool = False

    @field_validator("dash_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(h.strip().lower() for h in value.split(",")) - {""}
        return value

    @field_validator("dash_users", mode="before")
    @classmethod
    def _parse_users(cls, value: Any) -> Any:
        return parse_users_text(value) if isinstance(value, str) else value

    @property
    def auth_required(self) -> bool:
        """Does every request need a signed-in user: listening beyond loopback, or asked to."""
        return self.dash_auth or not is_loopback_host(self.dash_host)


def settings_error(err: ValidationError) -> str:
    """One line for a person: each bad variable by its environment name, value and problem."""
    parts = []
    for item in err.errors():
        field = str(item["loc"][0]) if item.get("loc") else ""
        name = f"{ENV_PREFIX}{field.upper()}" if field else "the dashboard's settings"
        value = item.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        if field in _UNSHOWN:
            shown = ""
        parts.append(f"{name}{shown}: {item['msg']}")
    return "; ".join(parts) + " (unset it or fix it)"
