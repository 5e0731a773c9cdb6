"""The dashboard's settings: DORA_* variables, their defaults, and a clean stop on a bad one."""

from __future__ import annotations

import os
import subprocess

import pytest
from pydantic import ValidationError

from dashboard.auth import hash_password
from dashboard.settings import DEFAULT_API_URL, DEFAULT_POLL_MS, DashboardSettings, settings_error
from tests.conftest import assert_one_line_refusal, free_port, run_module

VARIABLES = (
    "DORA_API_URL",
    "DORA_API_TOKEN",
    "DORA_DASH_HOST",
    "DORA_DASH_PORT",
    "DORA_DASH_ALLOWED_HOSTS",
    "DORA_DASH_POLL_MS",
    "DORA_DASH_AUTH",
    "DORA_DASH_USERS",
    "DORA_DASH_USERS_FILE",
    "DORA_DASH_SECRET",
    "DORA_DASH_SESSION_HOURS",
    "DORA_DASH_COOKIE_SECURE",
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
    assert (s.dash_auth, s.dash_users, s.dash_users_file, s.dash_secret) == (False, {}, None, None)
    assert (s.dash_session_hours, s.dash_cookie_secure, s.auth_required) == (12.0, False, False)


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


@pytest.mark.parametrize(
    ("host", "auth", "required"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("127.0.0.1", "0", False),
        ("127.0.0.1", "1", True),
        ("localhost", "true", True),
        ("0.0.0.0", None, True),
        ("0.0.0.0", "0", True),  # exposure asks for a login whatever DORA_DASH_AUTH says
        ("192.0.2.1", None, True),
        ("127.0.0.1.example.com", None, True),  # a name, not a loopback literal
    ],
)
def test_a_login_is_required_beyond_loopback_or_when_asked(
    clean_env: pytest.MonkeyPatch, host: str, auth: str | None, required: bool
) -> None:
    clean_env.setenv("DORA_DASH_HOST", host)
    if auth is not None:
        clean_env.setenv("DORA_DASH_AUTH", auth)
    assert DashboardSettings().auth_required is required


def test_login_settings_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    stored = hash_password("pw")
    clean_env.setenv("DORA_DASH_USERS", f"alice:{stored},bob:{stored}")
    clean_env.setenv("DORA_DASH_USERS_FILE", "/etc/dora/users")
    clean_env.setenv("DORA_DASH_SECRET", "x" * 40)
    clean_env.setenv("DORA_DASH_SESSION_HOURS", "0.5")
    clean_env.setenv("DORA_DASH_COOKIE_SECURE", "1")
    s = DashboardSettings()
    assert s.dash_users == {"alice": stored, "bob": stored}
    assert str(s.dash_users_file) == "/etc/dora/users"
    assert (s.dash_session_hours, s.dash_cookie_secure) == (0.5, True)
    assert "x" * 40 not in repr(s) and stored not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DORA_DASH_USERS", "alice:hunter2"),  # a password where its hash belongs
        ("DORA_DASH_SECRET", "short-secret"),
    ],
)
def test_a_bad_secret_or_user_list_is_named_but_never_shown(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        DashboardSettings()
    line = settings_error(err.value)
    assert line.startswith(name) and value not in line and "hunter2" not in line


def test_exposed_with_nobody_to_sign_in_the_dashboard_does_not_start() -> None:
    # 192.0.2.1 (TEST-NET-1) is no interface here: a regression fails to bind, exposing nothing
    out = _start_dashboard(DORA_DASH_HOST="192.0.2.1", DORA_DASH_PORT=str(free_port()))
    assert_one_line_refusal(out, "DORA_DASH_HOST", "192.0.2.1")
    assert "DORA_DASH_USERS" in out.stderr and "python -m dashboard.auth hash" in out.stderr
