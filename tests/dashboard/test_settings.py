"""The dashboard's settings: DORA_* variables, their defaults, and a clean stop on a bad one."""

from __future__ import annotations

import os
import subprocess

import pytest

from dashboard.settings import DEFAULT_API_URL, DEFAULT_POLL_MS, DashboardSettings
from tests.conftest import assert_one_line_refusal, run_module

VARIABLES = (
    "DORA_API_URL",
    "DORA_API_TOKEN",
    "DORA_DASH_HOST",
    "DORA_DASH_PORT",
    "DORA_DASH_ALLOWED_HOSTS",
    "DORA_DASH_POLL_MS",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = DashboardSettings()
    assert (s.dash_host, s.dash_port, s.dash_poll_ms) == ("127.0.0.1", 8050, DEFAULT_POLL_MS)
    assert (s.api_url, s.api_token, s.dash_allowed_hosts) == (DEFAULT_API_URL, None, frozenset())


def test_values_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DORA_DASH_PORT", "8123")
    clean_env.setenv("DORA_DASH_HOST", "0.0.0.0")
    clean_env.setenv("DORA_DASH_ALLOWED_HOSTS", " Dora.LAN, other.lan,,")
    clean_env.setenv("DORA_DASH_POLL_MS", "500")
    clean_env.setenv("DORA_API_TOKEN", "s3cret")
    s = DashboardSettings()
    assert (s.dash_host, s.dash_port, s.dash_poll_ms) == ("0.0.0.0", 8123, 500)
    assert s.dash_allowed_hosts == {"dora.lan", "other.lan"}
    assert s.api_token == "s3cret" and "s3cret" not in repr(s)


def test_an_empty_variable_means_its_default(clean_env: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        clean_env.setenv(name, "")
    s = DashboardSettings()
    assert (s.api_url, s.api_token, s.dash_port) == (DEFAULT_API_URL, None, 8050)


def _start_dashboard(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return run_module("dashboard.app", {**clean, **env}, timeout=120)


@pytest.mark.parametrize(
    ("name", "value"),
    [("DORA_DASH_PORT", "abc"), ("DORA_DASH_PORT", "70000"), ("DORA_DASH_POLL_MS", "0")],
)
def test_a_bad_value_stops_the_dashboard_with_one_line(name: str, value: str) -> None:
    out = _start_dashboard(**{name: value})
    assert_one_line_refusal(out, name, value)
