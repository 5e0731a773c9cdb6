"""docker-compose.yml: structure checked here; `docker compose config` when a CLI exists."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_volume(compose: dict) -> None:
    services = compose["services"]
    assert {"api", "dashboard", "postgres"} <= set(services)
    assert services["postgres"]["profiles"] == ["postgres"]
    assert "dora-data" in compose["volumes"]
    assert any(v.startswith("dora-data:") for v in services["api"]["volumes"])


@pytest.mark.parametrize("name", ["api", "dashboard", "postgres"])
def test_ports_bound_to_loopback_and_healthchecks(compose: dict, name: str) -> None:
    service = compose["services"][name]
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert service["healthcheck"]["test"]


def test_database_url_is_wired(compose: dict) -> None:
    env = compose["services"]["api"]["environment"]
    assert "DATABASE_URL" in env


def test_production_servers(compose: dict) -> None:
    """The dashboard under gunicorn (several processes, app built before they fork); the
    API under uvicorn in ONE process, since that process is also the job queue."""
    dash = compose["services"]["dashboard"]["command"]
    assert dash[:2] == ["gunicorn", "dashboard.wsgi:create_server()"] and "--preload" in dash
    assert "--bind=0.0.0.0:8050" in dash
    api = compose["services"]["api"]["command"]
    assert api[:2] == ["uvicorn", "backend.main:app"] and "--workers=1" in api
    assert "--port=8000" in api
    # the workers are told where uvicorn really listens: no hand-kept copy of the address
    assert "DORA_API_URL" not in compose["services"]["api"]["environment"]
    # gunicorn's bind and the dashboard's own idea of it (the login rule reads it) agree
    dash_env = compose["services"]["dashboard"]["environment"]
    assert f"--bind={dash_env['DORA_DASH_HOST']}:{dash_env['DORA_DASH_PORT']}" in dash


# what `docker compose config` needs set: the API token and the dashboard's users
SECRETS = {"DORA_API_TOKEN": "test-token", "DORA_DASH_USERS": "alice:scrypt:16384:8:1:c2FsdA:a2V5"}


def _compose_cmd() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("profile", [None, "postgres"])
def test_docker_compose_config_validates(profile: str | None) -> None:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no `docker compose` plugin and no docker-compose binary on this machine")
    args = [*cmd, "-f", str(COMPOSE)]
    if profile:
        args += ["--profile", profile]
    out = subprocess.run(
        [*args, "config"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env={**os.environ, **SECRETS},
    )
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)
    assert {"api", "dashboard"} <= set(rendered["services"])
    if profile:
        assert "postgres" in rendered["services"]


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_token_or_users(missing: str) -> None:
    """Both listen beyond loopback inside their containers: the API needs a token, the
    dashboard a login (it would refuse to start without a user anyway)."""
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no `docker compose` plugin and no docker-compose binary on this machine")
    env = {k: v for k, v in {**os.environ, **SECRETS}.items() if k != missing}
    out = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=REPO_ROOT, env=env
    )
    assert out.returncode != 0
    assert missing in out.stderr
